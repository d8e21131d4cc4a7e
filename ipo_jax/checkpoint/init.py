"""Where a run's weights come from: one spec string for every stage.

  preset:<name>   a random decoder of a preset shape (tests, benchmarks, the demo)
  hf:<dir>        a Hugging Face safetensors directory
  orbax:<dir>     an ipo-jax model directory (save_orbax; a training run's `final/`)
"""

from __future__ import annotations

from ipo_jax.checkpoint.hf import load_hf
from ipo_jax.checkpoint.orbax import load_orbax, read_orbax_config
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder, init_decoder
from ipo_jax.models.presets import preset_config


class ModelSpecError(ValueError):
    pass


def model_config(
    spec: str,
    *,
    param_dtype: str = "float32",
    dtype: str = "float32",
    remat: str = "none",
    attention: str = "dense",
    vocab_needed: int = 0,
) -> ModelConfig:
    """The configuration `load_model(spec, ...)` builds, read without any weights (a preset's shape,
    an HF directory's config.json, an orbax directory's model_config.json): sizes can be checked
    against it (context, vocabulary) before anything is loaded or written.

    `vocab_needed` is the tokenizer's size: a random preset grows its vocabulary to fit (rounded up
    to a multiple of 64); a checkpoint's vocabulary smaller than the tokenizer is a ModelSpecError.
    """
    kind, _, location = spec.partition(":")
    overrides = dict(param_dtype=param_dtype, dtype=dtype, remat_policy=remat, attention=attention)
    if kind == "preset":
        cfg = preset_config(location, **overrides)
        if vocab_needed > cfg.vocab_size:
            cfg = cfg.replace(vocab_size=-(-vocab_needed // 64) * 64)
    elif kind == "hf":
        cfg = ModelConfig.from_hf_dir(location, **overrides)
    elif kind == "orbax":
        cfg = read_orbax_config(location, **overrides)
    else:
        raise ModelSpecError(f"model spec {spec!r}: expected 'preset:<name>', 'hf:<dir>' or 'orbax:<dir>'")
    _check_vocabulary(spec, cfg, vocab_needed)
    return cfg


def _check_vocabulary(spec: str, cfg: ModelConfig, vocab_needed: int) -> None:
    if vocab_needed > cfg.vocab_size:
        raise ModelSpecError(
            f"{spec}: the tokenizer has {vocab_needed} tokens but the model's vocabulary is {cfg.vocab_size}; "
            "they do not belong together"
        )


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

    `vocab_needed` is the tokenizer's size (see `model_config`). `attention` is the kernel
    ('dense' or 'blockwise', ipo_jax.models.attention), a runtime choice.
    """
    kind, _, location = spec.partition(":")
    overrides = dict(param_dtype=param_dtype, dtype=dtype, remat_policy=remat, attention=attention)
    if kind == "preset":
        cfg = model_config(spec, param_dtype=param_dtype, dtype=dtype, remat=remat, attention=attention,
                           vocab_needed=vocab_needed)
        model = init_decoder(cfg, seed=seed, mesh=mesh)
    elif kind == "hf":
        model = load_hf(location, mesh=mesh, **overrides)
    elif kind == "orbax":
        model = load_orbax(location, mesh=mesh, **overrides)
    else:
        raise ModelSpecError(f"model spec {spec!r}: expected 'preset:<name>', 'hf:<dir>' or 'orbax:<dir>'")
    _check_vocabulary(spec, model.cfg, vocab_needed)
    return model


def tokenizer_dir_for(tokenizer: str, spec: str) -> str:
    """The tokenizer directory a stage should load: the one configured, or else the HF model's own."""
    if tokenizer:
        return tokenizer
    kind, _, location = spec.partition(":")
    if kind != "hf":
        raise ModelSpecError(f"no tokenizer configured and model {spec!r} is not an HF directory to take it from")
    return location
