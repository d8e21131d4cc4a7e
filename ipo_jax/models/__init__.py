"""Flax NNX decoder for the Llama / Qwen2 / Qwen3 family, its config, presets and KV cache."""

from ipo_jax.models.config import ModelConfig, UnsupportedModelError
from ipo_jax.models.decoder import Decoder, KVCache

__all__ = ["Decoder", "KVCache", "ModelConfig", "UnsupportedModelError"]
