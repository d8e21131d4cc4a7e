"""The grpo stage end to end on CPU (ipo_jax/grpo/run.py): the toy rule task is learned, a resumed
run redoes the same steps, bad settings are refused before anything is written, and the HTTP
backend's policy export."""

import json
import shutil

import jax
import pytest
from flax import nnx

from ipo_jax.checkpoint import load_orbax
from ipo_jax.cli import parse_config
from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
from ipo_jax.grpo.config import base_config, field_help
from ipo_jax.grpo.rollout import SYNC_DIR, HttpRollouts
from ipo_jax.grpo.run import run_grpo
from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.train.errors import TrainingError
from ipo_jax.validation import SettingsError

TOY = ["--config", "configs/grpo_toy_rule.py"]
TIMING = {"seconds", "rollout_seconds", "update_seconds", "tokens_per_second"}


def _config(out, *overrides):
    config = parse_config([*TOY, *overrides], "grpo")
    config.train.out = str(out)
    return config


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo") / "toy"
    assert run_grpo(_config(out), devices=jax.devices()[:1]) == 0
    return out


def test_the_toy_rule_task_is_learned(toy_run):
    rows = _rows(toy_run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.25 and last > 3 * first, (first, last)
    row = rows[-1]
    for key in ("loss", "ratio", "clip_region", "entropy", "grad_norm", "reward/rule", "completion_length",
                "completions_cut", "tokens", "rollout_seconds", "update_seconds"):
        assert key in row, key
    assert row["ratio"] == pytest.approx(1.0) and row["clip_region"] == 0  # on-policy (num_iterations 1)
    assert (toy_run / "final" / "params").is_dir() and sorted(p.name for p in (toy_run / "checkpoints").iterdir()) == [
        "10", "20", "30"]
    rollouts = (toy_run / "rollouts.jsonl").read_text().splitlines()
    assert len(rollouts) == 30 * 4 * 8 and {"step", "id", "text", "reward", "advantage", "rule"} <= set(
        json.loads(rollouts[0]))


def test_a_resumed_run_redoes_the_same_steps(toy_run, tmp_path):
    """Cut back to step 20 as a kill after its checkpoint would leave it; the rerun's steps 21-30
    equal the uninterrupted run's (rollouts, rewards, losses), timings aside."""
    out = tmp_path / "resumed"
    shutil.copytree(toy_run, out)
    shutil.rmtree(out / "checkpoints" / "30")
    shutil.rmtree(out / "final")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:20]))
    assert run_grpo(_config(out), devices=jax.devices()[:1]) == 0
    before, after = _rows(toy_run), _rows(out)
    assert [r["step"] for r in after] == list(range(1, 31))
    for a, b in zip(before[20:], after[20:]):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


@pytest.mark.parametrize("overrides, error, message", [
    (["--config.grpo.num_generations=1"], SettingsError, "config.grpo.num_generations is 1"),
    (["--config.grpo.loss_type=ppo"], SettingsError, "config.grpo.loss_type is 'ppo'"),
    (["--config.reward.rule_pattern=("], SettingsError, "config.reward.rule_pattern is '('"),
    (["--config.policy.backend=http"], SettingsError, "config.policy.base_url is ''"),
    (["--config.grpo.prompts_per_step=13"], TrainingError, "12 prompts, fewer than grpo.prompts_per_step (13)"),
    (["--config.reward.rule_token_ids=()"], ValueError, "reward.kind 'rule' needs reward.rule_pattern"),
    (["--config.sampler.max_prompt_length=4"], TrainingError, "every prompt is longer than sampler.max_prompt_length"),
    (["--config.reward.kind=judge", "--config.prompts=configs/sample_prompts.jsonl",
      "--config.judge.patterns_file=", "--config.grpo.micro_batches=64"], TrainingError, "grpo.micro_batches 64"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, overrides, error, message):
    out = tmp_path / "run"
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_grpo(_config(out, *overrides), devices=jax.devices()[:1])
    assert not out.exists()


def test_several_processes_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(TrainingError, match="ipo-jax grpo runs in one JAX process; this is process 0 of 2"):
        run_grpo(_config(out), devices=jax.devices()[:1])
    assert not out.exists()


def test_every_setting_has_help():
    config, texts = base_config(), field_help()
    names = [f"{name}.{field}" for name, section in config.items() if hasattr(section, "items") and name != "optim"
             for field in section] + [name for name, value in config.items() if not hasattr(value, "items")]
    assert len(names) > 60 and not [n for n in names if not texts.get(n)]


def test_http_backend_exports_the_policy_for_its_server(tmp_path):
    build_tiny_tokenizer(["hello world"], vocab_size=263).save_pretrained(tmp_path / "tok")
    config = _config(tmp_path / "run", "--config.policy.backend=http", "--config.policy.base_url=http://127.0.0.1:9/v1",
                     "--config.policy.model=policy", "--config.policy.sync_every=2", f"--config.tokenizer={tmp_path / 'tok'}")
    graphdef, params = nnx.split(init_decoder(preset_config("tiny-qwen3"), seed=1), nnx.Param)
    rollouts = HttpRollouts(graphdef, config, tmp_path)  # the HTTP policy itself: tests/test_http_policy.py
    rollouts.refresh(params, 1)
    assert not (tmp_path / SYNC_DIR).exists()  # not a sync step
    rollouts.refresh(params, 2)
    exported = load_orbax(tmp_path / SYNC_DIR)
    assert jax.numpy.array_equal(exported.embed[...], params["embed"][...])
