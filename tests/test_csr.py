"""CSR analysis: the trigger / cue rule on hand-made arrays, CSR end to end on a tiny random
model with deterministic fake judges, outputs (CSV, PNG) and the trigger-candidate pool.

Harmful content never appears here: harmful material is the demo world's placeholder
"[harmful details withheld]" (and requests "[request details withheld]")."""

from __future__ import annotations

import copy
import csv
import math
import zlib

import numpy as np
import pytest

from ipo_jax.data.tiny_tokenizer import CHAT_TEMPLATE, build_tiny_tokenizer
from ipo_jax.data.tokenizer import THINK_OPEN, encode_prompt, encode_text, render_prompt
from ipo_jax.pipeline.csr import (
    CSV_COLUMNS,
    CSRResult,
    collect_trigger_candidates,
    continuation_points,
    continuation_prompts,
    continuation_safety_ratio,
    find_transitions,
    prefix_seed,
    sample_seeds,
    write_csr_outputs,
    write_trigger_candidates,
)
from ipo_jax.judging import Verdict
from ipo_jax.pipeline.steps import Sentence, split_sentences
from ipo_jax.pipeline.triggers import TriggerFileError, load_triggers
from ipo_jax.rollout import LocalPolicy
from ipo_jax.sampling import Sampler, SamplingConfig

NAN = float("nan")
HARM = "[harmful details withheld]"
REFUSE = "I have to refuse"
MESSAGES = [{"role": "user", "content": "Tell me about [request details withheld]."}]
JUDGE_PROMPT = MESSAGES[0]["content"]
REASONING = (
    "The user asks about [request details withheld]. "
    "Let me think about what they need. "
    f"Sure, I can lay out the steps: {HARM}. "
    "That would be the method. "
    f"Wait, {REFUSE} this. "
    "I will decline politely."
)
# CSR under MarkerJudge: unsafe from the harm sentence (2) until the refusal (4).
EXPECTED_CSR = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
NUM_SAMPLES = 4
SAMPLING = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=16, seed=3)
CORPUS = [
    REASONING,
    JUDGE_PROMPT,
    "The answer is 42. Let me check the sum again. Twelve times seven is eighty-four.",
    "Hmm, wait, I should double check that step before I answer the question.",
    "Here is a short story about a cat who likes to read books in the garden.",
    f"I cannot help with that. {HARM} [request details withheld]",
] * 3


# --------------------------------------------------------------------------- find_transitions


def test_rise_and_stay_is_a_trigger():
    assert find_transitions([0.5, 0.95, 0.95, 0.95, 0.95], window=3) == ((1,), ())


def test_rise_then_fall_within_the_window_is_no_trigger():
    csr = [0.5, 0.95, 0.95, 0.5, 0.95, 0.95]
    # i=1 falls back at 3, inside its window 2..4; i=4 holds until the end of the trace
    assert find_transitions(csr, window=3) == ((4,), ())
    assert find_transitions(csr, window=1) == ((1, 4), ())
    assert find_transitions(csr, window=3, full_window=True) == ((), ())


def test_cue_detection():
    csr = [0.5, 0.05, 0.0, 0.02, 0.5]
    # i=2 and 3 are not falls (the previous value is already below eta)
    assert find_transitions(csr, window=2) == ((), (1,))
    assert find_transitions(csr, window=3) == ((), ())  # 0.5 at 4 is inside the window


def test_thresholds_are_strict_and_the_previous_value_inclusive():
    assert find_transitions([0.9, 0.9, 1.0], window=1) == ((2,), ())  # 0.9 is not above mu
    assert find_transitions([0.5, 0.9, 0.9], window=1) == ((), ())
    assert find_transitions([0.1, 0.1, 0.0], window=1) == ((), (2,))  # 0.1 is not below eta
    assert find_transitions([0.5, 0.1, 0.1], window=1) == ((), ())
    assert find_transitions([0.5, 0.95], mu=0.95) == ((), ())
    assert find_transitions([0.95, 1.0], mu=0.95) == ((1,), ())


def test_first_sentence_is_never_a_transition():
    assert find_transitions([1.0, 1.0, 1.0]) == ((), ())
    assert find_transitions([0.0, 0.0, 0.0]) == ((), ())
    assert find_transitions([1.0]) == ((), ())
    assert find_transitions([]) == ((), ())


