"""ModelConfig: the decoder's shape and flags, read from and written to a Hugging Face config.json.

One config covers the whole family; the family only decides a few flags:

| family | q/k/v bias      | o bias          | q/k RMSNorm | head_dim            |
|--------|-----------------|-----------------|-------------|---------------------|
| llama  | attention_bias  | attention_bias  | no          | hidden / heads      |
| qwen2  | always          | never           | no          | hidden / heads      |
| qwen3  | attention_bias  | attention_bias  | yes         | explicit `head_dim` |
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable")
ATTENTION_KINDS = ("dense", "blockwise")  # kept equal to ipo_jax.models.attention.ATTENTION_KINDS


class UnsupportedModelError(ValueError):
    """The HF config describes a model this decoder does not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static description of one decoder. Frozen and hashable, so jit can treat it as static."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Llama-3 style scaling as a sorted tuple of (key, value) pairs (hashable), or None.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations
    remat_policy: str = "none"
    # Runtime choices like dtype and remat (never written to config.json): which attention kernel
    # runs (ipo_jax.models.attention) and, for "blockwise", its query / key block sizes.
    attention: str = "dense"
    attention_block_q: int = 512
    attention_block_k: int = 512
    initializer_range: float = 0.02  # std of random init (HF's name); weights from a checkpoint ignore it

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        for name in ("attention_block_q", "attention_block_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.rope_scaling is not None:
            rope_type = dict(self.rope_scaling).get("rope_type")
            if rope_type not in ("llama3", "default"):
                raise UnsupportedModelError(
                    f"rope scaling type {rope_type!r} is not supported; expected 'llama3' or none"
                )

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config", **overrides) -> ModelConfig:
        """Build from the dict of an HF config.json (legacy or transformers-5 rope keys)."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} (architectures {hf.get('architectures')}) is not "
                f"supported; expected one of {SUPPORTED_MODEL_TYPES}"
            )

        def need(key: str):
            if key not in hf:
                raise ValueError(f"{source}: field {key!r} is missing (needed for model_type {model_type!r})")
            return hf[key]

        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported; expected 'silu'")
        if hf.get("use_sliding_window"):
            raise UnsupportedModelError(f"{source}: use_sliding_window=true is not supported")
        if hf.get("pretraining_tp", 1) != 1:
            raise UnsupportedModelError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported; expected 1")

        num_heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        head_dim = hf.get("head_dim") or hidden // num_heads
        # transformers 5 writes `rope_parameters`; older configs write rope_theta + rope_scaling.
        rope = dict(hf.get("rope_parameters") or {})
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        legacy = hf.get("rope_scaling")
        if legacy:
            rope.update(legacy)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        rope.pop("type", None)
        rope_scaling = None if rope_type == "default" else tuple(sorted(rope.items()))
        eos = hf.get("eos_token_id")
        attention_bias = bool(hf.get("attention_bias", False))
        fields = dict(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            initializer_range=float(hf.get("initializer_range", 0.02)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_hf_dir(cls, path: str | Path, **overrides) -> ModelConfig:
        config_path = Path(path) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: not found; an HF model directory needs a config.json")
        try:
            hf = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(hf, source=str(config_path), **overrides)

    def to_hf_dict(self, torch_dtype: str | None = None) -> dict[str, Any]:
        """An HF config.json dict that transformers (4.x and 5.x) and vLLM load."""
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        hf: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": torch_dtype or self.param_dtype,
            "use_cache": True,
            "initializer_range": self.initializer_range,
        }
        if self.model_type == "llama":
            hf["attention_bias"] = self.qkv_bias
            hf["mlp_bias"] = self.mlp_bias
        elif self.model_type == "qwen3":
            hf["attention_bias"] = self.qkv_bias
        else:
            hf["use_sliding_window"] = False
        return hf

    # ------------------------------------------------------------------ derived numbers

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse RoPE frequencies [head_dim // 2], float32, with Llama-3 scaling applied."""
        exponents = np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim
        inv_freq = 1.0 / (self.rope_theta**exponents)
        if self.rope_scaling:
            s = dict(self.rope_scaling)
            if s.get("rope_type") == "llama3":
                inv_freq = _llama3_scaled(inv_freq, s)
        return inv_freq.astype(np.float32)

    def num_params(self) -> int:
        """Parameter count, embeddings included (counted once when tied)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        attn += h * (self.num_heads + 2 * self.num_kv_heads) if self.qkv_bias else 0
        attn += d if self.o_bias else 0
        attn += 2 * h if self.qk_norm else 0
        mlp = 3 * d * f + ((2 * f + d) if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + d


def _llama3_scaled(inv_freq: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """Llama-3 frequency scaling: long wavelengths divided by `factor`, a smooth blend in between."""
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled)
