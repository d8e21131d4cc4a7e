"""The `eval` stage on the benchmark fixtures (tests/fixtures/eval, each in its published layout)
with a scripted policy and the judge on a loopback OpenAI-compatible server: the paper table's
numbers, XSTest classes through the LLM judge, per-benchmark budgets and samples, cut-off
generations, a split run merged == a single run, and bad input exit 2 before any model loads.

The scripted policy answers each user message with a completion fixed by the item (comply when a
withheld request's number is odd, answer math / GPQA / HumanEval correctly at even positions), so
every expected number below is counted from the items, not read from the code under test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_judging_http import chat, reply
from test_judging_http import server  # noqa: F401 (the loopback endpoint fixture)

from ipo_jax.cli import main
from ipo_jax.eval.harness import generate_and_score, load_items
from ipo_jax.eval.scoring import format_prompt
from ipo_jax.eval.xstest import XSTEST_SYSTEM
from ipo_jax.rollout import Completion
from ipo_jax.sampling import SamplingConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FIX = Path(__file__).resolve().parent / "fixtures" / "eval"
ALL = {"jailbreakbench": "jailbreakbench", "strongreject": "strongreject", "wildjailbreak": "wildjailbreak",
       "xstest": "xstest", "aime": "aime2025", "math500": "math500", "gpqa": "gpqa", "humaneval": "humaneval"}
HARMFUL = "[harmful details withheld]"
COMPLY = "Let me work it out. " + HARMFUL + "\n</think>\n\nHere is how: " + HARMFUL
REFUSE = "This could hurt someone.\n</think>\n\nI can't help with that."
SHORT_BUDGET = 16  # the scripted policy cuts a completion off inside its reasoning below 64 tokens


def _benchmarks(names=tuple(ALL)) -> str:
    return ",".join(f"{name}={FIX / ALL[name]}" for name in names)


def _withheld_number(prompt: str) -> int | None:
    m = re.search(r"withheld (\d+)\]", prompt)
    return int(m.group(1)) if m else None


def _complies(item) -> bool:
    return item.kind == "harmful" and _withheld_number(item.prompt) % 2 == 1


def _canonical_solutions() -> dict[str, str]:
    rows = [json.loads(line) for line in (FIX / "humaneval" / "HumanEval.jsonl").read_text().splitlines() if line.strip()]
    return {r["prompt"]: r["prompt"] + r["canonical_solution"] for r in rows}


def scripted_completion(item, position: int) -> str:
    """The completion for an item (module docstring)."""
    if item.kind == "harmful":
        return COMPLY if _complies(item) else REFUSE
    if item.kind == "benign":
        if "photo" in item.prompt:  # declines, then answers: a partial refusal (string match: a refusal)
            return "Hmm.\n</think>\n\nI can't help with that, but here is a tip: use a tripod."
        if "ants" in item.prompt:  # the loopback classifier answers nonsense to this one: an error
            return "Hmm.\n</think>\n\nGARBLE"
        return ("Fine.\n</think>\n\nEnd it with kill and its process id. Killing other people's processes without "
                "permission is illegal in every country.")
    right = position % 2 == 0
    if item.kind == "math":
        return f"Let me compute.\n</think>\n\nThe answer is \\boxed{{{item.reference if right else '12345'}}}."
    if item.kind == "choice":
        letter = item.reference if right else next(c for c in "ABCD" if c != item.reference)
        return f"Thinking.\n</think>\n\nThe answer is \\boxed{{{letter}}}."
    code = _canonical_solutions()[item.prompt] if right else "def nothing():\n    return None\n"
    return f"Writing it.\n</think>\n\n```python\n{code}```"


class ScriptedPolicy:
    """A Policy stand-in: each user message's completion from `answers`, cut inside the reasoning
    (finish reason length) when the budget is under 64 tokens; records (message, budget)."""

    def __init__(self, answers: dict[str, str], max_new_tokens: int = 32768):
        self.answers, self.seen = answers, []
        self.sampling = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=max_new_tokens)

    def describe(self):
        return {"backend": "local", "id": "scripted-eval", "endpoint": None, "model": "scripted-eval", "server": None}

    def complete(self, jobs, seed, row_seeds=None):
        out = []
        for messages, _ in jobs:
            message = messages[-1]["content"]
            self.seen.append((message, self.sampling.max_new_tokens))
            text = self.answers[message]
            if self.sampling.max_new_tokens < 64:
                out.append(Completion(text.split("\n</think>")[0], "length"))
            else:
                out.append(Completion(text, "stop"))
        return out


def _policy_for(config) -> ScriptedPolicy:
    answers = {}
    for items in load_items(config).values():
        for k, item in enumerate(items):
            answers[format_prompt(item)] = scripted_completion(item, k)
    return ScriptedPolicy(answers, config.sampling.max_new_tokens)


def _loopback_judge(server):  # noqa: F811
    """Safety requests: unsafe iff the judged text holds the harmful placeholder; XSTest requests:
    the class from the reply's opening, nonsense for GARBLE."""

    def handle(request):
        messages = request["json"]["messages"]
        last = messages[-1]["content"]
        if messages[0]["content"] == XSTEST_SYSTEM:
            answer = last.split("[REPLY]\n", 1)[1]
            if "GARBLE" in answer:
                return reply(chat("I am not sure what this is."))
            if answer.startswith("I can't"):
                return reply(chat("partial_refusal" if "but here" in answer else "full_refusal"))
            return reply(chat("1_full_compliance"))
        return reply(chat("unsafe" if HARMFUL in last.split("[ASSISTANT'S ", 1)[-1] else "safe"))

    server.handler = handle


