"""Checkpoints: Hugging Face safetensors import/export and orbax save/restore of model parameters."""

from ipo_jax.checkpoint.hf import CheckpointError, UnsafeCheckpointError, load_hf, save_hf
from ipo_jax.checkpoint.orbax import load_orbax, save_orbax

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_hf", "load_orbax", "save_hf", "save_orbax"]
