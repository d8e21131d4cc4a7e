"""Running a training run (`train` = `build_run` then `run_training`): the loop around the jitted
step, with resuming, checkpoints, metrics, progress and SIGTERM. Building the run (data, model,
reference, optimizer, step) is ipo_jax/train/build.py; checkpoints are ipo_jax/train/checkpoints.py.

Output directory (config.train.out):
  config.json           the resolved config of the run
  tokenizer/            the tokenizer used (so the final model exports with it)
  checkpoints/<step>/   orbax: train state (params, optimizer, counters) + data position
  metrics.jsonl         one JSON line per step (appended; after a resume, the re-run steps
                        appear again and the later line for a step is the one that counts;
                        update_applied 0 marks a skipped non-finite step, whose non-finite
                        values are null: every line is strict JSON)
  unreadable_checkpoints/<step>/   damaged checkpoints moved out of the way (see below)
  tensorboard/          event files (tensorboard --logdir <out>/tensorboard)
  skipped_pairs.jsonl   pairs dropped as longer than data.max_length (prompt + prefix + chosen +
                        rejected; never cut), one line each: id, reason, file:line, lengths
  final/                the trained policy as an ipo-jax model directory (convert it to HF
                        with `ipo-jax convert --from orbax --to hf <out>/final <dir>`)

Re-running the same command resumes from the newest complete checkpoint and continues with
exactly the batches and optimizer state an uninterrupted run would have had. A save cut short
by a kill is never read (orbax commits a checkpoint by renaming it into place; the leftover
temporary directory is removed). A checkpoint that does not read back (corrupted or partial
files) is reported, the previous one is used, and the damaged one is moved to
unreadable_checkpoints/<step> (<step>.2, .3, ... when that step was moved aside before); a
checkpoint of another model shape, or a train.out holding a run with other settings
(RUN_IDENTITY) or no run at all, is an error. Every checkpoint records a checksum of each array
(`ipo_jax.checkpoint.orbax.array_checksums`) in its `meta` item; a restored state whose arrays
do not match them (flipped bits that still decode) counts as unreadable. Temporary directories
of a save killed half-way (`.final.tmp-PID`, orbax's) are removed when the run starts again.

The settings are validated (ipo_jax/validation.py), the pair files read and tokenised, and sizes
checked against the model's context and the host's memory before anything is written to
train.out (a refused run leaves nothing behind); a train.out whose run never completed a step
may be restarted with other settings (a rejected start does not block the corrected one).

Exit codes: 0 done; EXIT_PREEMPTED (143) after SIGTERM, with a checkpoint of the step reached;
EXIT_TOO_MANY_SKIPS (3) after train.max_consecutive_skips non-finite steps in a row, with a
checkpoint holding the last good state; EXIT_NOT_TRAINED (4) when the run ends with every update
skipped or with non-finite parameters (no final/ is written); the CLI gives 2 for a
TrainingError or a SettingsError (bad input).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time

import jax
from flax import nnx
from tqdm.auto import tqdm

from ipo_jax.checkpoint import save_orbax
from ipo_jax.distributed import any_process, initialize_from_environment
from ipo_jax.train.build import TrainRun, build_run
from ipo_jax.train.checkpoints import Checkpoints, checkpoint_manager, restore_newest_readable
from ipo_jax.train.errors import EXIT_NOT_TRAINED, EXIT_PREEMPTED, EXIT_TOO_MANY_SKIPS, TrainingError
from ipo_jax.train.metrics import MetricsLog
from ipo_jax.train.mfu import peak_flops_per_device, train_flops_per_token
from ipo_jax.train.step import all_finite, batch_shardings, put_batch

log = logging.getLogger(__name__)

__all__ = ["EXIT_NOT_TRAINED", "EXIT_PREEMPTED", "EXIT_TOO_MANY_SKIPS", "TrainingError", "run_training", "train"]


def train(config) -> int:
    """Run (or resume) a training run described by an ml_collections config. Returns the exit code."""
    initialize_from_environment()  # several processes (SLURM, TPU slice, JAX_* variables) or one
    return run_training(build_run(config))


@dataclasses.dataclass
class _Cursor:
    """Where the run stands: its train state, the data position of the next batch, and the steps
    it started from and last saved."""

    state: object
    position: dict
    start: int
    last_saved: int | None


def run_training(run: TrainRun) -> int:
    """The loop from the newest readable checkpoint (or step 0) to train.max_steps; the exit code."""
    checkpoints = Checkpoints(checkpoint_manager(run.out / "checkpoints", run.config.train.keep_checkpoints))
    state, position, latest = restore_newest_readable(checkpoints.manager, run.state, run.state_shardings,
                                                      {"epoch": 0, "batch": 0}, run.out, run.config.model.init)
    cursor = _Cursor(state, position, int(state.step), latest)
    try:
        with MetricsLog(run.out) as metrics, Preemption() as preemption, _progress(run, cursor.start) as progress:
            exit_code = _steps(run, checkpoints, cursor, metrics, preemption, progress)
    except BaseException:
        _finish_saves_quietly(checkpoints)
        raise
    checkpoints.wait()
    return exit_code or _finish(run, checkpoints, cursor)


def _steps(run: TrainRun, checkpoints: Checkpoints, cursor: _Cursor, metrics, preemption, progress) -> int:
    peak = peak_flops_per_device(run.config.train.peak_flops_per_device)
    shardings = batch_shardings(run.mesh)
    for step in range(cursor.start, run.max_steps):
        row = _train_step(run, cursor, step + 1, shardings, peak)
        metrics.write(row)
        _show(progress, row, peak)
        exit_code = _after_step(run, checkpoints, cursor, step + 1, row, preemption)
        if exit_code:
            return exit_code
    return 0


def _train_step(run: TrainRun, cursor: _Cursor, step: int, shardings, peak: float | None) -> dict:
    """Update `step` on the next batch; the step's metrics row (also advances the cursor)."""
    batches = run.data.batches
    if cursor.position["batch"] >= batches.batches_per_epoch:
        cursor.position = {"epoch": cursor.position["epoch"] + 1, "batch": 0}
    batch, idx = batches.batch(cursor.position["epoch"], cursor.position["batch"])
    batch.update(run.reference.batch_fields(idx, batch["pair_valid"].shape))
    t0 = time.perf_counter()
    cursor.state, metrics = run.step_fn(cursor.state, put_batch(batch, shardings), run.reference.params)
    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
    seconds = time.perf_counter() - t0
    cursor.position = {"epoch": cursor.position["epoch"], "batch": cursor.position["batch"] + 1}
    tokens = int(batch["segment_ids"].astype(bool).sum())
    row.update(step=step, epoch=cursor.position["epoch"], tokens=tokens, seconds=seconds,
               tokens_per_second=tokens / seconds)
    if peak:
        flops = tokens * train_flops_per_token(run.model_cfg, batch["tokens"].shape[-1], run.reference.on_the_fly)
        row["mfu"] = flops / seconds / (peak * jax.device_count())
    return row


