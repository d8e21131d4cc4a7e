"""The `sft` stage (`run_sft`): supervised fine-tuning on a chat dataset with the training
machinery of IPO -- the same mesh, mixed precision, jitted step (under the `sft` loss preset:
the NLL of the chosen side, here an example's assistant tokens), checkpoints, resume, metrics,
progress, SIGTERM handling and final/ export (ipo_jax/train/loop.py `run_training`).

Built in the train stage's order, so a refused run writes nothing:
  1. the settings (stage "sft", ipo_jax/sft/config.py) and train.out (new, empty, or this run:
     ipo_jax/train/run_dir.py with the SFT run's identity settings, RUN_IDENTITY here)
  2. the data: the records read and checked (records.py), the tokenizer, every conversation
     tokenised with its assistant mask (tokens.py), the length rule, the batches (batches.py)
  3. the model's configuration, read without weights: vocabulary, context, mesh, rows per batch
  4. train.out written: config.json, tokenizer/, skipped_examples.jsonl
  5. the model loaded onto the mesh, the optimizer and the jitted step

Length rule: an example (all its turns) longer than data.max_length is skipped, never cut; each
is listed in train.out/skipped_examples.jsonl (id, where, tokens), the count is logged, and more
than data.max_skipped_share of them skipped (or all) stops the run before anything is written.

metrics.jsonl per step: loss (the mean over the step's examples of each example's NLL, per
assistant token under loss.nll_norm 'mean'), nll_per_token (the step's assistant tokens pooled),
examples, loss_tokens, grad_norm, learning_rate, skipped, update_applied, tokens, seconds,
tokens_per_second (and mfu where the device peak is known).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ipo_jax.buckets import default_buckets
from ipo_jax.checkpoint.init import load_model, model_config, tokenizer_dir_for
from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
from ipo_jax.data.tokenizer import load_tokenizer
from ipo_jax.distributed import initialize_from_environment, is_main_process
from ipo_jax.loss import LossConfig
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder
from ipo_jax.sft.batches import SftBatches
from ipo_jax.sft.config import base_config
from ipo_jax.sft.records import read_sft_records
from ipo_jax.sft.tokens import SftExample, tokenize_records
from ipo_jax.sharding import LOGICAL_RULES, logical_to_spec, make_mesh, param_shardings
from ipo_jax.train.build import TrainRun
from ipo_jax.train.data import MIN_ROWS_PER_MICRO
from ipo_jax.train.errors import TrainingError
from ipo_jax.train.loop import run_training
from ipo_jax.train.reference import Reference
from ipo_jax.train.run_dir import check_output_dir, write_run_files, write_skipped_pairs
from ipo_jax.train.step import (
    OptimConfig, check_batch_fits_mesh, init_train_state, jit_train_step, learning_rate_schedule, make_optimizer,
    make_train_step,
)
from ipo_jax.validation import validate_settings

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped_examples.jsonl"
# Settings that decide what an SFT run computes: resuming with another value is refused (the
# train stage's rule, ipo_jax/train/run_dir.py); max_steps, save_every, mesh, compute dtype may change.
RUN_IDENTITY = (
    "model.init", "model.param_dtype", "tokenizer", "tiny_tokenizer_vocab", "data.dataset", "data.split",
    "data.format", "data.fields", "data.max_length", "data.buckets", "data.rows_per_micro", "data.micro_batches",
    "data.packing", "data.seed", "data.shuffle", "loss", "optim", "train.seed",
)


@dataclasses.dataclass
class SftData:
    """What an SFT run trains on, checked: the examples kept by the length rule and their batches."""

    tokenizer: Any
    read: int
    examples: list[SftExample]  # kept, in record order
    skipped: list[dict]  # one entry per example longer than data.max_length
    batches: SftBatches

    def summary(self, max_length: int) -> str:
        rewritten = sum(e.history_rewritten for e in self.examples)
        tokens = sum(len(e) for e in self.examples)
        loss_tokens = sum(int(e.loss.sum()) for e in self.examples)
        return (f"examples: {self.read} read, {len(self.examples)} used, {len(self.skipped)} skipped as longer than "
                f"data.max_length {max_length} (never cut{f', see {SKIPPED_FILE}' if self.skipped else ''}); "
                f"{tokens} tokens, {loss_tokens} of them assistant tokens (the loss)"
                + (f"; {rewritten} conversations whose earlier assistant turns the chat template rewrites train on "
                   "their later turns only" if rewritten else ""))


def run_sft(config, *, devices=None) -> int:
    """Run (or resume) the SFT run `config` describes; the exit code (ipo_jax/train/loop.py's).
    `devices`: the devices of the mesh (default: all)."""
    initialize_from_environment()
    return run_training(build_sft_run(config, devices))


def build_sft_run(config, devices=None) -> TrainRun:
    """The run, built in the module doc's order."""
    validate_settings("sft", config)
    out = Path(config.train.out)
    check_output_dir(out, config, identity=RUN_IDENTITY, defaults=base_config())
    mesh = make_mesh(dict(config.mesh), devices)
    data = prepare_sft_data(config)
    m = config.model
    model_cfg = model_config(m.init, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, attention=m.attention,
                             vocab_needed=len(data.tokenizer))
    check_sft_sizes(config, data, model_cfg, mesh)
    _, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))))
    param_shardings(abstract, mesh)  # the model's arrays split over the mesh (a ValueError naming them otherwise)
    log.info(data.summary(config.data.max_length))
    log.info(data.batches.describe())
    write_run_files(out, config, data.tokenizer, [])
    if is_main_process():  # as write_run_files: process 0 writes the shared files
        write_skipped_pairs(out / SKIPPED_FILE, data.skipped)
    model = load_model(m.init, mesh=mesh, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                       attention=m.attention, seed=config.train.seed, vocab_needed=len(data.tokenizer))
    return _with_model(config, out, mesh, data, model)


