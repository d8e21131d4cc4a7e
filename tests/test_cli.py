"""The command line: convert HF -> orbax -> HF, presets, the demo, and its errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ipo_jax.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_convert_hf_orbax_hf_is_bitwise(hf_dirs, tmp_path, capsys):
    src, _ = hf_dirs["llama"]
    assert main(["convert", "--from", "hf", "--to", "orbax", str(src), str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "model_config.json").is_file()
    assert main(["convert", "--from", "orbax", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert "llama" in capsys.readouterr().out
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(before) == sorted(after)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_convert_into_non_empty_dir_is_refused(hf_dirs, tmp_path, capsys):
    src, _ = hf_dirs["qwen2"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    assert main(["convert", "--from", "hf", "--to", "hf", str(src), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "x").read_text() == "keep"


@pytest.mark.parametrize("mesh", ["fsdp:4", "fsdp=x", "fsdp"])
def test_convert_mesh_argument_is_validated(hf_dirs, tmp_path, capsys, mesh):
    assert main(["convert", "--from", "hf", "--to", "orbax", str(hf_dirs["qwen2"][0]), str(tmp_path / "o"), "--mesh", mesh]) == 2
    err = capsys.readouterr().err
    assert err == f"ipo-jax convert: error: --mesh {mesh!r}: expected axis=size pairs such as 'fsdp=4,tensor=2'\n"
    assert not (tmp_path / "o").exists()


def test_presets_lists_known_shapes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-r1-distill-qwen-7b" in out and "7.616B" in out


def test_short_demo_runs_the_whole_chain(tmp_path, capsys):
    """The CI-sized demo: round trip, world, warm-up, pipeline, three methods, evaluation, HF export."""
    args = ["demo", "--config", str(CONFIGS / "demo.py"), f"--config.out={tmp_path}", "--config.short=True"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["preset"] for r in summary["roundtrip"]] == ["tiny-qwen3"]
    assert all(r["ok"] and r["max_logit_diff"] <= 1e-4 for r in summary["roundtrip"])
    assert summary["warm"]["steps"] == 80
    methods = summary["methods"]
    assert set(methods) == {"sft", "sft_star1", "dpo_full", "grpo", "ipo"}
    # a 80-step warm policy on the tiny world: IPO pairs come out; full-trajectory pairs need a safe
    # and an unsafe sample of the same prompt and may not, and then that method is skipped, said so
    trained = {name for name, m in methods.items() if "skipped" not in m}
    assert {"sft", "sft_star1", "grpo", "ipo"} <= trained and summary["pairs"]["intervention"]["pairs"] > 0
    assert all(methods[name]["steps"] == 3 for name in trained)
    assert all("no training data for it" in m["skipped"] and "is empty" in m["skipped"]
               for name, m in methods.items() if name not in trained)
    assert set(summary["eval"]) == {"base"} | trained
    for ev in summary["eval"].values():
        assert set(ev["benchmarks"]) == {"harmful", "benign", "math"}
        assert ev["benchmarks"]["harmful"]["generations"] == 4
    assert summary["export"]["matches_our_sampler"]  # transformers greedy == our sampler on the exported model
    report = (tmp_path / "report.md").read_text()
    assert "| model | harmful reasoning ↓ |" in report and "| IPO (partial DPO + SFT) |" in report
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "eval" / "ipo" / "generations.jsonl").is_file()
    # each stage ran on its stage's composed config: the methods on their loss presets and masks
    for name, preset, mask in (("sft", "sft", "reasoning"), ("ipo", "ipo", "cue")):
        train = json.loads((tmp_path / "methods" / name / "stage.json").read_text())["settings"]["train"]
        assert (train["loss"]["preset"], train["data"]["mask_from"], train["data"]["max_length"]) == (preset, mask, 256)
    ran = json.loads((tmp_path / "eval" / "ipo" / "stage.json").read_text())["settings"]["eval"]
    assert (ran["samples_per_prompt"], ran["sampling"]["max_new_tokens"], ran["sampling"]["temperature"]) == (1, 64, 0.6)
    out = capsys.readouterr().out  # the progress lines and the table, logged (ipo_jax/log.py shows them on stdout)
    assert "[6/6]" in out and "report:" in out and "| IPO (partial DPO + SFT) |" in out
    # a second run reuses every finished stage
    assert main(args) == 0
    assert capsys.readouterr().out.count("reused") >= 8


@pytest.mark.parametrize("override, message", [("--config.nope=1", "nope"), ("--config.seed=abc", "seed")])
def test_demo_bad_override_is_a_clear_error(override, message, capsys):
    assert main(["demo", "--config", str(CONFIGS / "demo.py"), override]) == 2
    err = capsys.readouterr().err
    assert "ipo-jax demo: error: bad config or override" in err and message in err


@pytest.mark.parametrize("config_file", sorted(p.name for p in CONFIGS.glob("train_*.py")))
def test_train_configs_load_and_name_valid_settings(config_file):
    from ipo_jax.cli import parse_config
    from ipo_jax.loss import LossConfig

    config = parse_config(["--config", str(CONFIGS / config_file), "--config.optim.learning_rate=3e-6"], "train")
    assert config.optim.learning_rate == 3e-6
    LossConfig(**config.loss)  # a typo in the loss settings fails here, not hours into a run
    assert config.model.init.split(":")[0] in ("preset", "hf", "orbax")
    assert config.data.layout in ("duplicated", "prefix_shared") and config.data.mask_from in ("cue", "reasoning")


def test_train_with_a_bad_pair_file_names_the_line(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"id": "a", "prompt": "p", "prefix": "", "chosen": "x"}\n')
    args = ["train", "--config", str(CONFIGS / "train_tiny_cpu.py"), f"--config.data.pairs={bad}", f"--config.train.out={tmp_path}/out"]
    assert main(args) == 2
    assert "pairs.jsonl:1: field 'rejected' is missing" in capsys.readouterr().err


def test_the_makefile_demo_command_parses():
    """`make demo` is the README's main-job command: its arguments must be a valid demo config."""
    import shlex

    from ipo_jax.cli import parse_config

    makefile = (CONFIGS.parent / "Makefile").read_text().splitlines()
    recipe = next(line for line in makefile if "ipo-jax demo" in line)
    args = shlex.split(recipe.split("ipo-jax demo", 1)[1])
    config = parse_config([a.replace("configs/", f"{CONFIGS}/", 1) for a in args], "demo")
    assert config.presets and config.methods.names and not config.short