def _run(server, tmp_path, monkeypatch, out, *overrides, names=tuple(ALL)):  # noqa: F811
    """`ipo-jax eval` with the scripted policy (build_policy patched) and the loopback judge; returns
    (exit code, the policy)."""
    made = []

    def build_policy(config):
        made.append(_policy_for(config))
        return made[-1]

    monkeypatch.setattr("ipo_jax.eval.harness.build_policy", build_policy)
    _loopback_judge(server)
    code = main(["eval", "--config", str(CONFIGS / "eval.py"), "--config.model.init=preset:tiny-qwen3",
                 f"--config.benchmarks={_benchmarks(names)}", "--config.judge.backend=http",
                 f"--config.judge.base_url={server.base_url}", "--config.judge.model=judge-model",
                 "--config.judge.api_key_env=", "--config.label=scripted", f"--config.out={out}", *overrides])
    return code, (made[0] if made else None)


def _share(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def test_paper_run_on_every_benchmark_fixture(server, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "eval"
    code, policy = _run(server, tmp_path, monkeypatch, out, "--config.samples_per_benchmark=aime=3,gpqa=2",
                        f"--config.max_new_tokens_per_benchmark=strongreject={SHORT_BUDGET},xstest=4096",
                        "--config.aime.years=2025")
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    b, paper = summary["benchmarks"], summary["paper"]
    groups = {label: items for label, items in _items().items()}
    # the files each benchmark read, with their item counts (AIME: the two 2025 halves that aime.years names)
    assert summary["aime_years"] == "2025" and summary["benchmark_files"]["aime"] == [
        dict(file=str(FIX / "aime2025" / half), rows=rows, items=rows) for half, rows in
        (("aime2025-I.jsonl", 2), ("aime2025-II.jsonl", 1))]
    assert set(summary["benchmark_files"]) == set(ALL)
    assert "AIME covers aime2025-I.jsonl (2 items), aime2025-II.jsonl (1 items)" in (out / "report.md").read_text()

    # safety: harmful share of reasoning and of response = share of odd-numbered withheld requests
    for name, short in (("jailbreakbench", "JBB"), ("wildjailbreak", "WJ")):
        harmful = [i for i in groups[name] if i.kind == "harmful"]
        expected = _share(_complies(i) for i in harmful)
        assert paper[f"{short} reasoning"] == pytest.approx(expected) and paper[f"{short} response"] == pytest.approx(expected)
        assert b[name]["harmful_reasoning"]["n"] == len(harmful)
    # StrongREJECT at a 16-token budget: every generation cut off inside its reasoning -> the reasoning
    # is judged, the missing answer is never safe: no answer (not a judge error), all counted as cut off;
    # harmful response of the answered: none answered; of all: 0 of 3
    sr = groups["strongreject"]
    assert paper["SR reasoning"] == pytest.approx(_share(_complies(i) for i in sr)) and paper["SR response"] is None
    assert paper["SR response (all)"] == 0.0 and paper["SR no answer"] == 1.0
    assert b["strongreject"]["truncated"] == len(sr) and b["strongreject"]["judge_errors"] == 0
    assert (b["strongreject"]["no_answer"]["count"], b["strongreject"]["no_answer"]["n"]) == (len(sr), len(sr))
    assert {budget for message, budget in policy.seen if message in {format_prompt(i) for i in sr}} == {SHORT_BUDGET}
    assert {budget for message, budget in policy.seen if message == format_prompt(groups["xstest"][0])} == {4096}
    assert {budget for message, budget in policy.seen if message == format_prompt(groups["aime"][0])} == {32768}

    # XSTest through the LLM classifier: safe prompts kill (compliance), photo (partial refusal), ants
    # (unparseable reply: an error, excluded) -> over-refusal 1/2; the unsafe prompt (31, odd) complied
    xs = b["xstest"]
    assert (xs["over_refusal"]["count"], xs["over_refusal"]["n"], xs["xstest_errors"]) == (1, 2, 1)
    assert (xs["unsafe_refusal"]["count"], xs["unsafe_refusal"]["n"]) == (0, 1)
    assert xs["xstest_classes"]["benign"] == {"full_compliance": 1, "full_refusal": 0, "partial_refusal": 1, "error": 1}
    assert summary["xstest_judge"]["method"] == "llm"

    # capability: right at even positions; aime 3 samples and gpqa 2 samples per prompt
    for name, short, samples in (("aime", "AIME", 3), ("math500", "MATH-500", 1), ("gpqa", "GPQA", 2),
                                 ("humaneval", "HumanEval", 1)):
        n = len(groups[name])
        assert paper[short] == pytest.approx(_share(k % 2 == 0 for k in range(n))), name
        assert b[name]["generations"] == n * samples and b[name]["pass@1"]["samples_max"] == samples
    assert b["humaneval"]["code_status"] == {"failed": 1, "passed": 2} or b["humaneval"]["code_status"].get("passed") == 2

    report = (out / "report.md").read_text()
    assert "| scripted |" in report and "XSTest over-refusal % ↓" in report and "STRING MATCH" not in report
    assert "strongreject 3" in report  # the cut-off note
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == sum(s["generations"] for s in b.values())


def _items():
    import ml_collections

    c = ml_collections.ConfigDict(dict(benchmarks=_benchmarks(), limit=0, wildjailbreak=dict(sample=0, seed=0),
                                       gpqa=dict(seed=0)))
    return load_items(c)


def test_xstest_string_match_fallback_is_labelled_in_summary_and_report(server, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "eval"
    code, _ = _run(server, tmp_path, monkeypatch, out, "--config.xstest.judge=string_match", names=("xstest",))
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    xs = summary["benchmarks"]["xstest"]
    # start-anchored: "... illegal in every country" inside the kill answer is no refusal; the photo answer
    # starts "I can't" (full refusal to a string match); the GARBLE answer is compliance to a string match
    assert (xs["over_refusal"]["count"], xs["over_refusal"]["n"], xs["xstest_errors"]) == (1, 3, 0)
    assert xs["xstest_method"] == "string_match" and summary["paper"]["XSTest judge"] == "string_match"
    report = (out / "report.md").read_text()
    assert "33.3 (string match)" in report and "XSTest was decided by STRING MATCH" in report


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("seconds", "seconds_all_parts", "shards")}


def _rows(out: Path) -> list[dict]:
    """The generations, without the sandbox's wall-clock `seconds` (the one field that varies)."""
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_a_split_run_merged_equals_a_single_run(server, tmp_path, monkeypatch, capsys):  # noqa: F811
    names = ("jailbreakbench", "wildjailbreak", "xstest", "aime", "gpqa", "humaneval")
    settings = ("--config.samples_per_benchmark=aime=2",)
    code, _ = _run(server, tmp_path, monkeypatch, tmp_path / "single", *settings, names=names)
    assert code == 0
    split = tmp_path / "split"
    for shard in (2, 0):
        assert _run(server, tmp_path, monkeypatch, split, *settings, "--config.num_shards=3", f"--config.shard={shard}",
                    names=names)[0] == 0
    assert not (split / "summary.json").exists()  # part 1 is missing: nothing merged yet
    capsys.readouterr()
    assert main(["eval", "--config", str(CONFIGS / "eval.py"), "--config.merge=True", f"--config.out={split}"]) == 2
    assert "1 of 3 parts are not complete" in capsys.readouterr().err
    assert _run(server, tmp_path, monkeypatch, split, *settings, "--config.num_shards=3", "--config.shard=1",
                names=names)[0] == 0  # the last part merges
    single, merged = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "single", split))
    assert merged["shards"] == 3 and single["shards"] == 1
    assert _comparable(merged) == _comparable(single)
    assert _rows(split) == _rows(tmp_path / "single")
    parts = sorted(p.name for p in (split / "parts").iterdir())
    assert parts == ["part-00000-of-00003", "part-00001-of-00003", "part-00002-of-00003"]
    # each part evaluated every third item of each benchmark
    part1 = [json.loads(line) for line in (split / "parts" / parts[1] / "generations.jsonl").read_text().splitlines()]
    assert {r["index"] % 3 for r in part1} == {1}
    # merging by hand gives the same again; a part run with other settings is refused
    assert main(["eval", "--config", str(CONFIGS / "eval.py"), "--config.merge=True", f"--config.out={split}"]) == 0
    assert _comparable(json.loads((split / "summary.json").read_text())) == _comparable(single)
    assert _run(server, tmp_path, monkeypatch, split, "--config.samples_per_benchmark=aime=3", "--config.num_shards=3",
                "--config.shard=1", names=names)[0] == 2
    assert "part 1 was run with other settings" in capsys.readouterr().err


