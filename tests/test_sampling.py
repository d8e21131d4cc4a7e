"""The sampler: greedy equals transformers, sampling settings, EOS and stop strings, bucketing,
per-row seeds (a row's tokens do not depend on its batch)."""

import jax
import numpy as np
import pytest
import torch

from ipo_jax.checkpoint import load_hf
from ipo_jax.sampling import Sampler, SamplingConfig, row_seed
from ipo_jax.sampling.draw import filter_logits, sample_logits

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def qwen2(hf_dirs):
    path, torch_model = hf_dirs["qwen2"]
    return load_hf(path), torch_model


def _prompts(seed=0, lengths=(5, 9, 3)):
    rng = np.random.RandomState(seed)
    return [rng.randint(3, 128, n).tolist() for n in lengths]


def test_greedy_equals_transformers_generate(qwen2):
    model, torch_model = qwen2
    no_eos = 10_000  # an id outside the vocabulary: decode the full length on both sides
    sampler = Sampler(model, eos_ids=[no_eos], batch_size=4, prompt_buckets=[16], chunk_tokens=5)
    ours = sampler.generate(_prompts(), GREEDY)
    torch_model.generation_config.eos_token_id = None
    for prompt, gen in zip(_prompts(), ours):
        with torch.no_grad():
            ref = torch_model.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=12, do_sample=False,
            )[0, len(prompt):].tolist()
        assert gen.tokens == ref and gen.finish_reason == "length"


def test_temperature_zero_and_top_k_one_are_greedy(qwen2):
    model, _ = qwen2
    sampler = Sampler(model, eos_ids=[10_000], batch_size=4, prompt_buckets=[16], chunk_tokens=4)
    greedy = [g.tokens for g in sampler.generate(_prompts(), GREEDY)]
    top1 = [g.tokens for g in sampler.generate(_prompts(), SamplingConfig(temperature=1.0, top_k=1, max_new_tokens=12, seed=5))]
    assert greedy == top1


def test_sampling_is_seeded_and_varies_with_the_seed(qwen2):
    model, _ = qwen2
    sampler = Sampler(model, eos_ids=[10_000], batch_size=4, prompt_buckets=[16], chunk_tokens=4)
    cfg = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=1)
    a = [g.tokens for g in sampler.generate(_prompts(), cfg)]
    b = [g.tokens for g in sampler.generate(_prompts(), cfg)]
    c = [g.tokens for g in sampler.generate(_prompts(), SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=2))]
    assert a == b and a != c


