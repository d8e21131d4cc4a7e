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
    assert set(methods) == {"sft", "dpo_full", "ipo"}
    # a 80-step warm policy on the tiny world: IPO pairs come out; full-trajectory pairs need a safe
    # and an unsafe sample of the same prompt and may not, and then that method is skipped, said so
    trained = {name for name, m in methods.items() if "skipped" not in m}
    assert {"sft", "ipo"} <= trained and summary["pairs"]["intervention"]["pairs"] > 0
    assert all(methods[name]["steps"] == 3 for name in trained)
    assert all("no pairs" in m["skipped"] for name, m in methods.items() if name not in trained)
    assert set(summary["eval"]) == {"base"} | trained
    for ev in summary["eval"].values():
        assert set(ev["benchmarks"]) == {"harmful", "benign", "math"}
        assert ev["benchmarks"]["harmful"]["generations"] == 4
    assert summary["export"]["matches_our_sampler"]  # transformers greedy == our sampler on the exported model
    report = (tmp_path / "report.md").read_text()
    assert "| model | harmful reasoning ↓ |" in report and "| IPO (partial DPO + SFT) |" in report
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "eval" / "ipo" / "generations.jsonl").is_file()
    out = capsys.readouterr().out
    assert "[6/6]" in out and "report:" in out
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