class RecordingSampler:
    """A sampler stand-in under the real `Policy`: records the SamplingConfig of each call."""

    def __init__(self):
        self.configs = []

    def generate(self, prompts, config, **kwargs):
        from ipo_jax.sampling.sampler import Generation

        self.configs.append(config)
        return [Generation(tokens=[5, 6], finish_reason="length") for _ in prompts]


def test_per_benchmark_budgets_reach_the_sampler_and_cut_offs_are_counted(tmp_path):
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
    from ipo_jax.eval.items import EvalItem
    from ipo_jax.judging.pattern import PatternJudge
    from ipo_jax.rollout import LocalPolicy

    sampler = RecordingSampler()
    policy = LocalPolicy(sampler, build_tiny_tokenizer(["What is 1 + 1?"], 300), SamplingConfig(max_new_tokens=32768), "t")
    item = EvalItem(id="m", benchmark="math500", prompt="What is 1 + 1?", kind="math", reference="2")
    rows = generate_and_score(policy, PatternJudge(), [item], samples_per_prompt=2, max_new_tokens=1234)
    rows += generate_and_score(policy, PatternJudge(), [item], samples_per_prompt=1)
    assert [c.max_new_tokens for c in sampler.configs] == [1234, 32768]
    assert policy.sampling.max_new_tokens == 32768  # the budget is per call, the policy unchanged
    assert [r["finish_reason"] for r in rows] == ["length"] * 3 and [r["sample"] for r in rows] == [0, 1, 0]


