"""Tests for ipo_jax.models.presets: shapes against published parameter counts and the decoder."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder
from ipo_jax.models.presets import PRESETS, get_preset, list_presets, preset_config

TINY = ["tiny-llama", "tiny-qwen2", "tiny-qwen3"]
LLAMA = ["deepseek-r1-distill-llama-8b", "deepseek-r1-distill-llama-70b"]


def _abstract_param_count(cfg: ModelConfig, dtype: str | None = None) -> int:
    """Parameters of the real Decoder, built with eval_shape (shapes only, nothing allocated)."""
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    if dtype is not None:
        assert {leaf.dtype for leaf in leaves} == {jnp.dtype(dtype)}
    return sum(math.prod(leaf.shape) for leaf in leaves)


def test_list_presets_covers_table() -> None:
    names = list_presets()
    assert names == sorted(PRESETS)
    for expected in [*TINY, *LLAMA, "deepseek-r1-distill-qwen-1.5b", "qwen3-0.6b", "qwen3-32b"]:
        assert expected in names


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_matches_the_decoder(name: str) -> None:
    # Every preset, big ones included: eval_shape makes this cheap, and it checks that
    # num_params() (used for memory planning) agrees with what the decoder really builds.
    cfg = preset_config(name)
    assert isinstance(cfg, ModelConfig)
    assert cfg.num_params() == _abstract_param_count(cfg)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("deepseek-r1-distill-llama-8b", 8_030_261_248),
        ("deepseek-r1-distill-qwen-7b", 7_615_616_512),
        ("deepseek-r1-distill-qwen-1.5b", 1_777_088_000),
    ],
)
def test_exact_published_param_counts(name: str, expected: int) -> None:
    assert preset_config(name).num_params() == expected


@pytest.mark.parametrize(
    "name, nominal",
    [
        ("qwen3-0.6b", 0.596e9),
        ("qwen3-4b", 4.02e9),
        ("qwen3-8b", 8.19e9),
        ("qwen3-14b", 14.77e9),
        ("qwen3-32b", 32.76e9),
        ("deepseek-r1-distill-qwen-14b", 14.77e9),
        ("deepseek-r1-distill-qwen-32b", 32.76e9),
        ("deepseek-r1-distill-llama-70b", 70.55e9),
    ],
)
def test_nominal_published_param_counts(name: str, nominal: float) -> None:
    assert preset_config(name).num_params() == pytest.approx(nominal, rel=0.01)


def test_qwen3_1_7b_param_count() -> None:
    # Qwen3-1.7B ties its embeddings (config.json and the Qwen3 report's "Tie Embedding: Yes"),
    # so the model has 1.72e9 distinct parameters (the card's "1.7B", 1.4B non-embedding).
    # The Hub's 2.03e9 counts the safetensors tensors, which store lm_head as a copy of the
    # embedding; that figure is the tied count plus one vocab x hidden matrix.
    cfg = preset_config("qwen3-1.7b")
    assert cfg.tie_word_embeddings
    assert cfg.num_params() == pytest.approx(1.72e9, rel=0.01)
    non_embedding = cfg.num_params() - cfg.vocab_size * cfg.hidden_size - cfg.hidden_size
    assert non_embedding == pytest.approx(1.4e9, rel=0.01)
    stored_tensors = cfg.num_params() + cfg.vocab_size * cfg.hidden_size
    assert stored_tensors == pytest.approx(2.03e9, rel=0.01)


@pytest.mark.parametrize("name", [*LLAMA, "tiny-llama"])
def test_llama3_rope_scaling_is_parsed(name: str) -> None:
    cfg = preset_config(name)
    assert cfg.rope_scaling is not None
    scaling = dict(cfg.rope_scaling)
    assert scaling["rope_type"] == "llama3"
    assert scaling["original_max_position_embeddings"] < cfg.max_position_embeddings
    # Scaling must actually change the frequencies, or the long-context path goes untested.
    unscaled = cfg.replace(rope_scaling=None).rope_inv_freq()
    assert not np.allclose(cfg.rope_inv_freq(), unscaled)


def test_big_llama_rope_scaling_values() -> None:
    scaling = dict(preset_config("deepseek-r1-distill-llama-8b").rope_scaling)
    assert scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


def test_tiny_llama_rope_scaling_hits_every_band() -> None:
    # The tiny preset should leave some frequencies alone, divide some by `factor` and
    # blend the rest, so tests on it exercise all three branches of the llama3 rule.
    cfg = preset_config("tiny-llama")
    factor = dict(cfg.rope_scaling)["factor"]
    ratio = cfg.replace(rope_scaling=None).rope_inv_freq() / cfg.rope_inv_freq()
    unchanged = np.isclose(ratio, 1.0)
    divided = np.isclose(ratio, factor)
    assert unchanged.any() and divided.any() and (~unchanged & ~divided).any()


def test_qwen3_head_dim_is_explicit() -> None:
    cfg = preset_config("qwen3-4b")
    assert cfg.head_dim == 128
    assert cfg.hidden_size // cfg.num_heads == 80
    tiny = preset_config("tiny-qwen3")
    assert tiny.head_dim != tiny.hidden_size // tiny.num_heads
    assert tiny.tie_word_embeddings


def test_family_flags() -> None:
    qwen2 = preset_config("deepseek-r1-distill-qwen-1.5b")
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.qk_norm, qwen2.tie_word_embeddings) == (True, False, False, False)
    qwen3 = preset_config("qwen3-8b")
    assert (qwen3.qkv_bias, qwen3.o_bias, qwen3.qk_norm) == (False, False, True)
    llama = preset_config("deepseek-r1-distill-llama-8b")
    assert (llama.qkv_bias, llama.mlp_bias, llama.qk_norm) == (False, False, False)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_survives_hf_round_trip(name: str) -> None:
    # Presets are written in config.json vocabulary; writing the ModelConfig back out must
    # reproduce every key the preset sets (a misspelt key would be silently defaulted).
    preset = get_preset(name).to_dict()
    written = preset_config(name).to_hf_dict()
    for key, value in preset.items():
        # to_hf_dict leaves out flags that are off for a family (qwen3's use_sliding_window).
        assert written.get(key, False) == value, key


def test_overrides_reach_the_model_config() -> None:
    cfg = preset_config("tiny-qwen2", param_dtype="bfloat16", remat_policy="full")
    assert (cfg.param_dtype, cfg.remat_policy) == ("bfloat16", "full")
    assert _abstract_param_count(cfg, dtype="bfloat16") == cfg.num_params()


def test_get_preset_returns_a_fresh_copy() -> None:
    first = get_preset("tiny-llama")
    first.hidden_size = 7
    first.rope_scaling.factor = 1.0
    again = get_preset("tiny-llama")
    assert again.hidden_size == 64
    assert again.rope_scaling.factor == 8.0


def test_unknown_preset_lists_available_names() -> None:
    with pytest.raises((KeyError, ValueError)) as info:
        get_preset("qwen3-9000b")
    message = str(info.value)
    assert "qwen3-9000b" in message
    for name in list_presets():
        assert name in message
    with pytest.raises((KeyError, ValueError), match="tiny-qwen3"):
        preset_config("no-such-model")