def _with_model(config, out: Path, mesh, data: SftData, model) -> TrainRun:
    loss_cfg = LossConfig(preset="sft", nll_norm=config.loss.nll_norm)
    max_steps = config.train.max_steps or config.train.epochs * data.batches.batches_per_epoch
    optim_cfg = OptimConfig(**config.optim, total_steps=max_steps)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(optim_cfg)
    state, state_shardings = init_train_state(params, tx, mesh)
    step = make_train_step(graphdef, tx, loss_cfg, learning_rate_schedule(optim_cfg),
                           chunk_size=config.train.logprob_chunk, mesh=mesh)
    step_fn = jit_train_step(sft_metrics(step), state_shardings, mesh)
    none = np.zeros(len(data.examples), np.float32)
    return TrainRun(config, out, mesh, data, model.cfg, graphdef, state, state_shardings, step_fn,
                    Reference(None, none, none), max_steps)


def sft_metrics(step):
    """The step with SFT's metrics (module doc) instead of the preference ones (rewards, margins)."""

    def sft_step(state, batch, ref_params=None):
        state, m = step(state, batch, ref_params)
        examples = m["pairs"]
        return state, {
            "loss": m["loss"],
            "nll_per_token": -m["logp_chosen"] * jnp.maximum(examples, 1.0) / jnp.maximum(m["loss_tokens"], 1.0),
            "examples": examples,
            **{k: m[k] for k in ("loss_tokens", "grad_norm", "learning_rate", "skipped", "update_applied")},
        }

    return sft_step


# ----------------------------------------------------------------------------- data