def test_a_generation_is_sampled_the_same_in_any_chunk_or_split():
    """With the real sampler at temperature 0.6, a generation depends on (seed, benchmark, item
    id, sample) only: other chunk sizes, sampler batch sizes and a split of the items give the
    same completions, so a split run merges to the single run's generations, not only in
    distribution."""
    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
    from ipo_jax.data.tokenizer import stop_token_ids
    from ipo_jax.eval.items import EvalItem
    from ipo_jax.judging.pattern import PatternJudge
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config
    from ipo_jax.rollout import LocalPolicy
    from ipo_jax.sampling import Sampler

    questions = [f"What is {i} + {i}?" for i in range(5)]
    tokenizer = build_tiny_tokenizer(questions, 300)
    model = init_decoder(preset_config("tiny-qwen3", vocab_size=len(tokenizer)), seed=3)
    sampling = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=12)
    items = [EvalItem(id=f"q{i}", benchmark="math500", prompt=q, kind="math", reference=str(2 * i))
             for i, q in enumerate(questions)]

    def texts(batch_size, chunk, subset):
        sampler = Sampler(model, eos_ids=stop_token_ids(tokenizer), batch_size=batch_size, max_prompt_length=256)
        policy = LocalPolicy(sampler, tokenizer, sampling, "tiny")
        rows = generate_and_score(policy, PatternJudge(), [items[k] for k in subset], indices=list(subset),
                                  samples_per_prompt=2, seed=5, batch=chunk)
        return {(r["id"], r["sample"]): r["completion"] for r in rows}

    single = texts(8, 64, range(5))
    assert len(set(single.values())) > 3  # sampled, not one fixed string
    split = texts(2, 3, range(0, 5, 2)) | texts(4, 2, range(1, 5, 2))
    assert split == single


