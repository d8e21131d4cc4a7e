"""A run's checkpoints: orbax's CheckpointManager over <train.out>/checkpoints/<step>/{state,meta},
saving with each array's checksum, and resuming from the newest checkpoint that reads back.

A save cut short by a kill is never read (orbax commits a checkpoint by renaming it into place;
the leftover temporary directory is removed when the manager opens). A save that fails (a full
disk) is one OSError naming the checkpoint and the reason; its partial directory is removed. A
checkpoint that does not read back (corrupted or partial files, or arrays that differ from the
checksums recorded at save time) is reported in one line, the previous one is used, and the
damaged one is moved to <train.out>/unreadable_checkpoints/<step> (<step>.2, .3, ... when that
step was moved aside before); a checkpoint of another model shape is a TrainingError.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from ipo_jax.checkpoint.orbax import CHECKSUMS_KEY, array_checksums, checksum_mismatches, os_error_from
from ipo_jax.distributed import all_processes, barrier, is_main_process
from ipo_jax.train.errors import TrainingError

log = logging.getLogger(__name__)


def checkpoint_manager(directory: Path, keep: int, *, asynchronous: bool = True) -> ocp.CheckpointManager:
    """The run's orbax CheckpointManager: <directory>/<step>/{state,meta}.

    orbax logs an error with the file's contents for each damaged checkpoint it lists; those are
    silenced here: `restore_newest_readable` reports each unreadable checkpoint in one line."""
    with quiet_orbax():
        return ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=asynchronous,
                # a save cut short by a kill leaves <step>.orbax-checkpoint-tmp; it is never read, and removed here
                cleanup_tmp_directories=True,
            ),
            # handlers known up front, so a checkpoint's array shapes can be read before restoring it
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )


class Checkpoints:
    """Saves of one run: `save` starts an (asynchronous) save of a step, `wait` finishes it; a save
    that fails raises the OSError it stands for (`ipo_jax.checkpoint.orbax.os_error_from`) once."""

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager = manager
        self.directory = Path(manager.directory)
        self.pending: int | None = None  # the step being written in the background

    def save(self, step: int, state, meta: dict) -> None:
        meta = {**meta, CHECKSUMS_KEY: array_checksums(state)}  # verified on restore (flipped bits that still decode)
        self._failing(lambda: self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))))
        self.pending = step

    def wait(self) -> None:
        self._failing(self.manager.wait_until_finished)
        self.pending = None

    def _failing(self, action) -> None:
        """Run `action`; a failed write (this step's or the one pending) becomes an OSError naming it."""
        try:
            action()
        except Exception as e:
            step, self.pending = self.pending, None
            error = os_error_from(e, self.directory / str(step) if step is not None else self.directory)
            if error is None:
                raise
            if step is not None and is_main_process():  # a full disk keeps none of the partial save
                for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(partial, ignore_errors=True)
            # orbax's other write tasks failed too and nobody reads their errors: asyncio reports each
            # when it is collected; collected now, while the command's logging set-up is in place
            gc.collect()
            raise error from None


def _flat_shapes(tree) -> dict[str, tuple]:
    """'params/blocks/mlp/up_proj/kernel' -> (shape, dtype) for every array of a train state or of
    its orbax metadata (where an nnx Variable's array carries a trailing 'value' key, dropped here)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if keys and keys[-1] == "value":
            keys = keys[:-1]
        flat["/".join(keys)] = (tuple(leaf.shape), str(leaf.dtype))
    return flat


def shape_mismatches(metadata_tree, abstract) -> list[str]:
    """What differs between a checkpoint's arrays and this run's train state, by name."""
    stored, wanted = _flat_shapes(metadata_tree), _flat_shapes(abstract)
    problems = [
        f"{name}: the checkpoint has {list(stored[name][0])} {stored[name][1]}, this run's model needs {list(shape)} {dtype}"
        for name, (shape, dtype) in wanted.items() if name in stored and stored[name] != (shape, dtype)
    ]
    problems += [f"{name}: missing from the checkpoint" for name in wanted if name not in stored]
    problems += [f"{name}: in the checkpoint, not in this run's model" for name in stored if name not in wanted]
    return problems


def restore_newest_readable(manager, state, state_shardings, position, out: Path, model_init: str = ""):
    """Restore the newest checkpoint that reads back; (state, position, step or None).

    A checkpoint that fails to restore (corrupted or partial files, or contents that contradict
    its step) is reported and the previous one is tried. Once one reads back, the unreadable
    newer ones are moved to <out>/unreadable_checkpoints/<step> -- kept, never deleted -- so later
    saves of those steps do not collide with them. If none reads back, nothing is moved and the
    run stops: a filesystem outage must not turn into a silent restart from step 0.

    A checkpoint whose arrays have other names or shapes than this run's model is not damaged but
    another model's (a changed config or a reused train.out): an error, never a reason to fall back.
    """
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)
    unreadable: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        _check_same_model(manager, step, abstract, out, model_init)
        restored, reason = _try_restore(manager, step, abstract)
        if reason is not None:
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", out / "checkpoints" / str(step), reason)
            unreadable.append((step, reason))
            continue
        position = restored["meta"]["position"]
        _move_aside(manager, [bad for bad, _ in unreadable], out)
        log.info("resumed from %s (step %d, epoch %d, batch %d)", out / "checkpoints" / str(step), step,
                 position["epoch"], position["batch"])
        return restored["state"], position, step
    if unreadable:
        listed = "\n  ".join(f"{out / 'checkpoints' / str(s)}: {reason}" for s, reason in unreadable)
        raise TrainingError(
            f"none of the {len(unreadable)} checkpoints in {out / 'checkpoints'} reads back:\n  {listed}\n"
            f"nothing was moved. If the filesystem is healthy and they are really damaged, move "
            f"{out / 'checkpoints'} aside and rerun to start from step 0"
        )
    return state, position, None


def _check_same_model(manager, step: int, abstract, out: Path, model_init: str) -> None:
    """A checkpoint whose stored arrays are not this run's is a TrainingError (unreadable metadata
    is left to the restore, which fails too and says why)."""
    try:
        with quiet_orbax():
            metadata = manager.item_metadata(step)["state"]
        problems = shape_mismatches(getattr(metadata, "tree", metadata), abstract) if metadata is not None else []
    except Exception:  # noqa: BLE001 -- orbax raises many types for damaged metadata
        problems = []
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise TrainingError(
            f"checkpoint {out / 'checkpoints' / str(step)} holds a model of another shape than this run's "
            f"(model.init {model_init!r}):\n  {shown}\nresume with the config that wrote it, or choose a new train.out"
        )


def _try_restore(manager, step: int, abstract):
    """(restored, None) or (None, one-line reason), agreed by every process.

    Several processes each read their own shards: a damaged file may fail on one of them only.
    Each stage's verdict is agreed before the next (the checksums are a computation over every
    process's arrays), so all processes restore the same step or all move on to the previous one."""
    restored, reason = None, None
    try:
        with quiet_orbax():
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
    except Exception as e:  # noqa: BLE001 -- orbax / tensorstore raise many types for damaged files
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]  # one line
    if all_processes(reason is None):
        reason = _contents_problem(restored, step)
        if not all_processes(reason is None) and reason is None:
            reason = "another process found its contents damaged"
    elif reason is None:
        reason = "another process could not read its part of it"
    return (None, reason) if reason is not None else (restored, None)