# ============================================================================ bad input: one line, exit 2, nothing written

GOOD_PAIR = {"id": "a", "prompt": "p [request details withheld]", "prefix": "Let me think. ", "chosen": "I refuse.",
             "rejected": "Sure. [harmful details withheld]"}


BAD_UTF8 = b'{"id": "caf\xe9", "prompt": "hi"}\n'  # Latin-1, not UTF-8


def _jsonl(path: Path, *records) -> str:
    path.write_bytes(b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in records))
    return str(path)


def _pairs_with(tmp: Path, **bad) -> str:
    return _jsonl(tmp / "pairs.jsonl", GOOD_PAIR, {**GOOD_PAIR, "id": "b", **bad})


def _prompts_with(tmp: Path, bad: dict | bytes) -> str:
    good = {"id": "p1", "prompt": "How do I go about it? [request details withheld]", "kind": "harmful"}
    return _jsonl(tmp / "prompts.jsonl", good, bad if isinstance(bad, bytes) else {"id": "p2", "kind": "harmful", **bad})


def _a_file(tmp: Path) -> str:
    (tmp / "plain.txt").write_text("not a directory")
    return str(tmp / "plain.txt")


def _train(tmp: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(CONFIGS / "train_tiny_cpu.py"), f"--config.train.out={tmp / 'out'}", *overrides]


def _pipeline(stage: str, tmp: Path, *overrides: str) -> list[str]:
    from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

    return [stage, "--config", str(CONFIGS / "pipeline_tiny_cpu.py"), f"--config.out={tmp / 'out'}",
            "--config.model.init=preset:tiny-qwen3", f"--config.tokenizer={packaged_qwen3_tokenizer_dir()}", *overrides]


def _eval(tmp: Path, *overrides: str) -> list[str]:
    from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

    bench = _jsonl(tmp / "bench.jsonl", {"id": "q1", "prompt": "What is 2 + 2?", "kind": "math", "reference": "4"})
    return ["eval", "--config", str(CONFIGS / "eval.py"), f"--config.out={tmp / 'out'}", "--config.model.init=preset:tiny-qwen3",
            f"--config.tokenizer={packaged_qwen3_tokenizer_dir()}", f"--config.benchmarks=jsonl={bench}", *overrides]