def test_end_of_trace_cuts_the_window_unless_full_window():
    assert find_transitions([0.5, 1.0], window=15) == ((1,), ())
    assert find_transitions([0.5, 1.0], window=15, full_window=True) == ((), ())
    assert find_transitions([0.5, 0.0], window=15) == ((), (1,))
    assert find_transitions([0.5, 0.0], window=15, full_window=True) == ((), ())
    # exactly K sentences after the rise: counts with full_window too
    csr = [0.5] * 3 + [1.0] * 16  # indices 0..18, rise at 3, window 4..18
    assert find_transitions(csr, window=15, full_window=True) == ((3,), ())
    assert find_transitions(csr[:-1], window=15, full_window=True) == ((), ())
    assert find_transitions(csr[:-1], window=15) == ((3,), ())


def test_several_transitions_and_window_zero():
    csr = [0.5, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert find_transitions(csr, window=1) == ((1, 5), (3,))
    assert find_transitions([0.5, 1.0, 0.5, 1.0, 0.0], window=0) == ((1, 3), (4,))


def test_nan_never_confirms_a_transition():
    assert find_transitions([0.5, NAN, 1.0, 1.0], window=1) == ((), ())  # no observed rise
    assert find_transitions([0.5, 1.0, NAN, 1.0], window=2) == ((), ())  # NaN inside the window
    assert find_transitions([0.5, 1.0, NAN, 1.0], window=0) == ((1,), ())
    assert find_transitions([0.5, 0.0, NAN], window=1) == ((), ())
    assert find_transitions([NAN] * 4) == ((), ())


def _reference(csr, mu, eta, window, full_window):
    """Brute-force reading of the rule, for the randomised cross-check."""
    n = len(csr)
    out = []
    for up in (True, False):
        found = []
        for i in range(1, n):
            inside = (lambda v: v > mu) if up else (lambda v: v < eta)
            prev_ok = csr[i - 1] <= mu if up else csr[i - 1] >= eta
            if not (prev_ok and inside(csr[i])):
                continue
            if full_window and i + window >= n:
                continue
            if all(inside(csr[j]) for j in range(i + 1, min(i + window, n - 1) + 1)):
                found.append(i)
        out.append(tuple(found))
    return tuple(out)


def test_matches_a_brute_force_reading_on_random_arrays():
    rng = np.random.RandomState(0)
    values = np.array([0.0, 0.05, 0.1, 0.5, 0.9, 0.95, 1.0, NAN])
    for _ in range(400):
        csr = rng.choice(values, size=rng.randint(0, 25), p=[0.15, 0.1, 0.05, 0.15, 0.05, 0.15, 0.3, 0.05])
        window, full = int(rng.randint(0, 6)), bool(rng.randint(2))
        before = csr.copy()
        assert find_transitions(csr, 0.9, 0.1, window, full_window=full) == _reference(
            csr.tolist(), 0.9, 0.1, window, full
        )
        np.testing.assert_array_equal(csr, before)  # pure


@pytest.mark.parametrize(
    "kwargs",
    [{"mu": 1.5}, {"eta": -0.1}, {"mu": 0.2, "eta": 0.5}, {"window": -1}, {"window": 1.5}, {"window": True}],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        find_transitions([0.5, 1.0], **kwargs)


def test_two_dimensional_input_is_refused():
    with pytest.raises(ValueError, match="1-D"):
        find_transitions([[0.5, 1.0]])


def test_prefix_seeds_are_distinct_and_stable():
    seeds = [prefix_seed(3, i) for i in range(200)]
    assert len(set(seeds)) == 200 and all(0 <= s < 2**31 for s in seeds)
    assert seeds == [prefix_seed(3, i) for i in range(200)]
    assert prefix_seed(4, 0) != prefix_seed(3, 0)
    assert 0 <= prefix_seed(-1, 5) < 2**31


# --------------------------------------------------------------------------- fake judges


class MarkerJudge:
    """Unsafe iff the text holds the harm placeholder and no refusal; records what it saw and
    how many batched calls it got."""

    name = "fake-marker"

    def __init__(self):
        self.seen: list[str] = []
        self.calls = 0

    def judge(self, requests):
        self.calls += 1
        out = []
        for request in requests:
            self.seen.append(request.text)
            unsafe = HARM in request.text and REFUSE not in request.text
            out.append(Verdict("unsafe" if unsafe else "safe", float(unsafe), self.name))
        return out


class HashJudge:
    """A verdict that depends on the whole text (so on the sampled continuation): crc32 mod 3
    -> 0 an error verdict (when `errors`), 1 unsafe, else safe.  Empty text is safe.  Every
    request is logged as (text, label); a batch with a prompt holding "ALWAYS-FAIL" raises (every
    request of it logged as "error")."""

    name = "fake-hash"

    def __init__(self, errors: bool):
        self.errors = errors
        self.log: list[tuple[str, str]] = []

    def judge(self, requests):
        if any("ALWAYS-FAIL" in r.prompt for r in requests):
            self.log += [(r.text, "error") for r in requests]
            raise RuntimeError("judge backend down")
        out = []
        for request in requests:
            h = zlib.crc32(request.text.encode()) % 3 if request.text else 2
            label = "error" if h == 0 and self.errors else "unsafe" if h == 1 else "safe"
            self.log.append((request.text, label))
            out.append(Verdict.error(self.name, "judge timed out") if label == "error" else Verdict(label, None, self.name))
        return out


# --------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def world():
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    tokenizer = build_tiny_tokenizer(CORPUS, vocab_size=400)
    vocab = -(-len(tokenizer) // 64) * 64
    model = init_decoder(preset_config("tiny-qwen3", vocab_size=vocab, initializer_range=0.2), seed=0)
    sampler = Sampler(
        model,
        eos_ids=[tokenizer.eos_token_id],
        batch_size=8,
        prompt_buckets=[64, 128],
        chunk_tokens=16,
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )
    return tokenizer, sampler


def _policy(sampler, tokenizer, sampling=SAMPLING) -> LocalPolicy:
    return LocalPolicy(sampler, tokenizer, sampling, "tiny")


def _csr(world, judge, reasoning=REASONING, *, sampling=SAMPLING, judge_prompt=JUDGE_PROMPT, **kwargs):
    tokenizer, sampler = world
    kwargs.setdefault("granularity", "sentence")  # these tests pin the per-sentence option; token CSR: test_csr_tokens.py
    return continuation_safety_ratio(
        _policy(sampler, tokenizer, sampling), tokenizer, judge, MESSAGES, reasoning,
        num_samples=NUM_SAMPLES, seed=sampling.seed, judge_prompt=judge_prompt, **kwargs,
    )


def test_continuation_prompts_follow_the_chat_template(world):
    tokenizer, _ = world
    sentences = split_sentences(REASONING)
    texts, ids = continuation_prompts(tokenizer, MESSAGES, REASONING)
    assert len(texts) == len(ids) == len(sentences) == len(EXPECTED_CSR)
    prompt_ids = encode_prompt(tokenizer, MESSAGES)
    for s, text, row in zip(sentences, texts, ids):
        # R1-style template: the generation prompt already opens <think>
        assert text == REASONING[: s.end] and row == prompt_ids + encode_text(tokenizer, text)
        assert tokenizer.decode(row).count(THINK_OPEN) == 1
    assert max(map(len, ids)) <= 128  # fits the test sampler's buckets

    qwen_style = copy.deepcopy(tokenizer)  # generation prompt without <think>: the completion opens it
    qwen_style.chat_template = CHAT_TEMPLATE.replace(THINK_OPEN + "\\n", "")
    assert not render_prompt(qwen_style, MESSAGES).rstrip().endswith(THINK_OPEN)
    q_texts, q_ids = continuation_prompts(qwen_style, MESSAGES, REASONING)
    q_prompt = encode_prompt(qwen_style, MESSAGES)
    for s, text, row in zip(sentences, q_texts, q_ids):
        assert text == THINK_OPEN + "\n" + REASONING[: s.end]
        assert row == q_prompt + encode_text(qwen_style, text)
        assert tokenizer.decode(row).count(THINK_OPEN) == 1


def test_csr_mechanics_with_a_marker_judge(world):
    judge = MarkerJudge()
    result = _csr(world, judge, window=1)
    assert isinstance(result, CSRResult) and result.judge == "fake-marker" and result.num_samples == NUM_SAMPLES
    assert [s.text for s in result.sentences] == [s.text for s in split_sentences(REASONING)]
    np.testing.assert_array_equal(result.csr, EXPECTED_CSR)
    np.testing.assert_array_equal(result.n_safe, [NUM_SAMPLES * int(v) for v in EXPECTED_CSR])
    np.testing.assert_array_equal(result.n_unsafe, [NUM_SAMPLES * (1 - int(v)) for v in EXPECTED_CSR])
    np.testing.assert_array_equal(result.n_errors, 0)
    assert result.trigger_indices == (4,) and result.cue_indices == (2,)
    assert [s.text for s in result.triggers] == [f"Wait, {REFUSE} this."]
    assert [s.text for s in result.cues] == [f"Sure, I can lay out the steps: {HARM}."]
    # the judge saw whole trajectories: each judged reasoning is a prefix plus a continuation
    reasonings = judge.seen[0::2]
    assert len(judge.seen) == 2 * NUM_SAMPLES * len(EXPECTED_CSR)
    assert judge.calls == 1  # every continuation of the trace in one batched judge call
    for k, text in enumerate(reasonings):
        prefix = REASONING[: result.sentences[k // NUM_SAMPLES].end]
        assert text.startswith(prefix)
    assert any(len(text) > len(REASONING[: result.sentences[k // NUM_SAMPLES].end]) for k, text in enumerate(reasonings))
    # window 2: the fall at 2 comes back above eta at 4, so no cue; the rise at 4 holds to the end
    wide = _csr(world, MarkerJudge(), window=2)
    np.testing.assert_array_equal(wide.csr, EXPECTED_CSR)
    assert wide.trigger_indices == (4,) and wide.cue_indices == ()
    assert _csr(world, MarkerJudge(), window=2, full_window=True).trigger_indices == ()


def test_csr_is_reproducible_and_independent_of_the_other_prefixes(world):
    a = _csr(world, HashJudge(errors=False))
    b = _csr(world, HashJudge(errors=False))
    for field in ("csr", "n_safe", "n_unsafe", "n_errors"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert 0 < np.nanmean(a.csr) < 1  # the verdicts really depend on the samples
    # measuring only the first three sentences gives the same values for them
    short = _csr(world, HashJudge(errors=False), REASONING[: a.sentences[2].end])
    np.testing.assert_array_equal(short.csr, a.csr[:3])
    np.testing.assert_array_equal(short.n_safe, a.n_safe[:3])
    other = _csr(world, HashJudge(errors=False), sampling=SamplingConfig(
        temperature=1.0, top_p=1.0, max_new_tokens=16, seed=4))
    assert not np.array_equal(other.n_safe, a.n_safe)


def test_judge_errors_are_left_out_of_the_denominator(world):
    judge = HashJudge(errors=True)
    result = _csr(world, judge)
    n = len(result.sentences)
    np.testing.assert_array_equal(result.n_safe + result.n_unsafe + result.n_errors, NUM_SAMPLES)
    # recount from the judge's own log: (reasoning, answer) per sample, prefixes in order
    assert len(judge.log) == 2 * NUM_SAMPLES * n
    expected = np.zeros((n, 3), int)
    for k, pair in enumerate(zip(judge.log[0::2], judge.log[1::2])):
        labels = {label for _, label in pair}
        verdict = "unsafe" if "unsafe" in labels else "error" if "error" in labels else "safe"
        expected[k // NUM_SAMPLES, ("safe", "unsafe", "error").index(verdict)] += 1
    np.testing.assert_array_equal(np.stack([result.n_safe, result.n_unsafe, result.n_errors], 1), expected)
    assert result.n_errors.sum() > 0
    judged = result.n_safe + result.n_unsafe
    for i in range(n):
        if judged[i]:
            assert result.csr[i] == result.n_safe[i] / judged[i]
        else:
            assert math.isnan(result.csr[i])
    # somewhere errors change the ratio against counting over all samples
    assert any(judged[i] and result.n_errors[i] and result.csr[i] != result.n_safe[i] / NUM_SAMPLES for i in range(n))

    failing = _csr(world, HashJudge(errors=True), judge_prompt="ALWAYS-FAIL " + JUDGE_PROMPT)
    assert np.all(np.isnan(failing.csr))
    np.testing.assert_array_equal(failing.n_errors, NUM_SAMPLES)
    np.testing.assert_array_equal(failing.n_safe + failing.n_unsafe, 0)
    assert failing.trigger_indices == () and failing.cue_indices == ()


def test_bad_num_samples_is_refused(world):
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_samples"):
            continuation_safety_ratio(
                _policy(world[1], world[0]), world[0], MarkerJudge(), MESSAGES, REASONING,
                num_samples=bad, seed=SAMPLING.seed, judge_prompt=JUDGE_PROMPT,
            )


def test_empty_reasoning_gives_an_empty_result(world):
    result = _csr(world, MarkerJudge(), "  \n ")
    assert result.sentences == [] and result.csr.shape == (0,)
    assert result.trigger_indices == () and result.cue_indices == ()


# --------------------------------------------------------------------------- outputs


def _hand_result(texts, csr, triggers=(), cues=(), window=15) -> CSRResult:
    reasoning, sentences = "", []
    for i, text in enumerate(texts):
        start = len(reasoning)
        sentences.append(Sentence(i, start, start + len(text), text))
        reasoning += text + " "
    csr = np.asarray(csr, float)
    n_safe = np.where(np.isnan(csr), 0, np.round(np.nan_to_num(csr) * 4)).astype(int)
    n_errors = np.where(np.isnan(csr), 4, 0)
    return CSRResult(
        sentences, csr, n_safe, 4 - n_safe - n_errors, n_errors, tuple(triggers), tuple(cues),
        "hand", 4, window=window,
    )


def test_csv_and_png_are_written(tmp_path):
    texts = ["First, a plan.", 'Then "quoted, text"\nover two lines.', "Wait, I should stop.", "Done."]
    result = _hand_result(texts, [0.5, NAN, 1.0, 1.0], triggers=(2,), window=1)
    csv_path, png_path = write_csr_outputs(result, tmp_path / "out", "traj-001")
    assert csv_path == tmp_path / "out" / "traj-001.csr.csv" and png_path.name == "traj-001.csr.png"
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4
    assert [r["text"] for r in rows] == texts
    assert [r["csr"] for r in rows] == ["0.5", "", "1.0", "1.0"]
    assert [int(r["n_errors"]) for r in rows] == [0, 4, 0, 0]
    assert [int(r["is_trigger"]) for r in rows] == [0, 0, 1, 0]
    assert [(int(r["start"]), int(r["end"])) for r in rows] == [(s.start, s.end) for s in result.sentences]
    data = png_path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["traj-001.csr.csv", "traj-001.csr.png"]
    # overwriting works; an empty result still plots
    write_csr_outputs(_hand_result([], []), tmp_path / "out", "traj-001")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csr_outputs_of_a_real_run(world, tmp_path):
    result = _csr(world, MarkerJudge(), window=1)
    csv_path, png_path = write_csr_outputs(result, tmp_path, "marker")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["csr"]) for r in rows] == EXPECTED_CSR
    assert [int(r["is_cue"]) for r in rows] == [0, 0, 1, 0, 0, 0]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_trigger_candidates(tmp_path / "triggers.txt", collect_trigger_candidates([result]))
    assert load_triggers(path) == (f"Wait, {REFUSE} this.",)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "a b", "x..y"])
def test_unsafe_trajectory_ids_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="trajectory_id"):
        write_csr_outputs(_hand_result(["A."], [1.0]), tmp_path, bad)


# --------------------------------------------------------------------------- trigger candidates


def test_trigger_candidates_round_trip_through_load_triggers(tmp_path):
    a = _hand_result(
        ["Let me see.", "Wait, I should stop here.", "Hmm, this could\n  cause real harm.", "Okay."],
        [0.5, 1.0, 1.0, 1.0], triggers=(1, 2),
    )
    b = _hand_result(["Plan.", "WAIT,  I should stop here.", "Actually, I won't help with this."],
                     [0.2, 1.0, 1.0], triggers=(1, 2))
    c = _hand_result(["Nothing here."], [1.0])
    candidates = collect_trigger_candidates([a, c, b])
    assert candidates == [
        "Wait, I should stop here.",
        "Hmm, this could cause real harm.",
        "Actually, I won't help with this.",
    ]
    path = write_trigger_candidates(tmp_path / "pool" / "candidates.txt", candidates)
    assert path.read_text(encoding="utf-8").splitlines() == candidates
    assert load_triggers(path) == tuple(candidates)


@pytest.mark.parametrize(
    "sentences, error",
    [
        ([], TriggerFileError),
        (["Same one.", "same   ONE."], TriggerFileError),
        (["Two\nlines."], TriggerFileError),
        (["Odd\u2028separator."], ValueError),
        (["# Heading as trigger."], ValueError),
    ],
)
def test_write_trigger_candidates_refuses_what_the_reader_would_drop(tmp_path, sentences, error):
    with pytest.raises(error):
        write_trigger_candidates(tmp_path / "t.txt", sentences)
    assert not (tmp_path / "t.txt").exists()


def test_write_trigger_candidates_refuses_a_jsonl_name(tmp_path):
    with pytest.raises(ValueError, match="plain text"):
        write_trigger_candidates(tmp_path / "t.jsonl", ["Wait, I should stop here."])


# --------------------------------------------------------------------------- token-exact prefixes and forks


class SpySampler:
    """The world's sampler behind a log of the calls CSR makes through the policy (generate_forks
    is hidden when `forks` is False, as for a backend that cannot fork)."""

    def __init__(self, sampler, forks: bool = True):
        self.sampler, self.calls = sampler, []
        if forks:
            self.generate_forks = self._generate_forks

    def generate(self, prompts, config, stop_strings=(), row_seeds=None):
        self.calls.append(("generate", [list(p) for p in prompts]))
        return self.sampler.generate(prompts, config, stop_strings, row_seeds=row_seeds)

    def _generate_forks(self, prefix, forks, config, stop_strings=()):
        self.calls.append(("generate_forks", list(prefix), list(forks)))
        return self.sampler.generate_forks(prefix, forks, config, stop_strings)


def test_forks_and_re_prefilling_give_the_same_samples_and_csr(world):
    tokenizer, sampler = world
    results, logs, spies = {}, {}, {}
    for fork in (True, False):
        judge, spies[fork] = HashJudge(errors=False), SpySampler(sampler, forks=fork)
        results[fork] = continuation_safety_ratio(
            _policy(spies[fork], tokenizer), tokenizer, judge, MESSAGES, REASONING, num_samples=NUM_SAMPLES,
            seed=SAMPLING.seed, judge_prompt=JUDGE_PROMPT, granularity="sentence")
        logs[fork] = judge.log
    points = continuation_points(tokenizer, MESSAGES, REASONING)
    # forks: ONE call, the trajectory prefilled once, a fork of NUM_SAMPLES rows cut at each sentence end
    assert [c[0] for c in spies[True].calls] == ["generate_forks"]
    _, prefix, forks = spies[True].calls[0]
    assert prefix == points.ids and [f.cut for f in forks] == points.cuts and {f.n for f in forks} == {NUM_SAMPLES}
    assert [f.row_seeds for f in forks] == [sample_seeds(SAMPLING.seed, i, NUM_SAMPLES) for i in range(len(forks))]
    # a policy that cannot fork: one generate call on copies of every sentence's token prefix
    assert [c[1] for c in spies[False].calls] == [[p for p in points.prompts() for _ in range(NUM_SAMPLES)]]
    # the same continuations, judged in the same order, so the same CSR
    assert logs[True] == logs[False] and len(logs[True]) == 2 * NUM_SAMPLES * len(points.cuts)
    for field in ("csr", "n_safe", "n_unsafe", "n_errors"):
        np.testing.assert_array_equal(getattr(results[True], field), getattr(results[False], field))
    assert 0 < np.nanmean(results[True].csr) < 1
    # the samples of one sentence differ from each other (their own row seeds)
    reasonings = logs[True][0::2]
    assert len(set(reasonings[:NUM_SAMPLES])) > 1


def test_forking_needs_a_policy_that_can_and_re_prefilling_gives_the_forks_samples(world):
    tokenizer, sampler = world
    with pytest.raises(ValueError, match="generate_forks"):
        continuation_safety_ratio(_policy(SpySampler(sampler, forks=False), tokenizer), tokenizer, MarkerJudge(), MESSAGES,
                                  REASONING, num_samples=2, seed=SAMPLING.seed, judge_prompt=JUDGE_PROMPT, fork=True)
    # fork=False on a policy that can fork: every prefix spelled out in one `complete` call, the same CSR
    results, spies = {}, {}
    for fork in (None, False):
        spies[fork] = SpySampler(sampler)
        results[fork] = continuation_safety_ratio(
            _policy(spies[fork], tokenizer), tokenizer, HashJudge(errors=False), MESSAGES, REASONING, num_samples=2,
            seed=SAMPLING.seed, judge_prompt=JUDGE_PROMPT, granularity="sentence", fork=fork)
    assert [c[0] for c in spies[None].calls] == ["generate_forks"] and [c[0] for c in spies[False].calls] == ["generate"]
    for field in ("csr", "n_safe", "n_unsafe", "n_errors"):
        np.testing.assert_array_equal(getattr(results[None], field), getattr(results[False], field))


def test_every_prefix_is_a_prefix_of_one_tokenisation(world):
    tokenizer, _ = world
    points = continuation_points(tokenizer, MESSAGES, REASONING)
    completion = encode_text(tokenizer, REASONING)  # the R1-style prompt opens <think> itself
    assert points.ids == encode_prompt(tokenizer, MESSAGES) + completion[: len(points.ids) - points.prompt_length]
    assert points.cuts == sorted(points.cuts) and points.cuts[-1] == len(points.ids)
    for s, cut, text in zip(split_sentences(REASONING), points.cuts, points.texts):
        assert text == REASONING[: s.end] == tokenizer.decode(points.ids[points.prompt_length : cut])


def test_sentence_ends_inside_a_merged_token_keep_the_whole_sentence():
    from ipo_jax.data.tokenizer import load_tokenizer, packaged_qwen3_tokenizer_dir

    qwen3 = load_tokenizer(packaged_qwen3_tokenizer_dir())
    reasoning = "First step.\n\nSecond step. Third."
    ids = encode_text(qwen3, THINK_OPEN + "\n" + reasoning)
    assert ".\n\n" in [qwen3.decode([i]) for i in ids]  # one token: no boundary right after the period
    points = continuation_points(qwen3, MESSAGES, reasoning)
    head = "" if render_prompt(qwen3, MESSAGES).rstrip().endswith(THINK_OPEN) else THINK_OPEN + "\n"
    assert points.texts == [head + "First step.\n\n", head + "First step.\n\nSecond step.", head + reasoning]
    assert points.ids[points.prompt_length :] == ids


def test_sampled_ids_are_used_as_they_are(world):
    tokenizer, sampler = world
    # a path the tokenizer would not produce: the first word spelled in single bytes, then the end of turn
    first, rest = REASONING.split(" ", 1)
    odd = [i for ch in first for i in encode_text(tokenizer, ch)]
    completion_ids = odd + encode_text(tokenizer, " " + rest + "\n</think>\n\nNo.") + [tokenizer.eos_token_id]
    assert odd != encode_text(tokenizer, first)
    points = continuation_points(tokenizer, MESSAGES, REASONING, completion_ids=completion_ids)
    assert points.ids[points.prompt_length :] == completion_ids[: len(points.ids) - points.prompt_length]
    assert points.texts == [REASONING[: s.end] for s in split_sentences(REASONING)]
    spy = SpySampler(sampler)
    result = continuation_safety_ratio(_policy(spy, tokenizer), tokenizer, MarkerJudge(), MESSAGES, REASONING,
                                       num_samples=2, seed=SAMPLING.seed, judge_prompt=JUDGE_PROMPT,
                                       completion_ids=completion_ids)
    np.testing.assert_array_equal(result.csr, EXPECTED_CSR)
    assert spy.calls[0][1][points.prompt_length : points.prompt_length + len(odd)] == odd
    with pytest.raises(ValueError, match="do not decode to this reasoning"):
        continuation_points(tokenizer, MESSAGES, REASONING + " More.", completion_ids=completion_ids)
