"""The length buckets shared by training batches and the sampler (`ipo_jax.buckets`): the
sampler's fork-suffix buckets and the refill batch sizes of continuous batching."""

import pytest

from ipo_jax.buckets import batch_bucket, bucket_length, power_of_two_buckets


def test_a_row_longer_than_every_bucket_is_refused():
    assert bucket_length(17, [16, 32]) == 32 and bucket_length(16, [32, 16]) == 16
    with pytest.raises(ValueError, match="row of 33 tokens is longer than the largest bucket 32"):
        bucket_length(33, [16, 32])


@pytest.mark.parametrize("largest", [1, 32, 48])
def test_fork_suffix_buckets_double_up_to_the_largest_prompt_bucket(largest):
    buckets = power_of_two_buckets(largest)
    assert buckets[-1] == largest and buckets == sorted(set(buckets))
    assert all(b == 1 << i for i, b in enumerate(buckets[:-1]))  # 1, 2, 4, ... below the largest
    assert len(buckets) == 1 or buckets[-2] * 2 >= largest  # no power of two left out before it


def test_refill_batches_are_powers_of_two_the_row_devices_divide():
    assert [batch_bucket(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [batch_bucket(n, 8, multiple_of=4) for n in (1, 3, 4, 5)] == [4, 4, 4, 8]
    assert batch_bucket(5, 6) == 6  # no power of two in [5, 6): the full batch