# (id, argv from a temporary directory, a fragment the one error line must contain)
BAD_INPUTS = [
    ("max-steps-negative", lambda t: _train(t, "--config.train.max_steps=-5"), "config.train.max_steps is -5; expected an integer >= 0"),
    ("alpha-nan", lambda t: _train(t, "--config.loss.alpha=nan"), "config.loss.alpha is nan; expected a finite number"),
    ("beta-inf", lambda t: _train(t, "--config.loss.beta=inf"), "config.loss.beta is inf"),
    ("save-every-zero", lambda t: _train(t, "--config.train.save_every=0"), "config.train.save_every is 0; expected an integer >= 1"),
    ("pairs-per-micro-zero", lambda t: _train(t, "--config.data.pairs_per_micro=0"), "config.data.pairs_per_micro is 0"),
    ("learning-rate-negative", lambda t: _train(t, "--config.optim.learning_rate=-1e-3"), "config.optim.learning_rate is -0.001"),
    ("b2-one", lambda t: _train(t, "--config.optim.b2=1.0"), "config.optim.b2 is 1.0; expected a finite number in [0, 1)"),
    ("no-steps-at-all", lambda t: _train(t, "--config.train.max_steps=0", "--config.train.epochs=0"), "both 0"),
    ("objective-unknown", lambda t: _train(t, "--config.loss.objective=magic"), "config.loss.objective is 'magic'; expected one of"),
    ("mesh-zero", lambda t: _train(t, "--config.mesh.fsdp=0"), "config.mesh.fsdp is 0"),
    ("preset-unknown", lambda t: _train(t, "--config.model.init=preset:nope"), "expected a known preset"),
    ("init-dir-missing", lambda t: _train(t, f"--config.model.init=hf:{t / 'missing'}"), "does not exist"),
    ("init-without-kind", lambda t: _train(t, "--config.model.init=somewhere"), "'preset:<name>', 'hf:<dir>' or 'orbax:<dir>'"),
    ("tokenizer-missing", lambda t: _train(t, f"--config.tokenizer={t / 'tok'}"), "config.tokenizer is"),
    ("out-is-a-file", lambda t: _train(t, f"--config.train.out={_a_file(t)}"), "plain.txt is a file"),
    ("out-under-a-file", lambda t: _train(t, f"--config.train.out={_a_file(t)}/run"), "plain.txt is a file, so"),
    ("out-read-only", lambda t: _train(t, "--config.train.out=/proc/ipo-jax-test/run"), "expected a writable directory"),
    ("pairs-missing", lambda t: _train(t, f"--config.data.pairs={t / 'nope.jsonl'}"), "nope.jsonl not found"),
    ("pairs-a-directory", lambda t: _train(t, f"--config.data.pairs={t}"), "is a directory"),
    ("pairs-role-robot", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, prompt=[{'role': 'robot', 'content': 'hi'}])}"),
     "pairs.jsonl:2 (id 'b'): field 'prompt' message 0 has role 'robot'"),
    ("pairs-role-missing", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, prompt=[{'content': 'hi'}])}"), "has no 'role'"),
    ("pairs-prompt-strings", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, prompt=['hello'])}"),
     "pairs.jsonl:2 (id 'b'): field 'prompt' message 0 should be an object"),
    ("pairs-content-int", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, prompt=[{'role': 'user', 'content': 5}])}"),
     "content of type int"),
    ("pairs-no-user-turn", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, prompt=[{'role': 'system', 'content': 'x'}])}"),
     "has no user message"),
    ("pairs-empty-id", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, id='')}"), "pairs.jsonl:2: field 'id' should be a non-empty string"),
    ("pairs-repeated-id", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, id='a')}"), "pairs.jsonl:2: id 'a' repeats line 1"),
    ("pairs-bad-utf8", lambda t: _train(t, "--config.data.pairs=" + _jsonl(t / "pairs.jsonl", GOOD_PAIR, BAD_UTF8)),
     "pairs.jsonl:2: not valid UTF-8"),
    ("override-unknown", lambda t: _train(t, "--config.train.max_stepz=5"), "bad config or override"),
    ("override-wrong-type", lambda t: _train(t, "--config.train.max_steps=many"), "bad config or override"),
    ("config-missing", lambda t: ["train", "--config", str(t / "nope.py")], "not found (for example --config "),
    ("config-a-directory", lambda t: ["train", "--config", str(t)], "is a directory"),
    ("no-config", lambda t: ["train"], "--config is required (for example --config "),
    ("unknown-stage", lambda t: ["tran"], "invalid choice: 'tran'"),
    ("judge-backend-unknown", lambda t: _pipeline("build-pairs", t, "--config.judge.backend=magic"),
     "config.judge.backend is 'magic'; expected one of 'pattern', 'llm', 'http'"),
    ("top-p-zero", lambda t: _pipeline("sample", t, "--config.sampling.top_p=0.0"), "config.sampling.top_p is 0.0"),
    ("temperature-nan", lambda t: _pipeline("sample", t, "--config.sampling.temperature=nan"), "config.sampling.temperature is nan"),
    ("max-new-tokens-zero", lambda t: _pipeline("build-pairs", t, "--config.sampling.max_new_tokens=0"), "max_new_tokens is 0"),
    ("prompts-missing", lambda t: _pipeline("build-pairs", t, f"--config.prompts={t / 'nope.jsonl'}"), "nope.jsonl"),
    ("prompts-role-robot", lambda t: _pipeline("build-pairs", t, f"--config.prompts={_prompts_with(t, {'prompt': [{'role': 'robot', 'content': 'x'}]})}"),
     "role 'robot'"),
    ("prompts-content-int", lambda t: _pipeline("sample", t, f"--config.prompts={_prompts_with(t, {'prompt': [{'role': 'user', 'content': 5}]})}"),
     "content of type int"),
    ("prompts-bad-utf8", lambda t: _pipeline("sample", t, "--config.prompts=" + _prompts_with(t, BAD_UTF8)), "UTF-8"),
    ("pipeline-out-a-file", lambda t: _pipeline("build-pairs", t, f"--config.out={_a_file(t)}"), "plain.txt is a file"),
    ("triggers-missing", lambda t: _pipeline("build-pairs", t, f"--config.triggers_file={t / 'triggers.txt'}"), "triggers.txt does not exist"),
    ("csr-mu-above-one", lambda t: _pipeline("csr", t, "--config.csr.mu=2.0", f"--config.csr.trajectories={_a_file(t)}"), "config.csr.mu is 2.0"),
    ("csr-no-trajectories", lambda t: _pipeline("csr", t), "config.csr.trajectories is ''"),
    ("eval-samples-zero", lambda t: _eval(t, "--config.samples_per_prompt=0"), "config.samples_per_prompt is 0"),
    ("eval-no-benchmarks", lambda t: _eval(t, "--config.benchmarks="), "config.benchmarks is ''"),
    ("eval-train-prompts-missing", lambda t: _eval(t, f"--config.train_prompts={t / 'seen.jsonl'}"), "seen.jsonl does not exist"),
    ("eval-out-read-only", lambda t: _eval(t, "--config.out=/proc/ipo-jax-test"), "expected a writable directory"),
    ("demo-seed-negative", lambda t: ["demo", "--config", str(CONFIGS / "demo.py"), "--config.seed=-1", f"--config.out={t / 'out'}"],
     "config.seed is -1"),
    ("convert-mesh-not-a-number", lambda t: ["convert", "--from", "hf", "--to", "orbax", _a_dir(t), str(t / "out"), "--mesh", "fsdp=x"],
     "--mesh 'fsdp=x': expected axis=size"),
    ("convert-source-missing", lambda t: ["convert", "--from", "hf", "--to", "orbax", str(t / "nope"), str(t / "out")], "does not exist"),
    ("convert-source-a-file", lambda t: ["convert", "--from", "hf", "--to", "orbax", _a_file(t), str(t / "out")], "is a file"),
    ("convert-source-not-a-model", lambda t: ["convert", "--from", "hf", "--to", "orbax", _a_dir(t), str(t / "out")], "config.json"),
    ("convert-output-read-only", lambda t: ["convert", "--from", "hf", "--to", "orbax", _a_dir(t), "/proc/ipo-jax-test"],
     "expected a writable directory"),
    ("convert-truncated-safetensors", lambda t: ["convert", "--from", "hf", "--to", "orbax", _truncated_hf_dir(t), str(t / "out")],
     "model.safetensors: not a readable safetensors file"),
    ("presets-extra-argument", lambda t: ["presets", "--all"], "unrecognized arguments: --all"),
    # hf-integrity cases: damaged weights found by their SHA-256; convert / serve targets checked before the load
    ("convert-hf-flipped-bytes", lambda t: ["convert", "--from", "hf", "--to", "orbax", _damaged_hf_dir(t), str(t / "out")],
     "model.safetensors: sha256 is "),
    ("convert-hf-nan-in-cache-blob", lambda t: ["convert", "--from", "hf", "--to", "hf", _nan_hf_cache_snapshot(t), str(t / "out")],
     "(from the Hugging Face cache blob name"),
    ("convert-verify-missing", lambda t: ["convert", "--from", "hf", "--to", "orbax", "--verify", str(t / "SUMS"), _a_dir(t),
                                          str(t / "out")], "SUMS does not exist"),
    ("convert-verify-malformed", lambda t: ["convert", "--from", "hf", "--to", "orbax", "--verify", _a_file(t), _a_dir(t),
                                            str(t / "out")], "plain.txt:1: expected '<64 hex digits>  <file name>'"),
    ("convert-into-symlink-loop", lambda t: ["convert", "--from", "hf", "--to", "hf", _tiny_hf_dir(t), _symlink_loop(t)],
     "a symbolic link loop"),
    ("convert-into-non-empty", lambda t: ["convert", "--from", "hf", "--to", "orbax", _tiny_hf_dir(t), _non_empty_dir(t)],
     "exists and is not empty; pass --overwrite"),
    ("serve-port-busy", lambda t: _serve("--port", str(_busy_port())), "Address already in use"),
    ("serve-host-unresolvable", lambda t: _serve("--host", "nonexistent.invalid", "--port", "0"), "cannot resolve it"),
    ("serve-host-not-local", lambda t: _serve("--host", "192.0.2.1", "--port", "0"), "not an address of this machine"),
    ("serve-port-out-of-range", lambda t: _serve("--port", "70000"), "--port 70000: expected 0..65535"),
    # validation cases: plan runs train's checks; integers in range; token ids; strict JSON and CSV; csr's whole file
    # checked before any output (helpers below, "validation helpers")
    ("plan-max-length-negative", lambda t: _plan("--config.data.max_length=-5", "--config.data.buckets=()"),
     "config.data.max_length is -5; expected an integer from 2 to 1,048,576"),
    ("plan-learning-rate-nan", lambda t: _plan("--config.optim.learning_rate=nan"),
     "config.optim.learning_rate is nan; expected a finite number"),
    ("plan-pairs-per-micro-zero", lambda t: _plan("--config.data.pairs_per_micro=0"),
     "config.data.pairs_per_micro is 0; expected an integer >= 1"),
    ("plan-rows-longer-than-the-context", lambda t: _plan("--config.data.max_length=1024", "--config.data.buckets=(1024,)"),
     "the largest of data.buckets is 1024 tokens, longer than the context of preset:tiny-qwen3 (512 tokens"),
    ("train-max-steps-1e23", lambda t: _train(t, "--config.train.max_steps=100000000000000000000000"),
     "config.train.max_steps is 100000000000000000000000; expected integers of at most 2**31 - 1"),
    ("train-pair-token-id-1e30", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t, prefix_ids=[10**30], chosen_ids=[5], rejected_ids=[6])}"),
     "pairs.jsonl:2 (id 'b'): field 'prefix_ids' item 0 is token id 1000000000000000000000000000000, outside 0..2147483647"),
    ("train-pair-nan-literal", lambda t: _train(t, "--config.data.pairs=" + _jsonl(t / "pairs.jsonl", GOOD_PAIR, b'{"id": "b", "score": NaN}')),
     "pairs.jsonl:2: not valid JSON here (NaN is not a JSON number; expected a finite number)"),
    ("train-pair-float-overflow", lambda t: _train(t, "--config.data.pairs=" + _jsonl(t / "pairs.jsonl", GOOD_PAIR, b'{"id": "b", "h": 1e999}')),
     "pairs.jsonl:2: not valid JSON here (1e999 is too large for a number"),
    ("train-pair-nested-too-deeply", lambda t: _train(t, "--config.data.pairs=" + _jsonl(t / "pairs.jsonl", GOOD_PAIR, _DEEP_JSON)),
     "pairs.jsonl:2: not valid JSON here (nested too deeply)"),
    ("train-mixing-weight-1e308", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t)}:1e308"),
     "pairs.jsonl puts 1e+308 x its 2 pairs in every epoch; expected a weight from 0.25 to 5e+07"),
    ("train-mixing-weight-selects-none", lambda t: _train(t, f"--config.data.pairs={_pairs_with(t)}:1e-9"),
     "puts none of its 2 pairs in every epoch"),
    ("sample-max-new-tokens-1e12", lambda t: _pipeline("sample", t, "--config.sampling.max_new_tokens=1000000000000"),
     "config.sampling.max_new_tokens is 1000000000000; expected integers of at most 2**31 - 1 (2,147,483,647)"),
    ("sample-max-new-tokens-1e9", lambda t: _pipeline("sample", t, "--config.sampling.max_new_tokens=1000000000"),
     "config.sampling.max_new_tokens is 1000000000; expected an integer from 1 to 1,048,576"),
    ("sample-max-new-tokens-the-whole-context", lambda t: _pipeline("sample", t, "--config.sampling.max_new_tokens=512"),
     "config.sampling.max_new_tokens is 512, but the context of preset:tiny-qwen3 is 512 positions"),
    ("sample-sampler-batch-beyond-host-memory", lambda t: _pipeline("sample", t, "--config.sampler.batch_size=100000000"),
     "the sampler's KV cache needs"),
    ("csr-completion-id-out-of-vocabulary", lambda t: _csr(t, _trajectories_with(t, completion_ids=[10, 20, 999999999])),
     "trajectories.jsonl:2 (id 't2'): field 'completion_ids' item 2 is token id 999999999, outside the tokenizer's"),
    ("csr-completion-ids-not-the-reasoning", lambda t: _csr(t, _trajectories_with(t, completion_ids=[10, 20, 30])),
     "trajectories.jsonl:2 (id 't2'): field 'completion_ids' does not decode to the record's reasoning"),
    ("csr-trajectory-id-not-a-file-name", lambda t: _csr(t, _trajectories_with(t, id="../t2")),
     "trajectories.jsonl:2 (id '../t2'): field 'id' is not a safe file name"),
    ("csr-no-trajectory-of-the-kind", lambda t: _csr(t, _trajectories_with(t), "--config.csr.kind=benign"),
     "trajectories.jsonl: no trajectory of kind 'benign' (config.csr.kind) among its 2 records"),
    ("eval-csv-quote-left-open", lambda t: _eval(t, f"--config.benchmarks=strongreject={_strongreject_csv(t, _QUOTE_LEFT_OPEN)}"),
     "strongreject_dataset.csv: line 4: not valid CSV (unexpected end of data) (the row starts on line 2"),
    ("eval-csv-quote-swallows-rows", lambda t: _eval(t, f"--config.benchmarks=strongreject={_strongreject_csv(t, _QUOTE_CLOSED_LATE)}"),
     "strongreject_dataset.csv: line 2: a quoted field (column 'forbidden_prompt') opened on this line runs over 3 lines"),
    ("eval-csv-row-short", lambda t: _eval(t, f"--config.benchmarks=strongreject={_strongreject_csv(t, _ROW_SHORT)}"),
     "strongreject_dataset.csv: row 1 (line 2): 2 fields but the header has 3 columns"),
    ("eval-jsonl-reference-nan", lambda t: _eval(t, "--config.benchmarks=jsonl=" + _jsonl(t / "nan.jsonl", _NAN_ITEM)),
     "nan.jsonl: line 1: not valid JSON here (NaN is not a JSON number"),
    ("eval-train-prompts-infinity", lambda t: _eval(t, "--config.train_prompts=" + _jsonl(t / "seen.jsonl", b'{"prompt": "x", "w": Infinity}')),
     "seen.jsonl:1: not valid JSON here (Infinity is not a JSON number"),
    # train-hardening cases: the pairs read, tokenised, fitted and sized before train.out is written
    # (ipo_jax/train/data.py); the model's split over the mesh checked on its shapes before the load
    ("train-pair-id-outside-the-tokenizer", lambda t: _train(t, f"--config.tokenizer={_qwen3_tokenizer()}", "--config.data.pairs="
                                                         + _pairs_with(t, prefix_ids=[9], chosen_ids=[5, 999999999], rejected_ids=[6])),
     "pairs.jsonl:2 (id 'b'): field 'chosen_ids' holds token id 999999999, outside the tokenizer's"),
    ("train-no-pair-fits-max-length", lambda t: _train(t, "--config.data.max_length=16"),
     "16 of 16 pairs (100.0%) are longer than data.max_length 16 and would be dropped"),
    ("train-max-length-beyond-the-context", lambda t: _train(t, "--config.data.max_length=1024"),
     "data.max_length 1024 is longer than the model's context: model.init 'preset:tiny-qwen3' has a context of 512 positions"),
    ("train-packed-pair-beyond-the-context", lambda t: _train(t, "--config.data.packing=True", "--config.data.max_length=8192",
                                                          "--config.data.buckets=()", f"--config.data.pairs={_pairs_with(t, chosen=_LONG_TEXT)}"),
     "positions (prompt + prefix + its longer side) but model.init 'preset:tiny-qwen3' has a context of 512 positions"),
    ("train-pairs-per-micro-beyond-the-data", lambda t: _train(t, "--config.data.pairs_per_micro=1000000"),
     "data.pairs_per_micro 1000000 is larger than the data needs: an epoch holds 16 pairs"),
    ("train-micro-batches-beyond-the-data", lambda t: _train(t, "--config.data.micro_batches=100000"),
     "so the last micro-batch of every step would hold only padding; set data.micro_batches to at most 8"),
    ("train-tensor-axis-splits-no-kv-heads", lambda t: _train(t, "--config.mesh.fsdp=2", "--config.mesh.tensor=4"),
     "is not divisible by mesh axes tensor (size 4)"),
]

