"""Building a training run (`build_run`): everything a run needs before its first step, checked in
an order that fails fast and writes nothing until the input is known to be good.

  1. the settings (ipo_jax/validation.py) and train.out (new, empty, or this run: run_dir.py)
  2. the data: pair files read, tokenised, held to the length rule, batched (data.py)
  3. the model's configuration, read without weights: the vocabulary against the tokenizer, the
     context, the mesh and the host's memory against the batches (data.py `check_sizes`)
  4. only then train.out is written: config.json, tokenizer/, skipped_pairs.jsonl (run_dir.py)
  5. the model loaded onto the mesh, the reference (reference.py), the optimizer and the jitted step

The result is a TrainRun; `ipo_jax.train.loop.run_training` runs it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from ipo_jax.checkpoint.init import load_model, model_config
from ipo_jax.loss import LossConfig
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder
from ipo_jax.sharding import make_mesh, param_shardings
from ipo_jax.train.data import TrainData, check_sizes, prepare_data
from ipo_jax.train.reference import Reference, build_reference
from ipo_jax.train.run_dir import SKIPPED_PAIRS_FILE, check_output_dir, write_run_files
from ipo_jax.train.step import (
    OptimConfig,
    TrainState,
    init_train_state,
    jit_train_step,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
)
from ipo_jax.validation import validate_settings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainRun:
    """A run ready for its first step (or for resuming from a checkpoint)."""

    config: ml_collections.ConfigDict
    out: Path  # train.out
    mesh: Mesh
    data: TrainData
    model_cfg: ModelConfig
    graphdef: nnx.GraphDef
    state: TrainState  # step 0: the initial policy and a fresh optimizer state
    state_shardings: Any
    step_fn: Callable  # jitted (state, batch, reference params) -> (state, metrics)
    reference: Reference
    max_steps: int


def build_run(config) -> TrainRun:
    """The run config describes, built in the module doc's order."""
    validate_settings("train", config)  # before anything is read or written
    out = Path(config.train.out)
    check_output_dir(out, config)
    mesh = make_mesh(dict(config.mesh))
    data = prepare_data(config)
    m = config.model
    model_cfg = model_config(m.init, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, attention=m.attention,
                             vocab_needed=len(data.tokenizer))
    check_sizes(config, data, model_cfg, mesh)
    _check_model_fits_mesh(model_cfg, mesh)
    log.info(data.summary(config.data.max_length, out / SKIPPED_PAIRS_FILE))
    log.info(data.batches.describe([str(s.path) for s in data.sources]))
    write_run_files(out, config, data.tokenizer, data.dropped)
    model = load_model(m.init, mesh=mesh, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                       attention=m.attention, seed=config.train.seed, vocab_needed=len(data.tokenizer))
    return _with_model(config, out, mesh, data, model)


def _check_model_fits_mesh(model_cfg: ModelConfig, mesh: Mesh) -> None:
    """The model's arrays split over the mesh (a ValueError naming the array and axes otherwise),
    checked on its abstract shapes before anything is written or loaded."""
    _, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))))
    param_shardings(abstract, mesh)


def _with_model(config, out: Path, mesh: Mesh, data: TrainData, model) -> TrainRun:
    """The reference, optimizer, train state and jitted step around the loaded policy."""
    loss_cfg = LossConfig(**config.loss)
    max_steps = config.train.max_steps or config.train.epochs * data.batches.batches_per_epoch
    optim_cfg = OptimConfig(**config.optim, total_steps=max_steps)
    model_cfg = model.cfg
    graphdef, params = nnx.split(model, nnx.Param)
    reference = build_reference(config, loss_cfg, data, mesh, graphdef, params)  # copies params before they are donated
    tx = make_optimizer(optim_cfg)
    state, state_shardings = init_train_state(params, tx, mesh)
    step_fn = jit_train_step(
        make_train_step(graphdef, tx, loss_cfg, learning_rate_schedule(optim_cfg), chunk_size=config.train.logprob_chunk,
                        reference_on_the_fly=reference.on_the_fly, mesh=mesh),
        state_shardings, mesh, reference.shardings(),
    )
    return TrainRun(config, out, mesh, data, model_cfg, graphdef, state, state_shardings, step_fn, reference, max_steps)
