"""google-tunix `DPOTrainer` on the bench_train workload (run with the tunix venv's python, never imported by ipo_jax).

python tools/peers/tunix_dpo.py --work runs/bench-train --reference on_the_fly --warmup 1 --steps 4 --out r.json

The HF safetensors weights are loaded twice into tunix's Qwen2 (`params.create_model_from_safe_tensors`,
float32, on a 1x1 ("fsdp", "tp") mesh of one CPU device), as the policy and the frozen reference.
The pairs are token ids already and are fed as tunix `TrainingInput` batches: prompt = prompt +
reasoning prefix (the trunk), chosen / rejected = the suffixes after the cue; all prompts and all
suffixes have equal lengths, so there is no padding and every mask is ones. Objective: algorithm
"dpo" (the sigmoid loss; tunix's DPO has no SFT term, so alpha is not used); AdamW at a constant
rate after clipping at the workload's norm, the pairs in file order. tunix only computes the
reference on the fly (a separate jitted reference forward in `_prepare_inputs`), so --reference
accepts only on_the_fly.

A step's time is the interval between consecutive step ends, a step ending when its loss is ready
(`_post_process_train_step`, blocking on the loss; the first mark is the `on_train_start` hook), so
it includes fetching the batch, `_prepare_inputs` (concatenation, masks, positions and the reference
forward), the jitted train step and tunix's metric logging of the previous step. Blocking each step
gives up the overlap that tunix's in-flight throttler would otherwise allow.
Writes a JSON record with the step times and per-step losses.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tunix.models.qwen2 import model as qwen2_model
from tunix.models.qwen2 import params as qwen2_params
from tunix.sft import hooks
from tunix.sft.dpo.dpo_trainer import DPOTrainer, DPOTrainingConfig, TrainingInput
from tunix.utils import mesh as mesh_lib


class StepClock(hooks.TrainingHooks):
    """Marks the start of training; step ends are marked by `TimedDPOTrainer`."""

    def __init__(self):
        self.marks, self.losses = [], []

    def on_train_start(self, train_ctx):
        self.marks.append(time.perf_counter())

    def on_train_end(self, train_ctx):
        pass

    def on_train_step_start(self, train_ctx):
        pass

    def on_train_step_end(self, train_ctx, train_step, train_loss):
        pass  # called one step late (when the previous step's metrics are written), so not used

    def on_eval_step_start(self, train_ctx):
        pass

    def on_eval_step_end(self, train_ctx, eval_loss):
        pass


class TimedDPOTrainer(DPOTrainer):
    """DPOTrainer that blocks on each step's loss right after the step and marks the time."""

    clock: StepClock

    def _post_process_train_step(self, aux) -> None:
        super()._post_process_train_step(aux)
        loss = self._buffered_train_metrics.losses[-1]
        jax.block_until_ready(loss)
        self.clock.marks.append(time.perf_counter())
        self.clock.losses.append(float(loss))


def model_config(hf: dict) -> qwen2_model.ModelConfig:
    return qwen2_model.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
        num_kv_heads=hf["num_key_value_heads"], rope_theta=int(hf["rope_theta"]), norm_eps=hf["rms_norm_eps"],
        use_tied_embedding=hf["tie_word_embeddings"], dtype=jnp.float32, param_dtype=jnp.float32,
    )


def batches(records: list[dict], pairs_per_step: int):
    """Yields tunix `TrainingInput`s of pairs_per_step pairs (int32 ids, all-ones int32 masks)."""
    for start in range(0, len(records), pairs_per_step):
        chunk = records[start:start + pairs_per_step]
        prompt = np.asarray([r["prompt_ids"] + r["prefix_ids"] for r in chunk], dtype=np.int32)
        chosen = np.asarray([r["chosen_ids"] for r in chunk], dtype=np.int32)
        rejected = np.asarray([r["rejected_ids"] for r in chunk], dtype=np.int32)
        yield TrainingInput(
            prompt_ids=prompt, prompt_mask=np.ones_like(prompt),
            chosen_ids=chosen, chosen_mask=np.ones_like(chosen),
            rejected_ids=rejected, rejected_mask=np.ones_like(rejected),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--reference", choices=["on_the_fly"], required=True)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    work = Path(args.work)
    spec = json.loads((work / "workload.json").read_text())
    w = spec["settings"]["workload"]
    records = json.loads((work / "pairs.json").read_text())
    total = args.warmup + args.steps
    n_pairs = total * w["pairs_per_step"]
    records = (records * (-(-n_pairs // len(records))))[:n_pairs]

    model_dir = spec["model_dir"]
    config = model_config(json.loads((Path(model_dir) / "config.json").read_text()))
    # A 1-device ("fsdp", "tp") mesh as in tunix's own CLI (peft_main): without a mesh tunix skips
    # `_shard_optimizer`, the optimizer state starts uncommitted and the train step compiles twice.
    mesh = mesh_lib.create_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1])
    model = qwen2_params.create_model_from_safe_tensors(model_dir, config, mesh=mesh, dtype=jnp.float32)
    ref_model = qwen2_params.create_model_from_safe_tensors(model_dir, config, mesh=mesh, dtype=jnp.float32)

    optimizer = optax.chain(
        optax.clip_by_global_norm(w["clip_norm"]),
        optax.adamw(w["learning_rate"], b1=w["b1"], b2=w["b2"], eps=w["eps"], weight_decay=0.0),
    )
    training_config = DPOTrainingConfig(
        algorithm="dpo", beta=w["beta"], eval_every_n_steps=total + 1, max_steps=total,
        checkpoint_root_directory=None, metrics_logging_options=None, pbar_description=None,
    )
    clock = StepClock()
    trainer = TimedDPOTrainer(model=model, ref_model=ref_model, optimizer=optimizer, training_config=training_config)
    trainer.clock = clock
    trainer.with_training_hooks(clock)
    with warnings.catch_warnings():
        # tunix reads the mesh from `pxla.thread_resources`, which only the legacy `with mesh:` sets.
        warnings.filterwarnings("ignore", message=".*with mesh.*", category=DeprecationWarning)
        with mesh:
            trainer.train(batches(records, w["pairs_per_step"]), eval_ds=None)

    times = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    logger = trainer.metrics_logger
    learning_rates = (
        [float(x) for x in logger.get_metric_history("", "learning_rate", "train")]
        if logger.metric_exists("", "learning_rate", "train") else []
    )
    result = dict(
        implementation="tunix", layout="duplicated", reference=args.reference,
        step_seconds=times[args.warmup:], compile_seconds=times[0] if times else 0.0,
        losses=clock.losses, learning_rates=learning_rates, reference_seconds_per_pair=0.0,
        versions=dict(jax=jax.__version__, tunix=importlib.metadata.version("google-tunix")),
        loss_terms="dpo only (no SFT term)",
    )
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"tunix ({args.reference}): step seconds {[round(t, 3) for t in times]}, losses {clock.losses}")


if __name__ == "__main__":
    main()