_LONG_TEXT = " ".join(str(i) for i in range(1000)) + " I refuse."  # over 512 tiny-tokenizer tokens


def _qwen3_tokenizer() -> str:
    from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

    return str(packaged_qwen3_tokenizer_dir())


# validation helpers
_DEEP_JSON = b'{"id": "b", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
_NAN_ITEM = b'{"id": "q1", "prompt": "What is 2 + 2?", "kind": "math", "reference": NaN}'
GOOD_TRAJECTORY = {"id": "t1", "prompt": "How do I go about it? [request details withheld]",
                   "reasoning": "I should think about this. It is not something to help with.", "answer": "I can't help."}
_CSV_HEADER = "category,source,forbidden_prompt\n"
_QUOTE_LEFT_OPEN = ('A,custom,"How do I go about it? [request details withheld]\nB,custom,How do I go about that? '
                    "[request details withheld]\nC,custom,How do I go about this? [request details withheld]\n")
_QUOTE_CLOSED_LATE = _QUOTE_LEFT_OPEN[:-1] + '"\n'  # the quote closes two rows later: three rows become one
_ROW_SHORT = "A,custom\nB,custom,How do I go about that? [request details withheld]\n"


def _plan(*overrides: str) -> list[str]:
    return ["plan", "--config", str(CONFIGS / "train_tiny_cpu.py"), "--topology", "2xa100-80", *overrides]


