"""tools/bench_rollout.py's decode roofline: the bytes a decode step reads (weights once per step,
a fork's shared prefix once per batch, each row's own slots), checked against sums spelled out
step by step, and the workloads' decode batches as the sampler forms them."""

import importlib.util
import types
from pathlib import Path

import pytest

from ipo_jax.models.config import ModelConfig

_spec = importlib.util.spec_from_file_location("bench_rollout", Path(__file__).parents[1] / "tools" / "bench_rollout.py")
bench_rollout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_rollout)


def _cfg(tied: bool) -> ModelConfig:
    return ModelConfig(model_type="qwen3", vocab_size=100, hidden_size=16, intermediate_size=32, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=4, tie_word_embeddings=tied, qk_norm=True)


@pytest.mark.parametrize("tied", [True, False])
def test_roofline_counts_weights_per_step_and_each_slot_read(tied):
    cfg = _cfg(tied)
    batches = [(10, [1, 1, 1]), (0, [5, 7])]  # a fork batch sharing 10 prefix slots, a plain batch
    new_tokens, bandwidth = 4, 2.0
    weights = (cfg.num_params() - (0 if tied else cfg.vocab_size * cfg.hidden_size)) * 2  # bfloat16
    slot = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 2
    expected = 0
    for shared, own in batches:
        for t in range(1, new_tokens):  # decode step t: row r attends to own[r] + t slots
            expected += weights + slot * (shared + sum(o + t for o in own))
    roof = bench_rollout.decode_roofline(cfg, "bfloat16", batches, new_tokens, bandwidth)
    assert roof["bytes_read"] == expected
    assert roof["decode_steps"] == 2 * (new_tokens - 1)
    assert roof["tokens_per_s"] == pytest.approx(5 * new_tokens / (expected / (bandwidth * 1e9)))


def test_csr_fork_batches_share_the_prefix_up_to_their_largest_cut():
    work = bench_rollout.CSRWorkload.__new__(bench_rollout.CSRWorkload)
    work.args = types.SimpleNamespace(csr_batch=4, samples=3)
    work.n, work.cuts = 3, [8, 16]
    # rows in order of cut: 8 8 8 16 | 16 16
    assert work.decode_batches("fork") == [(16, [1, 1, 1, 1]), (16, [1, 1])]
    assert work.decode_batches("reprefill") == [(0, [8, 8, 8]), (0, [16, 16, 16])]
    fork = bench_rollout.decode_roofline(_cfg(True), "float32", work.decode_batches("fork"), 8, 1.0)
    again = bench_rollout.decode_roofline(_cfg(True), "float32", work.decode_batches("reprefill"), 8, 1.0)
    assert fork["bytes_read"] < again["bytes_read"]
