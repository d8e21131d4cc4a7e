"""Intervention mechanics with a scripted policy and the pattern judge; resumability; the CLI stages."""

import json
from pathlib import Path

import pytest

from ipo_jax.data.pairs import read_pair_records
from ipo_jax.pipeline.intervene import (
    InterventionConfig,
    PromptFileError,
    build_pairs,
    read_prompt_records,
)
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
    """Deterministic stand-in for the sampler-backed Policy (same interface)."""

    policy_id = "scripted"
    sampling = SamplingConfig(temperature=0.6)

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.fail_on_call = 0, fail_on_call

    def count_tokens(self, text):
        return len(text.split())

    def complete(self, jobs, seed):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        out = []
        for i, (messages, prefix) in enumerate(jobs):
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
            out.append(Completion(text, "eos"))
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
    assert all(r["verdicts"]["reasoning"]["judge"] == "pattern-v1" and r["finish_reason"] in ("eos", "length") for r in rows)

    assert main(_pipeline_args("build-pairs", tiny_world, tmp_path / "pairs")) == 0
    summary = json.loads((tmp_path / "pairs" / "summary.json").read_text())
    assert summary["prompts"] == 4 and summary["generations"] >= 3  # 3 harmful originals + 2 benign candidates each
    assert (tmp_path / "pairs" / "pairs.jsonl").is_file()

    # CSR over the sampled harmful trajectories: a CSV and a PNG for each
    trajectories = tmp_path / "sample" / "trajectories.jsonl"
    args = _pipeline_args("csr", tiny_world, tmp_path / "csr", f"--config.csr.trajectories={trajectories}",
                          "--config.csr.num_samples=2", "--config.csr.window=1")
    assert main(args) == 0
    harmful = [r["id"] for r in rows if r["kind"] == "harmful" and r["reasoning"].strip()]
    assert harmful
    for trajectory_id in harmful:
        assert (tmp_path / "csr" / "csr" / f"{trajectory_id}.csr.csv").is_file()
        assert (tmp_path / "csr" / "csr" / f"{trajectory_id}.csr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_a_bad_prompt_file(tiny_world, tmp_path, capsys):
    from ipo_jax.cli import main

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "x"}\n')
    args = _pipeline_args("build-pairs", tiny_world, tmp_path / "out", f"--config.prompts={bad}")
    assert main(args) == 2
    assert "prompts.jsonl:1: field 'prompt' is missing" in capsys.readouterr().err


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


def test_real_samples_become_pairs_that_train_accepts(tiny_world, tmp_path):
    """prompt file -> real sampler on a tiny model -> pairs.jsonl -> `ipo-jax train` on it."""
    from ipo_jax.cli import main
    from ipo_jax.data.tokenizer import load_tokenizer
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config
    from ipo_jax.rollout import Policy
    from ipo_jax.sampling import Sampler

    tokenizer = load_tokenizer(tiny_world / "tokenizer")
    model = init_decoder(preset_config("tiny-qwen3", vocab_size=448, initializer_range=0.2), seed=0)
    sampler = Sampler(model, eos_ids=[tokenizer.eos_token_id], batch_size=8, prompt_buckets=[64, 128], chunk_tokens=8)
    policy = Policy(sampler, tokenizer, SamplingConfig(temperature=1.0, max_new_tokens=24), policy_id="preset:tiny-qwen3")
    judge = _MarkerJudge()
    harmful = [p for p in PROMPTS if p["kind"] == "harmful"]
    summary = build_pairs(harmful, tmp_path / "pairs", policy, judge, judge, TRIGGERS, InterventionConfig(rounds=1))
    pairs = read_pair_records(tmp_path / "pairs" / "pairs.jsonl")
    assert summary["pairs"] == len(pairs) == len(harmful)  # trigger 0 makes every continuation "safe"
    assert all(p["chosen"].startswith(TRIGGERS[0]) and p["rejected"] for p in pairs)

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