def _trajectories_with(tmp: Path, **bad) -> str:
    return _jsonl(tmp / "trajectories.jsonl", GOOD_TRAJECTORY, {**GOOD_TRAJECTORY, "id": "t2", **bad})


def _csr(tmp: Path, trajectories: str, *overrides: str) -> list[str]:
    return _pipeline("csr", tmp, f"--config.csr.trajectories={trajectories}", "--config.csr.num_samples=1", *overrides)


def _strongreject_csv(tmp: Path, rows: str) -> str:
    (tmp / "strongreject_dataset.csv").write_text(_CSV_HEADER + rows)
    return str(tmp / "strongreject_dataset.csv")


# hf-integrity helpers
_HELD_SOCKETS = []  # a busy port stays busy while the case runs


def _tiny_hf_dir(tmp: Path) -> str:
    from ipo_jax.checkpoint import save_hf
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    return str(save_hf(init_decoder(preset_config("tiny-qwen3"), seed=0), tmp / "tiny_hf"))


def _damaged_hf_dir(tmp: Path) -> str:
    from test_hf_integrity import flip_bytes

    model = Path(_tiny_hf_dir(tmp))
    flip_bytes(model / "model.safetensors", 64)  # its own SHA256SUMS (written by the export) no longer matches
    return str(model)


