"""The demo's stage configs (ipo_jax/demo.py): each is its stage's base_config() with the demo's
changes from configs/demo.py and the run's paths and seeds, nothing else; each method names its
loss preset and takes the preset's mask. Nothing is trained here (the whole chain: tests/test_cli.py)."""

from pathlib import Path

import pytest
from conftest import flat_config

from ipo_jax import demo
from ipo_jax.cli import parse_config
from ipo_jax.eval.config import base_config as eval_base
from ipo_jax.loss import LossConfig
from ipo_jax.loss.presets import PRESETS
from ipo_jax.pipeline.config import base_config as pipeline_base
from ipo_jax.train.config import base_config as train_base

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.py")
WORLD = dict(tokenizer="/w/tokenizer", files=dict(warmup="/w/warmup.jsonl", train_prompts="/w/train_prompts.jsonl"))
# what every training run sets on top of the demo's `training` changes: its run, not a default
RUN_FIELDS = {"model.init", "tokenizer", "data.pairs", "data.mask_from", "data.pairs_per_micro", "data.seed",
              "loss.preset", "reference.cache_dir", "optim.learning_rate", "optim.warmup_steps", "train.out",
              "train.epochs", "train.max_steps", "train.save_every", "train.seed"}


def _changed(config, base) -> dict:
    composed, defaults = flat_config(config), flat_config(base)
    assert composed.keys() == defaults.keys()  # no field added or lost
    return {k: v for k, v in composed.items() if v != defaults[k]}


def _config(*overrides):
    return parse_config(["--config", CONFIG, *overrides], "demo")


@pytest.mark.parametrize("name", sorted(demo.METHODS))
def test_each_method_is_the_train_config_with_its_preset_and_the_demos_changes(name):
    config = _config()
    method = demo._method_config(config, WORLD, name, "/p/pairs.jsonl", "orbax:/warm/final", Path("/out/m"))
    preset = demo.METHODS[name].preset
    assert method.loss.preset == preset and method.data.mask_from == PRESETS[preset].mask_from
    assert method.loss.objective is None and method.loss.alpha is None  # the preset's own terms
    assert LossConfig(**method.loss).terms == PRESETS[preset].terms
    assert LossConfig(**method.loss).mask_problem(method.data.mask_from) is None
    changed = _changed(method, train_base())
    demo_changes = {"data.max_length": 256, "data.buckets": (128, 256), "train.logprob_chunk": 64}
    assert {k: changed[k] for k in demo_changes} == demo_changes
    assert set(changed) - set(demo_changes) <= RUN_FIELDS, set(changed) - set(demo_changes) - RUN_FIELDS
    assert (method.train.max_steps, method.optim.learning_rate, method.data.pairs_per_micro) == (50, 3e-4, 16)


def test_the_warm_up_is_sft_with_its_own_steps_rate_and_adam_b2():
    warm = demo._warm_up_config(_config("--config.warmup.steps=7"), WORLD, Path("/out/warm"))
    assert warm.loss.preset == "sft" and warm.data.mask_from == "reasoning"
    assert (warm.train.max_steps, warm.optim.learning_rate, warm.optim.b2) == (7, 3e-3, 0.99)
    assert warm.model.init == "preset:demo-qwen3" and warm.data.pairs == "/w/warmup.jsonl"
    assert set(_changed(warm, train_base())) <= RUN_FIELDS | {"data.max_length", "data.buckets", "train.logprob_chunk",
                                                               "optim.b2"}


def test_the_pipeline_and_eval_decode_alike_from_their_base_configs():
    config = _config("--config.sampling.max_new_tokens=99", "--config.seed=5")
    pipeline = demo._pipeline_config(config, WORLD, "orbax:/warm/final", Path("/out/pairs/intervention"))
    evaluation = demo._eval_config(config, WORLD, "orbax:/warm/final", "base", Path("/out/eval/base"), "a.jsonl")
    for section in ("policy", "model", "sampling", "sampler", "mesh"):
        assert flat_config(pipeline[section]) == flat_config(evaluation[section]), section
    assert pipeline.sampling.max_new_tokens == 99 and pipeline.sampler.batch_size == 32
    assert pipeline.sampling.temperature == pipeline_base().sampling.temperature  # a default the demo keeps
    assert set(_changed(pipeline, pipeline_base())) == {
        "model.init", "tokenizer", "prompts", "out", "sampling.max_new_tokens", "sampler.batch_size",
        "sampler.max_prompt_length", "intervention.chunk_prompts", "intervention.seed"}
    assert (pipeline.intervention.seed, evaluation.seed) == (5, 5 + demo.EVAL_SEED_OFFSET)
    assert set(_changed(evaluation, eval_base())) == {
        "model.init", "tokenizer", "out", "sampling.max_new_tokens", "sampler.batch_size", "sampler.max_prompt_length",
        "samples_per_prompt", "seed", "train_prompts", "label"}


def test_a_stage_field_added_to_a_demo_section_reaches_the_stage_and_a_typo_is_named():
    config = _config()
    with config.unlocked():
        config.sampling.temperature = 0.7
        config.training.data.nope = 1
    assert demo._pipeline_config(config, WORLD, "m", Path("/o")).sampling.temperature == 0.7
    assert demo._eval_config(config, WORLD, "m", "base", Path("/o"), "").sampling.temperature == 0.7
    with pytest.raises(ValueError, match=r"config\.training\.data\.nope: not a field of the stage config"):
        demo._method_config(config, WORLD, "ipo", "/p.jsonl", "m", Path("/o"))


def test_the_short_variant_changes_only_copies():
    config = _config()
    short = demo._short(config)
    assert short.intervention.rounds == 1 and "rounds" not in config.intervention
    assert short.methods.steps == 3 and config.methods.steps == 50
