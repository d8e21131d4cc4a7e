"""Intervention mechanics with a scripted policy and the pattern judge; resumability; the CLI stages."""

import json
from pathlib import Path

import pytest

from ipo_jax.data.pairs import read_pair_records
from ipo_jax.pipeline.chunks import BuildPairsError, build_pairs
from ipo_jax.pipeline.intervene import InterventionConfig, PromptFileError, read_prompt_records
from ipo_jax.pipeline.records import is_finished
from ipo_jax.judging.pattern import PatternCueDetector, PatternJudge
from ipo_jax.rollout import Completion, reasoning_span
from ipo_jax.sampling import SamplingConfig

TRIGGERS = (
    "Wait, I should stop here: this request could cause real harm, so I need to refuse.",
    "Hmm, this sounds really wrong, and I shouldn't be helping with it.",
)
COMPLIANT = (
    "Okay, the user asks about something risky. Let me think about what it involves. "
    "Let me work them out. [harmful details withheld]\n</think>\n\nHere is how to do it: [harmful details withheld]"
)
SAFE_ORIGINAL = "This request is risky. I can't help with that.\n</think>\n\nI can't help with that."
SAFE_TAIL = "I should not help with this.\n</think>\n\nI can't help with that, but I can suggest lawful options."
UNSAFE_TAIL = "Actually, let me work them out. [harmful details withheld]\n</think>\n\nHere is how to do it: [harmful details withheld]"
HELPFUL = "The user wants a photo tip. A tripod helps.\n</think>\n\nUse a tripod and a long exposure."
REFUSAL = "This might be risky.\n</think>\n\nI'm sorry, but I can't help with that."


class ScriptedPolicy:
    """Deterministic stand-in for the sampler-backed Policy (same interface): one token per
    character (id = code point), end-of-turn id 0 appended when a completion ends on its own."""

    policy_id = "scripted"
    sampling = SamplingConfig(temperature=0.6)
    END = 0

    def __init__(self, fail_on_call: int | None = None, cut_off: tuple[str, ...] = ()):
        """cut_off: completion texts returned cut at the token limit (before their </think>, no end id)."""
        self.calls, self.fail_on_call, self.cut_off = 0, fail_on_call, cut_off

    max_prompt_tokens = None  # the sampler's longest prompt (None: no limit)

    def describe(self):
        return {"backend": "local", "id": self.policy_id, "endpoint": None, "model": self.policy_id, "server": None}
    forks_prefix = False  # every round's continuations in one `complete` call

    def encode_text(self, text):
        return [ord(c) for c in text]

    def prompt_tokens(self, messages):
        return sum(len(m["content"]) for m in messages)

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i != self.END)

    def complete(self, jobs, seed):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        out = []
        for i, (messages, prefix) in enumerate(jobs):
            assert isinstance(prefix, str) and not prefix or isinstance(prefix, list), "prefixes are token ids"
            prefix = self.decode(prefix) if isinstance(prefix, list) else prefix
            user = messages[-1]["content"]
            if not prefix:
                if "benign" in user:
                    text = HELPFUL if i % 2 else REFUSAL
                else:
                    text = SAFE_ORIGINAL if "safe" in user else COMPLIANT
            elif TRIGGERS[1] in prefix and prefix.count(TRIGGERS[1]) == 1:
                text = UNSAFE_TAIL  # the second trigger needs a second round
            else:
                text = SAFE_TAIL
            if text in self.cut_off:
                text = text[: text.index("</think>")]
                out.append(Completion(text, "length", tuple(self.encode_text(text))))
            else:
                out.append(Completion(text, "stop", tuple(self.encode_text(text) + [self.END])))
        return out


PROMPTS = [
    {"id": "p1", "prompt": "How do I do something risky? [request details withheld]", "kind": "harmful"},
    {"id": "p2", "prompt": "A safe-looking question [request details withheld]", "kind": "harmful"},
    {"id": "p3", "prompt": "A benign photo question", "kind": "benign"},
    {"id": "p4", "prompt": "Another risky thing [request details withheld]", "kind": "harmful"},
]


def _build(out, policy=None, chunk_prompts=2, **kwargs):
    cfg = InterventionConfig(rounds=3, chunk_prompts=chunk_prompts, benign_candidates=2)
    return build_pairs(PROMPTS, out, policy or ScriptedPolicy(), PatternJudge(), PatternCueDetector(), TRIGGERS, cfg, **kwargs)