def _nan_hf_cache_snapshot(tmp: Path) -> str:
    from test_hf_integrity import as_hf_cache, write_nans

    snapshot = as_hf_cache(Path(_tiny_hf_dir(tmp)), tmp / "hub")
    write_nans(snapshot / "model.safetensors")
    return str(snapshot)


def _symlink_loop(tmp: Path) -> str:
    (tmp / "loop").symlink_to("loop")
    return str(tmp / "loop")


def _non_empty_dir(tmp: Path) -> str:
    (tmp / "busy").mkdir()
    (tmp / "busy" / "keep.txt").write_text("keep")
    return str(tmp / "busy")


def _busy_port() -> int:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    _HELD_SOCKETS.append(sock)
    return sock.getsockname()[1]


def _serve(*args: str) -> list[str]:
    from ipo_jax.data.tokenizer import packaged_qwen3_tokenizer_dir

    return ["serve", "--model", "preset:tiny-qwen3", "--tokenizer", str(packaged_qwen3_tokenizer_dir()), *args]


def _truncated_hf_dir(tmp: Path) -> str:
    from ipo_jax.checkpoint import save_hf
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    save_hf(init_decoder(preset_config("tiny-qwen3"), seed=0), tmp / "hf")
    weights = tmp / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy cut short
    return str(tmp / "hf")