def test_top_p_and_top_k_restrict_the_support():
    logits = jax.numpy.log(jax.numpy.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.PRNGKey(0)
    top_p = np.asarray(sample_logits(logits, keys, 1.0, 0.7, 0))
    assert set(top_p.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 never drawn
    top_k = np.asarray(sample_logits(logits, keys, 1.0, 1.0, 3))
    assert set(top_k.tolist()) == {0, 1, 2}


def test_eos_ends_each_row_and_stop_strings_cut_the_text(qwen2):
    model, _ = qwen2
    sampler = Sampler(model, eos_ids=[10_000], batch_size=4, prompt_buckets=[16], chunk_tokens=3,
                      decode=lambda ids: " ".join(map(str, ids)))
    free = sampler.generate(_prompts(), GREEDY)
    eos = free[0].tokens[4]  # make row 0's fifth greedy token the end of sequence
    ended = Sampler(model, eos_ids=[eos], batch_size=4, prompt_buckets=[16], chunk_tokens=3).generate(_prompts(), GREEDY)
    assert ended[0].finish_reason == "stop" and ended[0].tokens == free[0].tokens[: free[0].tokens.index(eos)]
    # the ids as sampled keep the end id; a row cut by the limit has none
    assert ended[0].end_id == eos and ended[0].completion_ids == free[0].tokens[: free[0].tokens.index(eos) + 1]
    assert free[0].finish_reason == "length" and free[0].end_id is None and free[0].completion_ids == free[0].tokens
    stop = str(free[1].tokens[6])
    stopped = sampler.generate(_prompts(), GREEDY, stop_strings=[stop])[1]
    assert stopped.finish_reason == "stop" and stopped.text.endswith(stop) and stopped.end_id is None
    assert stopped.tokens == free[1].tokens[: len(stopped.tokens)] and len(stopped.tokens) <= 7


@pytest.fixture
def backend_compiles():
    """Counts real XLA compilations (jax's own monitoring event) while the test runs."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("continuous", [False, True])
def test_compilations_stay_fixed_across_batches_of_one_bucket(qwen2, backend_compiles, continuous):
    """Static batches, or continuous batching (3 prompts on 2 rows: the third joins when a row
    ends, prefilled apart and inserted): after the first call, calls with other prompts of the same
    bucket and other settings compile nothing."""
    model, _ = qwen2
    sampler = Sampler(model, eos_ids=[10_000], batch_size=2, prompt_buckets=[16, 32], chunk_tokens=4,
                      continuous_batching=continuous)
    sampler.generate(_prompts(0, (4, 7, 5)), GREEDY)
    first = len(backend_compiles)
    assert first >= 2  # at least the prefill and the decode programs
    for seed in range(1, 4):  # other prompts, other lengths, other settings, same bucket
        sampler.generate(_prompts(seed, (3, 11, 6)), SamplingConfig(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12, seed=seed))
    assert len(backend_compiles) == first
    sampler.generate(_prompts(0, (20,)), GREEDY)  # a longer prompt: the next bucket compiles its programs
    assert len(backend_compiles) > first


def test_empty_prompt_is_refused(qwen2):
    model, _ = qwen2
    with pytest.raises(ValueError, match="empty prompt"):
        Sampler(model, eos_ids=[1], batch_size=2, prompt_buckets=[16]).generate([[1, 2], []], GREEDY)


def test_a_row_that_would_run_past_the_models_context_is_refused_before_any_work(qwen2):
    from ipo_jax.rollout.local import prompt_limit
    from ipo_jax.sampling import Fork

    model, _ = qwen2
    context = model.cfg.max_position_embeddings
    sampler = Sampler(model, eos_ids=[1], batch_size=2, prompt_buckets=[16])
    too_many = SamplingConfig(temperature=0.0, max_new_tokens=context - 4)
    with pytest.raises(ValueError, match=f"a prompt of 5 tokens \\+ {context - 4:,} new tokens .* more than the "
                                         f"model's context of {context:,} \\(max_position_embeddings\\)"):
        sampler.generate([[3, 4], [3, 4, 5, 6, 7]], too_many)
    with pytest.raises(ValueError, match="more than the model's context"):
        sampler.generate_forks([3, 4, 5, 6], [Fork(cut=4, suffix=(9,), n=1)], too_many)
    sampler._check_context(5, context - 5)  # a row of exactly the context fits: no error
    # the pipeline's and the judge's prompt limit leave room for the new tokens
    assert prompt_limit(sampler, 12) == 16 and prompt_limit(sampler, context - 10) == 10


def test_the_kv_cache_size_is_known_before_it_is_allocated(qwen2):
    from ipo_jax.models.decoder import KVCache

    cfg = qwen2[0].cfg
    for dtype in ("float32", "bfloat16"):
        cache = KVCache.init(cfg, 3, 17, dtype)
        assert KVCache.nbytes(cfg, 3, 17, dtype) == sum(x.nbytes for x in jax.tree_util.tree_leaves(cache))


def test_an_eos_after_max_new_tokens_is_a_length_finish(qwen2):
    model, _ = qwen2
    make = lambda eos: Sampler(model, eos_ids=[eos], batch_size=4, prompt_buckets=[16], chunk_tokens=8)  # noqa: E731
    free = make(10_000).generate(_prompts(), GREEDY)
    long = make(10_000).generate(_prompts(), SamplingConfig(temperature=0.0, max_new_tokens=16))
    # a token greedy decoding produces only after step 12 (past max_new_tokens, inside the last chunk)
    row, late = next((r, t) for r, g in enumerate(long) for t in g.tokens[12:] if t not in g.tokens[:12])
    ended = make(late).generate(_prompts(), GREEDY)[row]
    assert ended.finish_reason == "length" and ended.tokens == free[row].tokens and ended.completion_ids == free[row].tokens


@pytest.mark.parametrize("top_p, top_k", [(0.5, 0), (0.9, 0), (0.95, 7), (1.0, 3), (1.0, 0)])
def test_filtering_keeps_exactly_the_sorted_top_p_top_k_set(top_p, top_k):
    """The bisection thresholds keep the same tokens as the textbook sort-based definition."""
    logits = np.random.RandomState(0).randn(64, 50).astype(np.float32) * 3
    kept = np.isfinite(np.asarray(filter_logits(logits, 0.8, top_p, top_k)))
    for row, mask in zip(logits.astype(np.float64) / 0.8, kept):
        order = np.argsort(-row)
        allowed = order[:top_k] if top_k else order
        probs = np.exp(row[allowed] - row[allowed].max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        want = set((allowed if top_p >= 1 else allowed[before < top_p]).tolist())
        assert set(np.flatnonzero(mask).tolist()) == want


SAMPLED = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)


def test_a_rows_tokens_do_not_depend_on_its_batch(qwen2):
    """Batch size 1, 4 and 8 (padding rows, other rows, other buckets) give every row the same
    tokens; reordering the prompts with their row seeds reorders the outputs."""
    model, _ = qwen2
    prompts = _prompts(3, (5, 9, 3, 12, 7, 4))
    runs = {}
    for batch in (1, 4, 8):
        sampler = Sampler(model, eos_ids=[10_000], batch_size=batch, prompt_buckets=[8, 16], chunk_tokens=4)
        runs[batch] = [g.tokens for g in sampler.generate(prompts, SAMPLED)]
    assert runs[1] == runs[4] == runs[8]
    assert len({tuple(t) for t in runs[1]}) == len(prompts)  # really sampled: rows differ
    order = [4, 0, 5, 2, 1, 3]
    seeds = [row_seed(SAMPLED.seed, r) for r in order]
    sampler = Sampler(model, eos_ids=[10_000], batch_size=4, prompt_buckets=[8, 16], chunk_tokens=4)
    permuted = [g.tokens for g in sampler.generate([prompts[r] for r in order], SAMPLED, row_seeds=seeds)]
    assert permuted == [runs[1][r] for r in order]
    # the same prompt with other seeds samples other tokens
    again = [g.tokens for g in sampler.generate([prompts[0]] * 4, SAMPLED)]
    assert again[0] == runs[1][0] and len({tuple(t) for t in again}) > 1


def test_row_seeds_are_stable_31_bit_and_checked(qwen2):
    seeds = [row_seed(s, r) for s in (0, 1, 2**40) for r in range(50)]
    assert all(0 <= x < 2**31 for x in seeds) and len(set(seeds)) == len(seeds)
    assert seeds == [row_seed(s, r) for s in (0, 1, 2**40) for r in range(50)]
    model, _ = qwen2
    sampler = Sampler(model, eos_ids=[10_000], batch_size=2, prompt_buckets=[16])
    with pytest.raises(ValueError, match="2 seeds for 3 rows"):
        sampler.generate(_prompts(), SAMPLED, row_seeds=[1, 2])
    with pytest.raises(ValueError, match=r"\[0, 2\*\*31\)"):
        sampler.generate(_prompts(), SAMPLED, row_seeds=[1, 2, -3])
