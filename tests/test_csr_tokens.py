"""CSR per token position as the paper (#22 point 5): the window K counted in tokens, transitions
mapped back to sentences, sentence granularity as an option, and a per-trace seed derived stably
from the base seed and the trace id.  Same tiny model and fake judges as tests/test_csr.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_csr import (  # noqa: F401 - `world` is the module-scoped fixture
    EXPECTED_CSR,
    HARM,
    JUDGE_PROMPT,
    MESSAGES,
    NUM_SAMPLES,
    REASONING,
    REFUSE,
    SAMPLING,
    HashJudge,
    MarkerJudge,
    world,
)

from ipo_jax.pipeline.csr import (
    DEFAULT_GRANULARITY,
    continuation_points,
    continuation_safety_ratio,
    find_transitions,
    trace_seed,
    write_csr_outputs,
)
from ipo_jax.rollout import LocalPolicy


def _run(world, judge, **kwargs):
    tokenizer, sampler = world
    policy = LocalPolicy(sampler, tokenizer, SAMPLING, "tiny")
    return continuation_safety_ratio(policy, tokenizer, judge, MESSAGES, REASONING, num_samples=NUM_SAMPLES,
                                     seed=SAMPLING.seed, judge_prompt=JUDGE_PROMPT, **kwargs)


@pytest.fixture(scope="module")
def marker_tokens(world):
    return _run(world, MarkerJudge(), window=1)  # the default granularity: token


def test_the_default_is_the_papers_token_granularity(marker_tokens):
    assert DEFAULT_GRANULARITY == "token" and marker_tokens.granularity == "token"


def test_token_csr_is_measured_after_every_reasoning_token_and_mapped_back_to_sentences(world, marker_tokens):
    tokenizer, _ = world
    r = marker_tokens
    points = continuation_points(tokenizer, MESSAGES, REASONING)
    first, last = points.reasoning_start - points.prompt_length, max(points.cuts) - points.prompt_length
    assert list(r.positions) == list(range(first + 1, last + 1))  # every token of the reasoning
    # the per-sentence values are the CSR at each sentence's end: the per-sentence series
    np.testing.assert_array_equal(r.csr, EXPECTED_CSR)
    np.testing.assert_array_equal(r.token_n_safe + r.token_n_unsafe + r.token_n_errors, NUM_SAMPLES)
    # the series falls where the placeholder's last token enters the prefix, rises where "refuse" does
    completion = points.ids[points.prompt_length:]
    decode = lambda t: tokenizer.decode(completion[:t], skip_special_tokens=True)  # noqa: E731
    (cue,), (trigger,) = r.cue_positions, r.trigger_positions
    assert HARM in decode(cue) and HARM not in decode(cue - 1)
    assert REFUSE in decode(trigger) and REFUSE not in decode(trigger - 1)
    k_cue, k_trigger = list(r.positions).index(cue), list(r.positions).index(trigger)
    assert r.token_csr[k_cue - 1] == 1.0 and r.token_csr[k_cue] == 0.0 and r.token_csr[k_trigger] == 1.0
    # mapped back: the sentence holding that token
    assert r.cue_indices == (2,) and r.trigger_indices == (4,)
    assert r.token_sentence[k_cue] == 2 and r.token_sentence[k_trigger] == 4


def test_the_window_is_counted_in_tokens_not_sentences(world, marker_tokens):
    r = marker_tokens
    gap = r.trigger_positions[0] - r.cue_positions[0]  # tokens from the fall to the rise
    assert gap > 2
    # a window of 2 sentences reaches the refusal (sentence 4): no cue in sentence granularity ...
    sentence = _run(world, MarkerJudge(), window=2, granularity="sentence")
    np.testing.assert_array_equal(sentence.csr, EXPECTED_CSR)
    assert sentence.cue_indices == () and sentence.window == 2 and sentence.positions is None
    # ... while 2 tokens stay inside the unsafe stretch; the cue holds until K reaches the rise
    for window, expected in ((2, 1), (gap - 1, 1), (gap, 0)):
        _, cues = find_transitions(r.token_csr, window=window, positions=r.positions)
        assert len(cues) == expected, window


def test_find_transitions_over_positions():
    csr, positions = [0.5, 1.0, 1.0, 0.5], [0, 5, 10, 30]
    assert find_transitions(csr, window=10, positions=positions) == ((1,), ())  # 6..15 holds only position 10
    assert find_transitions(csr, window=25, positions=positions) == ((), ())  # 6..30 reaches the 0.5 at 30
    assert find_transitions(csr, window=10, positions=positions, full_window=True) == ((1,), ())
    assert find_transitions(csr[:3], window=10, positions=positions[:3], full_window=True) == ((), ())  # 15 > 10
    assert find_transitions(csr, window=1) == ((1,), ())  # default positions 0..n-1: the sentence rule
    with pytest.raises(ValueError, match="strictly increasing"):
        find_transitions(csr, positions=[0, 5, 5, 6])
    with pytest.raises(ValueError, match="one position per CSR value"):
        find_transitions(csr, positions=[0, 1])


def test_a_token_stride_keeps_sentence_ends_and_the_per_position_samples(world):
    full = _run(world, HashJudge(errors=False), window=1)
    strided = _run(world, HashJudge(errors=False), window=1, token_stride=4)
    tokenizer, _ = world
    points = continuation_points(tokenizer, MESSAGES, REASONING)
    ends = {c - points.prompt_length for c in points.cuts}
    first = points.reasoning_start - points.prompt_length
    assert set(strided.positions) == {t for t in full.positions if (t - first) % 4 == 0} | ends
    assert len(strided.positions) < len(full.positions)
    # samples at position t depend on (seed, t, prefix) only: the shared positions agree exactly
    keep = np.isin(full.positions, strided.positions)
    np.testing.assert_array_equal(full.token_n_safe[keep], strided.token_n_safe)
    np.testing.assert_array_equal(full.csr, strided.csr)


def test_token_outputs_include_the_per_token_csv(marker_tokens, tmp_path):
    import csv

    write_csr_outputs(marker_tokens, tmp_path, "t1")
    with open(tmp_path / "t1.csr_tokens.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["token_position"]) for r in rows] == list(marker_tokens.positions)
    assert sum(int(r["is_cue"]) for r in rows) == 1 and sum(int(r["is_trigger"]) for r in rows) == 1


def test_per_trace_seed_is_stable_and_distinct():
    assert trace_seed(3, "traj-1") == trace_seed(3, "traj-1") == 1424532396  # pinned: SHA-256 of "csr-trace\\03\\0traj-1", stable across runs
    seeds = {trace_seed(3, f"traj-{i}") for i in range(500)}
    assert len(seeds) == 500 and all(0 <= s < 2**31 for s in seeds)
    assert trace_seed(4, "traj-1") != trace_seed(3, "traj-1")


def test_each_trace_samples_with_its_own_seed(world):
    a = _run(world, HashJudge(errors=False), granularity="sentence", trace_id="a")
    again = _run(world, HashJudge(errors=False), granularity="sentence", trace_id="a")
    b = _run(world, HashJudge(errors=False), granularity="sentence", trace_id="b")
    assert a.seed == trace_seed(SAMPLING.seed, "a") and b.seed == trace_seed(SAMPLING.seed, "b")
    np.testing.assert_array_equal(a.n_safe, again.n_safe)
    assert not np.array_equal(a.n_safe, b.n_safe)  # same trace text, other id: other draws


def test_the_csr_stage_settings_are_documented_defaults_and_checked():
    from ipo_jax.pipeline.config import base_config
    from ipo_jax.validation import settings_problems

    c = base_config()
    assert c.csr.granularity == "token" and c.csr.token_stride == 1 and c.csr.window == 15
    c.csr.granularity, c.csr.token_stride = "word", 0
    problems = " ".join(settings_problems("csr", c))
    assert "config.csr.granularity is 'word'" in problems and "config.csr.token_stride is 0" in problems