def _after_step(run: TrainRun, checkpoints: Checkpoints, cursor: _Cursor, step: int, row: dict, preemption) -> int:
    """Report a skipped update; save when a stop or the schedule asks for it; the exit code of a stop."""
    state = cursor.state
    if not row["update_applied"]:
        log.warning("step %d: loss or gradient not finite (loss %s, grad norm %s); update skipped (%d in a row, %d in all)",
                    step, row["loss"], row["grad_norm"], int(state.consecutive_skips), int(state.skipped))
    if int(state.consecutive_skips) >= run.config.train.max_consecutive_skips:
        _save(run, checkpoints, cursor, step)  # skipped updates leave the parameters at the last good state
        log.warning("stopping: %d consecutive non-finite steps (loss or gradient); last good state saved at step %d "
                    "(parameters and optimizer state as after step %d, the last applied update); exit code %d",
                    int(state.consecutive_skips), step, step - int(state.consecutive_skips), EXIT_TOO_MANY_SKIPS)
        return EXIT_TOO_MANY_SKIPS
    if any_process(preemption.requested):  # every process stops at the same step, whichever got SIGTERM
        _save(run, checkpoints, cursor, step)
        log.info("SIGTERM: checkpoint saved at step %d; exiting with %d (rerun to resume)", step, EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    if step % run.config.train.save_every == 0 or step == run.max_steps:
        _save(run, checkpoints, cursor, step)
    return 0


def _save(run: TrainRun, checkpoints: Checkpoints, cursor: _Cursor, step: int) -> None:
    meta = {"position": cursor.position, "data_seed": run.config.data.seed, "model_init": run.config.model.init}
    checkpoints.save(step, cursor.state, meta)
    cursor.last_saved = step


def _finish_saves_quietly(checkpoints: Checkpoints) -> None:
    """Let a pending save end while another error is on its way out (that error is the one reported)."""
    try:
        checkpoints.wait()
    except Exception as e:  # noqa: BLE001
        log.debug("a pending checkpoint save failed too: %s", e)


def _finish(run: TrainRun, checkpoints: Checkpoints, cursor: _Cursor) -> int:
    """After the last step: its checkpoint, then the final model -- unless nothing was learned."""
    state, max_steps = cursor.state, run.max_steps
    if cursor.last_saved != max_steps and max_steps > cursor.start:
        _save(run, checkpoints, cursor, max_steps)
        checkpoints.wait()
    if int(state.step) > 0 and int(state.skipped) >= int(state.step):
        log.warning("not trained: all %d updates were skipped (non-finite loss, gradient or update); "
                    "no final model written; exit code %d", int(state.step), EXIT_NOT_TRAINED)
        return EXIT_NOT_TRAINED
    if not bool(all_finite(state.params)):
        log.warning("not trained: the parameters are not finite after step %d; no final model written; exit code %d",
                    int(state.step), EXIT_NOT_TRAINED)
        return EXIT_NOT_TRAINED
    save_orbax(nnx.merge(run.graphdef, state.params), run.out / "final", overwrite=True)
    log.info("done: %d steps, %d skipped updates; final model in %s", max_steps, int(state.skipped), run.out / "final")
    return 0


# ----------------------------------------------------------------------------- progress, metrics, signals


def _progress(run: TrainRun, start: int) -> tqdm:
    """The step bar (on a terminal, process 0): loss, reward accuracy, tokens/s and MFU of the last step."""
    return tqdm(total=run.max_steps, initial=start, desc="train", unit="step",
                disable=None if jax.process_index() == 0 else True)


def _show(progress: tqdm, row: dict, peak: float | None) -> None:
    progress.update(1)
    progress.set_postfix(
        loss=f"{row['loss']:.4f}",
        **({"acc": f"{row['reward_accuracy']:.2f}"} if "reward_accuracy" in row else {}),  # none for SFT (ipo_jax/sft)
        tok_s=f"{row['tokens_per_second']:.0f}",
        **({"mfu": f"{row['mfu']:.1%}"} if peak else {}),
    )


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (while the `with` block runs)."""

    def __enter__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)

