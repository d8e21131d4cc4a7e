"""Typed settings (ipo_jax/settings.py): each config section's dataclass is the one source of its
defaults, help and range checks, and the library code that takes the settings agrees with it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from ipo_jax.eval import config as eval_config
from ipo_jax.judging.chat import HttpChat
from ipo_jax.judging.config import JudgeSettings
from ipo_jax.pipeline import config as pipeline_config
from ipo_jax.pipeline.intervene import InterventionConfig
from ipo_jax.rollout.config import PolicySettings, SamplerBatchSettings, SamplingSettings
from ipo_jax.rollout.http import HttpPolicy
from ipo_jax.sampling import Sampler, SamplingConfig
from ipo_jax.settings import section, setting
from ipo_jax.train import config as train_config
from ipo_jax.validation import settings_problems


def _leaves(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("module", [train_config, pipeline_config, eval_config], ids=["train", "pipeline", "eval"])
def test_every_field_has_help(module):
    helped = set(module.field_help())
    undocumented = {name for name in _leaves(module.base_config())
                    if name not in helped and not name.startswith(("loss.", "optim."))}  # those: field comments
    assert not undocumented, undocumented


def _defaults(function, names):
    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}


def test_library_defaults_are_the_config_sections():
    config = pipeline_config.base_config()
    assert _defaults(HttpChat.__init__, ["api_key_env", "timeout", "max_retries", "backoff", "max_backoff",
                                         "concurrency"]) == {k: config.judge[k] for k in
                                                             ["api_key_env", "timeout", "max_retries", "backoff",
                                                              "max_backoff", "concurrency"]}
    policy_fields = ["api_key_env", "timeout", "max_retries", "backoff", "max_backoff", "concurrency"]
    assert _defaults(HttpPolicy.__init__, policy_fields) == {k: config.policy[k] for k in policy_fields}
    sampler_fields = ["batch_size", "chunk_tokens", "max_prompt_length", "continuous_batching"]
    assert _defaults(Sampler.__init__, sampler_fields) == {k: config.sampler[k] for k in sampler_fields}
    assert dataclasses.asdict(InterventionConfig()) == config.intervention.to_dict()
    sampling = SamplingConfig()
    assert {k: getattr(sampling, k) for k in config.sampling} == config.sampling.to_dict()
    # the sections are the dataclasses' fields, nothing else
    assert set(config.judge) == {f.name for f in dataclasses.fields(JudgeSettings)}
    assert set(config.policy) == {f.name for f in dataclasses.fields(PolicySettings)}
    assert set(config.sampler) == {f.name for f in dataclasses.fields(SamplerBatchSettings)}
    assert set(config.sampling) == {f.name for f in dataclasses.fields(SamplingSettings)}


def test_a_field_check_refuses_through_the_stage_rules(tmp_path):
    config = eval_config.base_config()
    config.benchmarks, config.out, config.model.init = "jsonl=x.jsonl", str(tmp_path / "out"), "preset:tiny-qwen3"
    assert (config.code.memory_mb, config.code.max_disk_mb) == (1024, 64)
    assert settings_problems("eval", config) == []
    config.code.memory_mb, config.judge.max_prompt_length = 0, -3
    assert settings_problems("eval", config) == [
        "config.judge.max_prompt_length is -3; expected an integer from 1 to 1,048,576",
        "config.code.memory_mb is 0; expected an integer >= 1",
    ]


def test_section_keeps_defaults_replaces_given_ones_and_types_none():
    @dataclasses.dataclass(frozen=True)
    class Example:
        count: int = setting(3, "how many")
        share: float | None = setting(None, "a share, or None")

    assert section(Example).to_dict() == {"count": 3, "share": None}
    assert section(Example, count=5).count == 5
    typed = section(Example)
    typed.share = 0.5  # a None default is a float placeholder: a float is accepted
    with pytest.raises(TypeError):
        typed.share = "half"
    with pytest.raises(TypeError, match="no field"):
        section(Example, counts=1)
