"""The paper's two-stage recipe: stage-2 configs, and a reference model other than the initial
policy (`reference.init`: the base model while the policy starts from stage 1's result)."""

import json
from pathlib import Path

import pytest

from ipo_jax.checkpoint import save_orbax
from ipo_jax.checkpoint.init import load_model
from ipo_jax.cli import main, parse_config
from ipo_jax.train.loop import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("run", ["r1_distill_llama_8b", "r1_distill_qwen_7b", "qwen3_8b"])
def test_stage2_configs_continue_stage1_against_the_base_model(run):
    stage1 = parse_config(["--config", str(CONFIGS / f"train_{run}.py")], "train")
    stage2 = parse_config(["--config", str(CONFIGS / f"train_{run}_stage2.py")], "train")
    assert stage2.model.init == f"orbax:{stage1.train.out}/final"  # the policy continues stage 1
    assert stage2.reference.init == stage1.model.init  # anchored on the base model
    assert stage2.tokenizer == f"{stage1.train.out}/tokenizer"
    files = stage2.data.pairs.split(",")
    assert files[0] == stage1.data.pairs and "overrefusal" in files[1]
    assert stage2.train.out != stage1.train.out
    # the same memory settings as stage 1, so the same `ipo-jax plan` answer holds
    assert (stage2.model.to_dict(), stage2.data.max_length) == (
        {**stage1.model.to_dict(), "init": stage2.model.init}, stage1.data.max_length)


def _tiny_run(out: Path, *overrides: str):
    return parse_config([
        "--config", str(CONFIGS / "train_tiny_cpu.py"),
        "--config.train.max_steps=1", "--config.optim.warmup_steps=0", f"--config.train.out={out}",
        f"--config.reference.cache_dir={out}-cache", *overrides,
    ], "train")


def _first_step(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A tiny-qwen3 of another seed, as an ipo-jax model directory (a stand-in for 'the base model')."""
    root = tmp_path_factory.mktemp("reference")
    vocab = parse_config(["--config", str(CONFIGS / "train_tiny_cpu.py")], "train").tiny_tokenizer_vocab
    save_orbax(load_model("preset:tiny-qwen3", seed=5, vocab_needed=vocab), root / "other")
    return root


@pytest.mark.parametrize("mode", ["precomputed", "on_the_fly"])
def test_reference_init_is_the_model_the_rewards_are_measured_against(mode, other_model):
    same = other_model / f"same-{mode}"
    assert train(_tiny_run(same, f"--config.reference.mode={mode}")) == 0
    other = other_model / f"other-{mode}"
    assert train(_tiny_run(other, f"--config.reference.mode={mode}",
                           f"--config.reference.init=orbax:{other_model / 'other'}")) == 0
    # before the first update the policy is its initial weights: rewards against itself are 0
    assert _first_step(same)["reward_chosen"] == 0.0 and _first_step(same)["reward_rejected"] == 0.0
    first = _first_step(other)
    assert abs(first["reward_chosen"]) > 1e-3 and abs(first["reward_rejected"]) > 1e-3
    # the policy side is the same model in both runs; only the reference differs
    assert first["logp_chosen"] == pytest.approx(_first_step(same)["logp_chosen"], abs=1e-4)


def test_a_reference_of_another_shape_is_a_clear_error(tmp_path, capsys):
    vocab = parse_config(["--config", str(CONFIGS / "train_tiny_cpu.py")], "train").tiny_tokenizer_vocab
    save_orbax(load_model("preset:tiny-llama", vocab_needed=vocab), tmp_path / "llama")
    code = main(["train", "--config", str(CONFIGS / "train_tiny_cpu.py"), f"--config.train.out={tmp_path / 'out'}",
                 f"--config.reference.init=orbax:{tmp_path / 'llama'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "reference.init" in err and "architecture" in err


def test_a_run_started_before_a_setting_existed_still_resumes(tmp_path):
    """Settings added later (reference.init, data.packing, loss.nll_norm) are read as their defaults
    in an older run's config.json, so upgrading does not lock a run out; other changes still refuse."""
    from ipo_jax.train.errors import TrainingError
    from ipo_jax.train.run_dir import check_output_dir

    config = _tiny_run(tmp_path / "run")
    old = json.loads(config.to_json_best_effort())
    del old["reference"]["init"], old["data"]["packing"], old["loss"]["nll_norm"]
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(old))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # progress a restart would lose
    check_output_dir(out, config)  # resumable: no error
    changed = _tiny_run(out, "--config.loss.nll_norm=sum")
    with pytest.raises(TrainingError, match="loss: was"):
        check_output_dir(out, changed)