def _contents_problem(restored, step: int) -> str | None:
    """Why a restored checkpoint cannot be trusted (its contents contradict its step, or an array's
    checksum differs from the one recorded at save time), or None. Every process calls it."""
    try:
        position = restored["meta"]["position"]
        if int(restored["state"].step) != step or not {"epoch", "batch"} <= set(position):
            return f"ValueError: its contents contradict its step: state.step {int(restored['state'].step)}, position {position}"
    except (KeyError, TypeError) as e:
        return f"{type(e).__name__}: its meta item lacks the data position ({e})"
    recorded = restored["meta"].get(CHECKSUMS_KEY)
    if recorded is None:  # checkpoints written before checksums were recorded have none
        return None
    bad = checksum_mismatches(recorded, restored["state"])
    if bad:
        return f"ValueError: {len(bad)} array(s) differ from the checksums recorded at save time: {'; '.join(bad[:3])}"
    return None


def _move_aside(manager, steps: list[int], out: Path) -> None:
    """Move unreadable checkpoints to <out>/unreadable_checkpoints/<step> (process 0), then reload."""
    if not steps:
        return
    if is_main_process():
        for bad in steps:
            aside = _unused_path(out / "unreadable_checkpoints" / str(bad))
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out / "checkpoints" / str(bad)), str(aside))
            log.info("moved unreadable checkpoint %s to %s (kept for inspection)", out / "checkpoints" / str(bad), aside)
    barrier("unreadable checkpoints moved")  # no process reloads the directory before they are moved
    manager.reload()


def _unused_path(path: Path) -> Path:
    """`path`, or `path.2`, `path.3`, ... if it is taken (a step moved aside twice is kept twice, side by side)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _ignore_closed_loop_noise(unraisable) -> None:
    """orbax closes its asyncio loop while tensorstore still reports a damaged read back to it:
    a RuntimeError('Event loop is closed') with no bearing on the outcome, printed as a
    traceback per array. Drop those; everything else goes to Python's default hook."""
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def quiet_orbax():
    """A restore attempt that may fail: orbax's and absl's own error logs (with tracebacks) are
    silenced -- the caller reports a failed restore in one line of its own (the CLI quiets them
    for the whole command: ipo_jax/log.py)."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "orbax.checkpoint")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = _ignore_closed_loop_noise  # stays: the noise can arrive after the restore returns
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