def _a_dir(tmp: Path) -> str:
    (tmp / "empty_model").mkdir(exist_ok=True)
    return str(tmp / "empty_model")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("make_argv, fragment", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, make_argv, fragment):
    argv = make_argv(tmp_path)
    before = _tree(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ipo-jax") and ": error: " in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert _tree(tmp_path) == before  # no output directory, no config.json: the corrected rerun starts clean


def test_suggested_config_files_exist(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # from any directory, the named file is one that exists from there
    for stage in ("train", "sample", "build-pairs", "csr", "eval", "demo"):
        assert main([stage]) == 2
        err = capsys.readouterr().err
        suggested = err.split("--config ")[-1].rstrip(")\n")
        assert Path(suggested).is_file(), err


@pytest.mark.parametrize("stage", ["train", "sample", "build-pairs", "csr", "eval", "demo"])
def test_stage_help_lists_every_field_with_its_default_and_a_description(stage, capsys):
    from ipo_jax.cli import _base_config, _flatten

    assert main([stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ipo-jax {stage} --config FILE")
    rows = {line.split(" = ", 1)[0].strip(): line for line in out.splitlines() if line.startswith("  ") and " = " in line}
    for name, value in _flatten(_base_config(stage)):
        assert name in rows, name
        default, description = rows[name].split(" = ", 1)[1].split("  ", 1) if "  " in rows[name].split(" = ", 1)[1] else (rows[name], "")
        assert default.strip() == repr(value), (name, rows[name])
        assert description.strip(), f"{name} has no description"


def test_stage_help_describes_fields_from_the_config_comments(capsys):
    assert main(["train", "--help", "--config", str(CONFIGS / "train_tiny_cpu.py")]) == 0
    out = capsys.readouterr().out
    assert "  data.max_length = 256" in out  # the file's default
    row = next(line for line in out.splitlines() if line.startswith("  train.max_consecutive_skips"))
    assert "stop after this many non-finite steps in a row" in row and "an integer >= 1" in row
    # the loss / optim sections are the dataclasses' fields, described by their own comments
    row = next(line for line in out.splitlines() if line.startswith("  loss.alpha"))
    assert "weight of the NLL on the chosen suffix" in row
    row = next(line for line in out.splitlines() if line.startswith("  optim.moment_dtype"))
    assert "Adam's moments" in row and "'bfloat16'" in row


def test_an_unexpected_error_is_one_line_with_a_hint_and_a_traceback_with_v(monkeypatch, capsys):
    from ipo_jax import cli

    def boom(args):
        raise RuntimeError("the presets table is on fire")

    monkeypatch.setattr(cli, "cmd_presets", boom)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert err == "ipo-jax presets: error: RuntimeError: the presets table is on fire (unexpected; run with -v for the traceback)\n"
    with pytest.raises(RuntimeError, match="on fire"):  # -v: the traceback (raised through)
        main(["-v", "presets"])


@pytest.mark.parametrize("error, message", [
    (OSError(28, "No space left on device"), "cannot write {out}: No space left on device"),
    (OSError(28, "No space left on device", "/data/run/checkpoints/5"), "cannot write /data/run/checkpoints/5: No space left on device"),
    (OSError(30, "Read-only file system", "/data/run/config.json"), "cannot write /data/run/config.json: Read-only file system"),
    (PermissionError(13, "Permission denied", "/data/run/metrics.jsonl"), "cannot access /data/run/metrics.jsonl: Permission denied"),
    (IsADirectoryError(21, "Is a directory", "/data/run/metrics.jsonl"), "/data/run/metrics.jsonl: Is a directory"),
], ids=["disk-full", "disk-full-with-path", "read-only", "permission", "wrong-kind"])
def test_file_system_errors_while_training_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch, error, message):
    """A file-system error after the start (simulated where the run first writes to train.out)."""
    from ipo_jax.train import metrics

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(metrics, "drop_partial_last_line", fail)
    out = tmp_path / "out"
    assert main(_train(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err == f"ipo-jax train: error: {message.format(out=out)}\n"


def test_a_closed_output_pipe_is_not_an_error():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "ipo_jax.cli", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`; `| head -1` at worst)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


@pytest.mark.parametrize("stage, target", [("build-pairs", "ipo_jax.pipeline.run.run_build_pairs"),
                                           ("sample", "ipo_jax.pipeline.run.run_sample"),
                                           ("eval", "ipo_jax.eval.harness.run_eval")])
def test_a_full_disk_in_any_stage_is_one_line_naming_its_output(tmp_path, capsys, monkeypatch, stage, target):
    import errno
    import os

    def fail(config):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() reports it: no file name

    monkeypatch.setattr(target, fail)
    argv = _eval(tmp_path) if stage == "eval" else _pipeline(stage, tmp_path, f"--config.prompts={CONFIGS / 'sample_prompts.jsonl'}")
    assert main(argv) == 2
    assert capsys.readouterr().err == f"ipo-jax {stage}: error: cannot write {tmp_path / 'out'}: No space left on device\n"


def test_a_full_disk_during_convert_names_the_output(hf_dirs, tmp_path, capsys, monkeypatch):
    import errno
    import os

    from ipo_jax import checkpoint

    def fail(model, out_dir, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir))

    monkeypatch.setattr(checkpoint, "save_orbax", fail)
    assert main(["convert", "--from", "hf", "--to", "orbax", str(hf_dirs["qwen2"][0]), str(tmp_path / "o")]) == 2
    *before, last = capsys.readouterr().err.splitlines()
    assert last == f"ipo-jax convert: error: cannot write {tmp_path / 'o'}: No space left on device"
    assert all(line.startswith("warning: ") for line in before)  # the fixture's weights are not verified: one warning
