"""Where a run's weights come from: one spec string for every stage.

  preset:<name>   a random decoder of a preset shape (tests, benchmarks, the demo)
  hf:<dir>        a Hugging Face safetensors directory
  orbax:<dir>     an ipo-jax model directory (save_orbax; a training run's `final/`)
"""

from __future__ import annotations

from ipo_jax.checkpoint.hf import load_hf
from ipo_jax.checkpoint.orbax import load_orbax
from ipo_jax.models.decoder import Decoder, init_decoder
from ipo_jax.models.presets import preset_config


class ModelSpecError(ValueError):
    pass


def load_model(
    spec: str,
    *,
    mesh=None,
    param_dtype: str = "float32",
    dtype: str = "float32",
    remat: str = "none",
    attention: str = "dense",
    seed: int = 0,
    vocab_needed: int = 0,
) -> Decoder:
    """Load (or randomly initialise) the model named by `spec`, sharded over `mesh`.

    `vocab_needed` is the tokenizer's size: a random preset grows its vocabulary to fit (rounded
    up to a multiple of 64); a loaded checkpoint smaller than the tokenizer is an error.
    `attention` is the kernel ('dense' or 'blockwise', ipo_jax.models.attention), a runtime choice.
    """
    kind, _, location = spec.partition(":")
    overrides = dict(param_dtype=param_dtype, dtype=dtype, remat_policy=remat, attention=attention)
    if kind == "preset":
        cfg = preset_config(location, **overrides)
        if vocab_needed > cfg.vocab_size:
            cfg = cfg.replace(vocab_size=-(-vocab_needed // 64) * 64)
        model = init_decoder(cfg, seed=seed, mesh=mesh)
    elif kind == "hf":
        model = load_hf(location, mesh=mesh, **overrides)
    elif kind == "orbax":
        model = load_orbax(location, mesh=mesh, **overrides)
    else:
        raise ModelSpecError(f"model spec {spec!r}: expected 'preset:<name>', 'hf:<dir>' or 'orbax:<dir>'")
    if vocab_needed > model.cfg.vocab_size:
        raise ModelSpecError(
            f"{spec}: the tokenizer has {vocab_needed} tokens but the model's vocabulary is {model.cfg.vocab_size}; "
            "they do not belong together"
        )
    return model


def tokenizer_dir_for(tokenizer: str, spec: str) -> str:
    """The tokenizer directory a stage should load: the one configured, or else the HF model's own."""
    if tokenizer:
        return tokenizer
    kind, _, location = spec.partition(":")
    if kind != "hf":
        raise ModelSpecError(f"no tokenizer configured and model {spec!r} is not an HF directory to take it from")
    return location
