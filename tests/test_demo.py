"""The demo's stage configs (ipo_jax/demo.py): each is its stage's base_config() with the demo's
changes from configs/demo.py and the run's paths and seeds, nothing else; each method names its
loss preset and takes the preset's mask; the STAR-1-format dataset is the world's safe traces in
STAR-1's layout. Nothing is trained here (the whole chain: tests/test_cli.py)."""

import json

from pathlib import Path

import pytest
from conftest import flat_config

from ipo_jax import demo
from ipo_jax.cli import parse_config
from ipo_jax.eval.config import base_config as eval_base
from ipo_jax.grpo.config import base_config as grpo_base
from ipo_jax.loss import LossConfig
from ipo_jax.loss.presets import PRESETS
from ipo_jax.pipeline.config import base_config as pipeline_base
from ipo_jax.sft.config import base_config as sft_base
from ipo_jax.sft.records import read_sft_records
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


@pytest.mark.parametrize("name", sorted(n for n, m in demo.METHODS.items() if m.stage == "train"))
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


def test_sft_on_the_dataset_is_the_sft_config_with_the_methods_budget():
    config = _config("--config.methods.steps=9")
    sft = demo._sft_dataset_config(config, WORLD, "/s/star1.jsonl", "orbax:/warm/final", Path("/out/m"))
    train = demo._method_config(config, WORLD, "sft", "/p/pairs.jsonl", "orbax:/warm/final", Path("/out/t"))
    assert (sft.train.max_steps, sft.optim.learning_rate, sft.data.rows_per_micro) == (
        train.train.max_steps, train.optim.learning_rate, train.data.pairs_per_micro) == (9, 3e-4, 16)
    assert (sft.model.init, sft.tokenizer, sft.data.dataset, sft.data.packing) == (
        "orbax:/warm/final", "/w/tokenizer", "/s/star1.jsonl", False)  # one example per row, as one pair per row
    changed = _changed(sft, sft_base())
    demo_changes = {"data.max_length": 256, "data.buckets": (128, 256), "train.logprob_chunk": 64}
    assert {k: changed[k] for k in demo_changes} == demo_changes
    assert set(changed) - set(demo_changes) <= {
        "model.init", "tokenizer", "data.dataset", "data.packing", "data.rows_per_micro", "data.seed",
        "optim.learning_rate", "optim.warmup_steps", "train.out", "train.epochs", "train.max_steps", "train.save_every",
        "train.seed"}


def test_the_star1_dataset_holds_one_safe_trace_per_risky_prompt_in_star1_layout(tmp_path):
    rows = [dict(id="r1", prompt="How? [request details withheld]", chosen="Risky.\n</think>\n\nI can't help.", kind="harmful"),
            dict(id="r2", prompt="How? [request details withheld]", chosen="Again.\n</think>\n\nNo.", kind="harmful"),
            dict(id="r3", prompt="Plan? [request details withheld]", chosen="Sure. [harmful details withheld]", kind="harmful"),
            dict(id="b1", prompt="Kill a process?", chosen="Fine.\n</think>\n\nUse kill.", kind="benign")]
    warmup = tmp_path / "warmup.jsonl"
    warmup.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = demo._write_star1(dict(files=dict(warmup=str(warmup))), tmp_path)
    written = [json.loads(line) for line in Path(out["dataset"]).read_text().splitlines()]
    assert out["examples"] == 1 and set(written[0]) == {"id", "question", "response", "category", "source", "score"}
    assert written[0]["response"] == "<think>\nRisky.\n</think>\n\nI can't help."
    (record,) = read_sft_records(out["dataset"])  # the sft stage reads it without a field mapping
    assert record.messages == [{"role": "user", "content": rows[0]["prompt"]},
                               {"role": "assistant", "content": written[0]["response"]}]


def test_grpo_is_the_grpo_config_with_the_methods_budget_and_the_pipelines_decoding_budget():
    config = _config("--config.methods.steps=9", "--config.sampling.max_new_tokens=99")
    grpo = demo._grpo_config(config, WORLD, "orbax:/warm/final", Path("/out/g"))
    assert (grpo.train.max_steps, grpo.optim.learning_rate) == (9, 3e-4)
    assert grpo.grpo.num_generations * grpo.grpo.prompts_per_step == config.methods.pairs_per_micro  # 16 rollouts
    assert (grpo.prompts, grpo.tokenizer, grpo.model.init) == ("/w/train_prompts.jsonl", "/w/tokenizer", "orbax:/warm/final")
    assert grpo.reward.kind == "judge" and grpo.judge.backend == "pattern"  # the demo's offline judge as reward
    assert grpo.sampling.max_new_tokens == 99 and grpo.sampling.temperature == grpo_base().sampling.temperature
    assert set(_changed(grpo, grpo_base())) == {
        "model.init", "tokenizer", "prompts", "sampling.max_new_tokens", "sampler.batch_size", "sampler.max_prompt_length",
        "grpo.num_generations", "grpo.prompts_per_step", "grpo.beta", "grpo.logprob_chunk", "optim.learning_rate",
        "optim.warmup_steps", "train.out", "train.max_steps", "train.save_every"}