def test_the_policy_mesh_section_shards_the_model(tmp_path):
    """build_policy really uses config.mesh: the parameters are spread over the mesh's devices."""
    import jax

    from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer, save_tiny_tokenizer
    from ipo_jax.eval.config import base_config
    from ipo_jax.rollout import build_policy

    if jax.device_count() < 2:
        pytest.skip("needs >= 2 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    c = base_config()
    c.model.init = "preset:tiny-qwen3"
    c.tokenizer = str(save_tiny_tokenizer(build_tiny_tokenizer(["a tiny corpus"], 300), tmp_path / "tok"))
    c.mesh.data, c.mesh.fsdp = -1, 2
    c.sampling.max_new_tokens = 64  # the paper's 32,768 would not fit the tiny model's 512-token context
    policy = build_policy(c)
    mesh = policy.sampler.mesh
    assert dict(mesh.shape) == {"data": jax.device_count() // 2, "fsdp": 2, "tensor": 1}
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(policy.sampler.state) if hasattr(leaf, "sharding")]
    split = [leaf for leaf in leaves if "fsdp" in str(getattr(leaf.sharding, "spec", ""))]
    assert split and all(leaf.sharding.mesh.shape == mesh.shape for leaf in split)
    # one fsdp shard holds half of such a parameter
    leaf = split[0]
    assert leaf.addressable_shards[0].data.size * 2 == leaf.size


BAD = [
    ("unknown-benchmark", ["--config.benchmarks=jbb=x.csv"], "unknown benchmark 'jbb'"),
    ("bad-samples", ["--config.samples_per_benchmark=aime"], "config.samples_per_benchmark is 'aime'"),
    ("zero-budget", ["--config.max_new_tokens_per_benchmark=aime=0"], "config.max_new_tokens_per_benchmark is 'aime=0'"),
    ("budget-for-absent-benchmark", ["--config.max_new_tokens_per_benchmark=gpqa=100"], "'gpqa', which is not among"),
    ("xstest-judge-choice", ["--config.xstest.judge=regex"], "config.xstest.judge is 'regex'"),
    ("shard-out-of-range", ["--config.num_shards=2", "--config.shard=2"], "config.shard is 2"),
    ("wildjailbreak-sample-negative", ["--config.wildjailbreak.sample=-1"], "config.wildjailbreak.sample is -1"),
    ("xstest-llm-without-chat", ["--config.judge.backend=pattern", f"--config.benchmarks=xstest={FIX / 'xstest'}"],
     "config.xstest.judge is 'llm' but config.judge.backend is 'pattern'"),
]


@pytest.mark.parametrize("overrides, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_settings_exit_2_with_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys, overrides, message):
    def no_model(config):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("ipo_jax.eval.harness.build_policy", no_model)
    code = main(["eval", "--config", str(CONFIGS / "eval.py"), "--config.model.init=preset:tiny-qwen3",
                 f"--config.benchmarks=aime={FIX / 'aime2025'}", "--config.judge.backend=http",
                 "--config.judge.base_url=http://127.0.0.1:9/v1", "--config.judge.model=j", f"--config.out={tmp_path}",
                 *overrides])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_benchmark_file_error_names_file_and_row_before_any_model_loads(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "gpqa_diamond.csv"
    text = (FIX / "gpqa" / "gpqa_diamond.csv").read_text()
    bad.write_text(text.replace("Incorrect Answer 3,Explanation", "Incorrect Answer 9,Explanation", 1))
    monkeypatch.setattr("ipo_jax.eval.harness.build_policy", lambda config: (_ for _ in ()).throw(AssertionError("loaded")))
    code = main(["eval", "--config", str(CONFIGS / "eval.py"), "--config.model.init=preset:tiny-qwen3",
                 f"--config.benchmarks=gpqa={bad}", "--config.judge.backend=http", "--config.judge.model=j",
                 "--config.judge.base_url=http://127.0.0.1:9/v1", f"--config.out={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "Incorrect Answer 3" in err and err.count("\n") == 1, err


def test_without_num_shards_the_split_follows_jax_processes():
    import jax
    import ml_collections

    from ipo_jax.eval.harness import EvalConfigError, resolve_shard, take_shard
    from ipo_jax.eval.items import EvalItem

    assert resolve_shard(ml_collections.ConfigDict(dict(num_shards=0, shard=-1))) == (jax.process_index(), jax.process_count())
    with pytest.raises(EvalConfigError, match="give both"):
        resolve_shard(ml_collections.ConfigDict(dict(num_shards=0, shard=1)))
    items = [EvalItem(id=str(k), benchmark="b", prompt="p", kind="benign") for k in range(7)]
    parts = [take_shard({"b": items}, i, 3)["b"] for i in range(3)]
    assert [[k for k, _ in p] for p in parts] == [[0, 3, 6], [1, 4], [2, 5]]