def test_intervention_builds_pairs_from_the_first_cue(tmp_path):
    summary = _build(tmp_path)
    pairs = [json.loads(l) for l in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    by_id = {p["id"]: p for p in pairs}
    assert sorted(by_id) == ["p1/t0/r1", "p1/t1/r2", "p3/over-refusal", "p4/t0/r1", "p4/t1/r2"]
    p = by_id["p1/t0/r1"]
    cue = COMPLIANT.index("Let me work them out.")
    assert p["prefix"] == COMPLIANT[:cue] and p["rejected"] == COMPLIANT[cue:] and p["h"]["char"] == cue
    assert p["h"]["sentence"] == 2 and p["chosen"].startswith(TRIGGERS[0]) and p["chosen"].endswith(SAFE_TAIL)
    assert p["verdicts"]["original"]["reasoning"]["label"] == "unsafe" and p["verdicts"]["intervened"]["answer"]["judge"] == "pattern-v1"
    two = by_id["p1/t1/r2"]  # round 2: the continuation's own cue was replaced by the trigger again
    assert two["chosen"].count(TRIGGERS[1]) == 2 and "[harmful details withheld]" not in two["chosen"]
    assert two["prefix"] == p["prefix"] and two["rejected"] == p["rejected"]
    over = by_id["p3/over-refusal"]
    assert over["chosen"] == HELPFUL and over["rejected"] == REFUSAL and over["prefix"] == ""
    assert summary["prompts"] == 4 and summary["unsafe_original"] == 2 and summary["safe_original"] == 1
    assert summary["success_per_round"] == {"1": 2, "2": 2} and summary["cue_found_share"] == 1.0
    assert summary["unsafe_share"] == pytest.approx(2 / 3)
    # the trainer accepts the file
    assert len(read_pair_records(tmp_path / "pairs.jsonl")) == 5


def _trajectories(out):
    rows = []
    for path in sorted((out / "chunks").glob("trajectories-*.jsonl")):
        rows += [json.loads(l) for l in path.read_text().splitlines()]
    return rows


def test_pairs_carry_the_sampled_ids_exactly(tmp_path):
    _build(tmp_path)
    policy = ScriptedPolicy()
    originals = {r["id"]: r for r in _trajectories(tmp_path) if r["kind"] == "harmful"}
    pairs = [json.loads(l) for l in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    for p in pairs:
        assert p["prefix"] == policy.decode(p["prefix_ids"]) and p["chosen"] == policy.decode(p["chosen_ids"])
        assert p["rejected"] == policy.decode(p["rejected_ids"]) and p["h"]["token"] == len(p["prefix_ids"])
        assert p["finish_reasons"] == {"chosen": "stop", "rejected": "stop"}
        # the end-of-turn id as sampled closes both sides; nothing is appended
        assert p["chosen_ids"][-1] == p["rejected_ids"][-1] == ScriptedPolicy.END
        if p["kind"] == "intervention":
            assert p["prefix_ids"] + p["rejected_ids"] == originals[p["prompt_id"]]["completion_ids"]
            trigger = TRIGGERS[p["trigger_index"]]
            assert policy.decode(p["chosen_ids"][: len(trigger)]) == trigger  # the prefix ends in a space here
    benign = [r for r in _trajectories(tmp_path) if r["kind"] == "benign"]
    over = next(p for p in pairs if p["kind"] == "over_refusal")
    assert over["rejected_ids"] in [r["completion_ids"] for r in benign] and over["prefix_ids"] == []


def test_cut_off_generations_never_become_pairs(tmp_path):
    summary = _build(tmp_path / "rejected", policy=ScriptedPolicy(cut_off=(COMPLIANT,)))
    assert summary["unsafe_original"] == 2 and summary["cut_off_rejected"] == 2 and summary["cue_found"] == 0
    assert [json.loads(l)["kind"] for l in (tmp_path / "rejected" / "pairs.jsonl").read_text().splitlines()] == ["over_refusal"]

    summary = _build(tmp_path / "chosen", policy=ScriptedPolicy(cut_off=(SAFE_TAIL,)))
    # every safe continuation is cut off: 2 prompts x (trigger 0 in round 1, trigger 1 in round 2)
    assert summary["cut_off_chosen"] == 4 and summary["success_per_round"] == {}
    assert summary["pairs"] == summary["over_refusal_pairs"] == 1

    summary = _build(tmp_path / "benign", policy=ScriptedPolicy(cut_off=(HELPFUL,)))
    assert summary["cut_off_benign"] == 1 and summary["over_refusal_pairs"] == 0
    assert all(p["kind"] == "intervention" for p in read_pair_records(tmp_path / "benign" / "pairs.jsonl"))


def test_interventions_longer_than_the_samplers_prompt_limit_are_dropped_and_counted(tmp_path):
    class TightPolicy(ScriptedPolicy):
        # room for p1's prompt + prefix + the shorter trigger 1, not for trigger 0 (nor for a second round)
        max_prompt_tokens = len(PROMPTS[0]["prompt"]) + COMPLIANT.index("Let me work them out.") + len(TRIGGERS[1])

    assert len(TRIGGERS[0]) > len(TRIGGERS[1])
    summary = _build(tmp_path, policy=TightPolicy())
    # round 1: trigger 0 of p1 and p4 dropped; trigger 1 runs, is still unsafe, and its round-2
    # prompt (prefix + trigger + kept continuation + trigger) is dropped too
    assert summary["prompt_too_long"] == 4 and summary["success_per_round"] == {}
    assert summary["generations"] == 3 + 2 + 2  # originals, the two trigger-1 continuations, benign candidates


def test_an_empty_or_missing_answer_is_never_finished():
    assert is_finished(SAFE_TAIL, "stop")
    assert not is_finished(SAFE_TAIL, "length")  # cut at the token limit
    assert not is_finished("I should not help.\n</think>\n\n  \n", "stop")  # empty answer
    assert not is_finished("I should not help. I can't help with that.", "stop")  # reasoning never closed


class AlternatingPolicy(ScriptedPolicy):
    """Harmful prompts sampled from scratch alternate unsafe / safe (the full-trajectory baseline)."""

    def complete(self, jobs, seed):
        out = super().complete(jobs, seed)
        for i, (messages, prefix) in enumerate(jobs):
            if not prefix and "benign" not in messages[-1]["content"]:
                text = SAFE_ORIGINAL if i % 2 else COMPLIANT
                cut = text in self.cut_off
                text = text[: text.index("</think>")] if cut else text
                out[i] = Completion(text, "length" if cut else "stop", tuple(self.encode_text(text) + ([] if cut else [self.END])))
        return out


def _build_full(out, policy=None, chunk_prompts=1):
    cfg = InterventionConfig(chunk_prompts=chunk_prompts)
    return build_pairs(PROMPTS, out, policy or AlternatingPolicy(), PatternJudge(), PatternCueDetector(), TRIGGERS, cfg,
                       kind="full_trajectory", samples=2)


def test_full_trajectory_baseline_pairs_come_from_build_pairs(tmp_path):
    summary = _build_full(tmp_path / "whole")
    pairs = read_pair_records(tmp_path / "whole" / "pairs.jsonl")
    assert [p["id"] for p in pairs] == ["p1/full", "p2/full", "p4/full"]
    samples = {}
    for row in _trajectories(tmp_path / "whole"):
        samples.setdefault(row["id"], []).append(row["completion_ids"])
    for p in pairs:  # independent trajectories of the prompt, whole, as sampled
        assert p["prefix"] == "" and p["prefix_ids"] == [] and p["chosen"] == SAFE_ORIGINAL and p["rejected"] == COMPLIANT
        assert p["chosen_ids"] in samples[p["prompt_id"]] and p["rejected_ids"] in samples[p["prompt_id"]]
        assert p["finish_reasons"] == {"chosen": "stop", "rejected": "stop"} and p["kind"] == "full_trajectory"
    assert summary["kind"] == "full_trajectory" and summary["samples"] == 6 and summary["pairs"] == 3
    assert summary["unsafe_share"] == 0.5 and summary["cut_off"] == 0

    # resumable like the intervention: a crash in chunk 1 (one policy call per chunk), then a rerun
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build_full(tmp_path / "crashed", policy=AlternatingPolicy(fail_on_call=2))
    _build_full(tmp_path / "crashed")
    assert (tmp_path / "crashed" / "pairs.jsonl").read_bytes() == (tmp_path / "whole" / "pairs.jsonl").read_bytes()

    # an out directory of IPO pairs is never resumed as another kind
    _build(tmp_path / "ipo")
    with pytest.raises(BuildPairsError, match="build: was"):
        _build_full(tmp_path / "ipo")


def test_full_trajectory_baseline_skips_cut_off_samples(tmp_path):
    summary = _build_full(tmp_path, policy=AlternatingPolicy(cut_off=(SAFE_ORIGINAL,)))
    assert summary["pairs"] == 0 and summary["cut_off"] == 3 and summary["no_safe_sample"] == 3
    with pytest.raises(ValueError, match="build_pairs.kind 'sft'"):
        build_pairs(PROMPTS, tmp_path / "x", AlternatingPolicy(), PatternJudge(), PatternCueDetector(), TRIGGERS,
                    InterventionConfig(), kind="sft")


def test_generation_budget_is_respected_and_counted(tmp_path):
    cfg = InterventionConfig(rounds=3, chunk_prompts=4, benign_candidates=2, max_generations_per_prompt=2)
    summary = build_pairs(PROMPTS, tmp_path, ScriptedPolicy(), PatternJudge(), PatternCueDetector(), TRIGGERS, cfg)
    assert summary["budget_exhausted"] > 0 and summary["success_per_round"] == {"1": 2}


def test_a_crashed_run_restarts_to_the_same_pairs(tmp_path):
    _build(tmp_path / "whole", chunk_prompts=1)  # same config as the crashed run: same chunks, same seeds
    want = (tmp_path / "whole" / "pairs.jsonl").read_text()

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build(out, policy=ScriptedPolicy(fail_on_call=4), chunk_prompts=1)  # chunk 0 takes 3 calls: dies in chunk 1
    assert (out / "chunks" / "progress-00000.json").is_file() and not (out / "chunks" / "progress-00001.json").exists()
    assert not (out / "pairs.jsonl").exists()
    _build(out, chunk_prompts=1)
    assert (out / "pairs.jsonl").read_text() == want
    ids = [json.loads(l)["id"] for l in want.splitlines()]
    assert len(ids) == len(set(ids))


def test_reasoning_span_handles_think_tags_and_truncation():
    assert reasoning_span("<think>\nabc</think>\n\nx") == (8, 11, True)
    assert reasoning_span("abc</think>x") == (0, 3, True)
    assert reasoning_span("<think>\nabc") == (8, 11, False)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{bad", r"prompts.jsonl:2: not valid JSON"),
        ({"id": "b"}, r"prompts.jsonl:2: field 'prompt' is missing"),
        ({"id": "b", "prompt": ""}, r"prompts.jsonl:2 \(id 'b'\): field 'prompt' is empty"),
        ({"id": "b", "prompt": "x", "kind": "weird"}, r"prompts.jsonl:2 \(id 'b'\): field 'kind'"),
    ],
)
def test_malformed_prompt_file_names_the_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(PROMPTS[0]) + "\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(PromptFileError, match=message):
        read_prompt_records(path)


# ----------------------------------------------------------------------------- through the CLI, real sampler


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny-world")
    rows = [json.loads(l) for l in (Path(__file__).parents[1] / "configs" / "sample_pairs.jsonl").read_text().splitlines()]
    tokenizer = build_tiny_tokenizer([r[k] for r in rows for k in ("prompt", "prefix", "chosen", "rejected")], vocab_size=400)
    tokenizer.save_pretrained(root / "tokenizer")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return root


def _pipeline_args(stage, world, out, *extra):
    return [stage, "--config", str(Path(__file__).parents[1] / "configs" / "pipeline_tiny_cpu.py"),
            "--config.model.init=preset:tiny-qwen3", f"--config.tokenizer={world / 'tokenizer'}",
            f"--config.prompts={world / 'prompts.jsonl'}", f"--config.out={out}", "--config.sampling.max_new_tokens=12",
            "--config.sampler.batch_size=8", *extra]


def test_sample_and_build_pairs_run_through_the_cli(tiny_world, tmp_path):
    from ipo_jax.cli import main

    assert main(_pipeline_args("sample", tiny_world, tmp_path / "sample")) == 0
    rows = [json.loads(l) for l in (tmp_path / "sample" / "trajectories.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in PROMPTS]
    assert all(r["completion_ids"] and all(isinstance(i, int) for i in r["completion_ids"]) for r in rows)
    assert all(r["verdicts"]["reasoning"]["judge"] == "pattern-v1" and r["finish_reason"] in ("stop", "length") for r in rows)

    assert main(_pipeline_args("build-pairs", tiny_world, tmp_path / "pairs")) == 0
    summary = json.loads((tmp_path / "pairs" / "summary.json").read_text())
    assert summary["prompts"] == 4 and summary["generations"] >= 3  # 3 harmful originals + 2 benign candidates each
    assert (tmp_path / "pairs" / "pairs.jsonl").is_file()

    # CSR over the sampled harmful trajectories: a CSV and a PNG for each
    trajectories = tmp_path / "sample" / "trajectories.jsonl"
    args = _pipeline_args("csr", tiny_world, tmp_path / "csr", f"--config.csr.trajectories={trajectories}",
                          "--config.csr.num_samples=2", "--config.csr.window=1", "--config.csr.seed=5")
    assert main(args) == 0
    harmful = [r["id"] for r in rows if r["kind"] == "harmful" and r["reasoning"].strip()]
    assert harmful
    for trajectory_id in harmful:
        assert (tmp_path / "csr" / "csr" / f"{trajectory_id}.csr.csv").is_file()
        assert (tmp_path / "csr" / "csr" / f"{trajectory_id}.csr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "csr" / "csr" / f"{trajectory_id}.csr_tokens.csv").is_file()  # the default: per token
    # each trace samples under its own seed, derived from the base seed and its id
    from ipo_jax.pipeline.csr import trace_seed

    table = [json.loads(l) for l in (tmp_path / "csr" / "csr_summary.jsonl").read_text().splitlines()]
    assert {r["granularity"] for r in table} == {"token"}
    assert [r["seed"] for r in table] == [trace_seed(5, r["id"]) for r in table] and len({r["seed"] for r in table}) == len(table)


def test_cli_reports_a_bad_prompt_file(tiny_world, tmp_path, capsys):
    from ipo_jax.cli import main

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "x"}\n')
    args = _pipeline_args("build-pairs", tiny_world, tmp_path / "out", f"--config.prompts={bad}")
    assert main(args) == 2
    assert "prompts.jsonl:1: field 'prompt' is missing" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("--config.prompts_fields=prompt=text", "star1_layout.parquet: column 'text'"),
    ("--config.prompts_kind=unknown", "prompts_kind 'unknown'"),
    ("--config.build_pairs.kind=sft", "build_pairs.kind is 'sft'"),
])
def test_cli_refuses_a_bad_prompt_source_before_sampling(tiny_world, tmp_path, capsys, override, message):
    from ipo_jax.cli import main

    star1 = Path(__file__).parent / "fixtures" / "prompt_sets" / "star1_layout.parquet"
    args = _pipeline_args("build-pairs", tiny_world, tmp_path / "out", f"--config.prompts={star1}", override)
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "chunks").exists()  # nothing sampled, nothing written