def prepare_sft_data(config) -> SftData:
    """Read, check, tokenise, fit and batch config.data's examples (nothing is written)."""
    d = config.data
    records = read_sft_records(d.dataset, split=d.split, fmt=d.format, fields=d.fields)
    tokenizer = build_tokenizer(config, records)
    examples, skipped = fit_examples(tokenize_records(records, tokenizer), d.max_length, d.max_skipped_share)
    buckets = list(d.buckets) if d.buckets else default_buckets(d.max_length, steps_per_octave=2)
    if max(buckets) < d.max_length:
        raise TrainingError(f"data.buckets {tuple(d.buckets)}: the largest, {max(buckets)}, is below data.max_length "
                            f"{d.max_length}; an example of that length would fit no row")
    batches = SftBatches(examples, d.rows_per_micro, d.micro_batches, buckets, d.seed, d.shuffle, packing=d.packing)
    return SftData(tokenizer, len(records), examples, skipped, batches)


def build_tokenizer(config, records):
    """config.tokenizer's directory (or the HF model's own), or with 'tiny' a small BPE built from the texts."""
    if config.tokenizer != "tiny":
        return load_tokenizer(tokenizer_dir_for(config.tokenizer, config.model.init))
    return build_tiny_tokenizer([m["content"] for r in records for m in r.messages], vocab_size=config.tiny_tokenizer_vocab)


def fit_examples(examples: list[SftExample], max_length: int, max_share: float) -> tuple[list[SftExample], list[dict]]:
    """(kept, skipped) under the length rule (module doc); too many skipped is a TrainingError."""
    kept = [e for e in examples if len(e) <= max_length]
    skipped = [{"id": e.id, "at": e.where, "reason": "too_long", "tokens": len(e), "max_length": max_length}
               for e in examples if len(e) > max_length]
    share = len(skipped) / len(examples) if examples else 0.0
    if skipped and (not kept or share > max_share):
        longest = max(skipped, key=lambda s: s["tokens"])
        why = "every example would be skipped" if not kept else f"more than data.max_skipped_share {max_share:g}"
        raise TrainingError(
            f"{len(skipped)} of {len(examples)} examples ({share:.1%}) are longer than data.max_length {max_length} and "
            f"would be skipped ({why}); the longest, {longest['id']!r} ({longest['at']}), has {longest['tokens']} tokens; "
            f"raise data.max_length to at least {longest['tokens']} or data.max_skipped_share")
    return kept, skipped


def check_sft_sizes(config, data: SftData, model_cfg: ModelConfig, mesh) -> None:
    """Context, mesh and data size rules (the train stage's, ipo_jax/train/data.py), before the model loads."""
    d, context = config.data, model_cfg.max_position_embeddings
    if not d.packing and d.max_length > context:
        raise TrainingError(f"data.max_length {d.max_length} is longer than the model's context ({context} positions, "
                            f"model.init {config.model.init!r}); set data.max_length to at most {context}")
    longest = max(data.examples, key=len, default=None)
    if longest is not None and len(longest) > context:
        raise TrainingError(f"example {longest.id!r} ({longest.where}) has {len(longest)} tokens, more than the model's "
                            f"context of {context}; set data.max_length to at most {context} (longer ones are skipped)")
    check_batch_fits_mesh(d.rows_per_micro, mesh)
    spec = logical_to_spec(("batch",), LOGICAL_RULES)[0]
    devices = int(np.prod([mesh.shape[a] for a in ((spec,) if isinstance(spec, str) else tuple(spec or ()))]))
    units, most = data.batches.units, max(data.batches.units, MIN_ROWS_PER_MICRO)
    if d.rows_per_micro > -(-most // devices) * devices:
        raise TrainingError(f"data.rows_per_micro {d.rows_per_micro} is larger than the data needs: an epoch holds {units} "
                            f"rows, so the rest would be padding in every step; set it to at most {most}")
    if d.rows_per_micro * (d.micro_batches - 1) >= most:
        raise TrainingError(f"data.micro_batches {d.micro_batches} x data.rows_per_micro {d.rows_per_micro} is larger "
                            f"than the data needs ({units} rows an epoch): the last micro-batch would hold only padding")