class _MarkerJudge:
    """Unsafe unless the text carries the first trigger; every reasoning's first sentence is a cue.
    Deterministic, so real (random-model) samples still flow through every stage."""

    name = "marker-judge"

    def judge(self, requests):
        from ipo_jax.judging import Verdict

        # the marker lives in the reasoning; the answer part is always safe, so the reasoning decides
        return [Verdict("safe" if r.part == "answer" or TRIGGERS[0][:20] in r.text else "unsafe", None, self.name, "marker")
                for r in requests]

    def detect(self, requests):
        from ipo_jax.judging import CueResult

        return [CueResult(0 if r.sentences else None, self.name, "first sentence") for r in requests]


def test_real_samples_carry_their_ids_and_cut_offs_are_counted(tiny_world, tmp_path):
    """prompt file -> real sampler on a tiny (random) model -> trajectories with the sampled ids;
    its generations mostly hit the token limit, and none of those becomes a pair side."""
    from ipo_jax.data.tokenizer import load_tokenizer
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config
    from ipo_jax.rollout import LocalPolicy
    from ipo_jax.sampling import Sampler

    tokenizer = load_tokenizer(tiny_world / "tokenizer")
    model = init_decoder(preset_config("tiny-qwen3", vocab_size=448, initializer_range=0.2), seed=0)
    sampler = Sampler(model, eos_ids=[tokenizer.eos_token_id], batch_size=8, prompt_buckets=[64, 128], chunk_tokens=8)
    policy = LocalPolicy(sampler, tokenizer, SamplingConfig(temperature=1.0, max_new_tokens=24), policy_id="preset:tiny-qwen3")
    judge = _MarkerJudge()
    harmful = [p for p in PROMPTS if p["kind"] == "harmful"]
    summary = build_pairs(harmful, tmp_path / "pairs", policy, judge, judge, TRIGGERS, InterventionConfig(rounds=1))
    rows = _trajectories(tmp_path / "pairs")
    assert [r["id"] for r in rows] == [p["id"] for p in harmful]
    for row in rows:
        ids = row["completion_ids"]
        assert row["completion"] == policy.decode(ids) and 0 < len(ids) <= 24
        assert (row["finish_reason"] == "stop") == (ids[-1] == tokenizer.eos_token_id)
    unfinished = sum(not is_finished(r["completion"], r["finish_reason"]) for r in rows)
    assert unfinished > 0 and summary["cut_off_rejected"] + summary["cut_off_original"] == unfinished
    pairs = [json.loads(l) for l in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert summary["pairs"] == len(pairs) and all(p["finish_reasons"] == {"chosen": "stop", "rejected": "stop"} for p in pairs)
    assert summary["cue_found"] == len(rows) - unfinished


def test_token_exact_pairs_train(tiny_world, tmp_path):
    """pairs built through the real Policy (scripted sampler ids, tiny tokenizer) -> `ipo-jax train`."""
    from test_token_exact import ScriptedSampler

    from ipo_jax.cli import main
    from ipo_jax.data.tokenizer import load_tokenizer
    from ipo_jax.pipeline.triggers import DEFAULT_TRIGGERS
    from ipo_jax.rollout import LocalPolicy

    tokenizer = load_tokenizer(tiny_world / "tokenizer")
    policy = LocalPolicy(ScriptedSampler(tokenizer), tokenizer, SamplingConfig(), policy_id="scripted")
    harmful = [p for p in PROMPTS if p["kind"] == "harmful"]
    summary = build_pairs(harmful, tmp_path / "pairs", policy, PatternJudge(), PatternCueDetector(), DEFAULT_TRIGGERS[:1],
                          InterventionConfig(rounds=1))
    pairs = read_pair_records(tmp_path / "pairs" / "pairs.jsonl")
    assert summary["pairs"] == len(pairs) == len(harmful) and all(p["chosen_ids"] and p["rejected_ids"] for p in pairs)

    args = ["train", "--config", str(Path(__file__).parents[1] / "configs" / "train_tiny_cpu.py"),
            f"--config.data.pairs={tmp_path / 'pairs' / 'pairs.jsonl'}", f"--config.tokenizer={tiny_world / 'tokenizer'}",
            f"--config.train.out={tmp_path / 'train'}", f"--config.reference.cache_dir={tmp_path / 'train'}",
            "--config.train.max_steps=2", "--config.data.pairs_per_micro=8"]
    assert main(args) == 0
    assert len((tmp_path / "train" / "metrics.jsonl").read_text().splitlines()) == 2


def test_judge_backend_is_chosen_by_config():
    import runpy

    from ipo_jax.judging.build import build_judges
    from ipo_jax.judging.chat import HttpChat
    from ipo_jax.judging.llm import LLMCueDetector, LLMJudge

    config = runpy.run_path(str(Path(__file__).parents[1] / "configs" / "pipeline_tiny_cpu.py"))["get_config"]()
    judge, detector = build_judges(config)
    assert isinstance(judge, PatternJudge) and isinstance(detector, PatternCueDetector)
    config.judge.backend, config.judge.model, config.judge.base_url = "http", "judge-model", "http://127.0.0.1:1/v1"
    judge, detector = build_judges(config)
    assert isinstance(judge, LLMJudge) and isinstance(detector, LLMCueDetector) and judge.name == "http:judge-model"
    assert isinstance(judge.chat, HttpChat) and detector.chat is judge.chat  # detector.backend '': the judge's, shared
    config.judge.base_url = ""
    with pytest.raises(ValueError, match="base_url"):
        build_judges(config)
    config.judge.backend = "oracle"
    with pytest.raises(ValueError, match="expected one of 'pattern', 'llm', 'http'"):
        build_judges(config)
