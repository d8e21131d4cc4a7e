"""A run's metrics: metrics.jsonl (one JSON object per step) and TensorBoard event files, both
written by process 0 in the caller's thread.

tensorboardX's SummaryWriter hands every event to a writer thread through a bounded queue. When
that thread dies on a failed write (a full disk), nothing reports it and the next `add_scalar`
blocks forever on the full queue: a training run that hangs instead of stopping. Here each scalar
is appended and flushed where it is logged, so a failed write is the OSError naming the event
file, raised to the loop like any other write error.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger(__name__)


def _tensorboardx():
    """tensorboardX's record writer and protos, imported without torch when torch is not loaded yet:
    tensorboardX imports torch (seconds, on every restart of a preempted run) only to recognise
    torch tensors, and the loops log Python floats. A later `import torch` works as usual."""
    if "torch" not in sys.modules and "tensorboardX" not in sys.modules:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, as when it is not installed
        try:
            return _tensorboardx()
        finally:
            del sys.modules["torch"]
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary

    return EventsWriter, Event, Summary


class EventFile:
    """One run's event file under `directory` (events.out.tfevents.<time>.<host>, read by TensorBoard)."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        writer_class, self._event, self._summary = _tensorboardx()
        self._writer = self._failing(lambda: writer_class(str(directory / "events")), directory)
        self.path = Path(self._writer._file_name)

    def add_scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """Append one event holding every value at `step`, and flush it to the file."""
        summary = self._summary(value=[self._summary.Value(tag=f"{prefix}{tag}", simple_value=float(v))
                                       for tag, v in values.items()])
        event = self._event(wall_time=time.time(), step=int(step), summary=summary)
        self._failing(lambda: (self._writer.write_event(event), self._writer.flush()), self.path)

    def close(self) -> None:
        self._failing(self._writer.close, self.path)

    @staticmethod
    def _failing(action, path: Path):
        try:
            return action()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None


class MetricsLog:
    """metrics.jsonl (strict JSON: a non-finite value, as a skipped step's loss, is null) and the
    TensorBoard event file (finite values only, under `<out>/tensorboard`, tags `<prefix><name>`),
    written by process 0; a write that fails is the OSError naming its file."""

    def __init__(self, out: Path, prefix: str = "train/"):
        self.path, self.prefix, self.jsonl, self.board = out / "metrics.jsonl", prefix, None, None
        if jax.process_index() == 0:
            drop_partial_last_line(self.path)
            self.jsonl = open(self.path, "a", buffering=1)  # noqa: SIM115 -- closed in __exit__
            self.board = EventFile(out / "tensorboard")

    def __enter__(self):
        return self

    def write(self, row: dict) -> None:
        if self.jsonl is None:
            return
        try:
            self.jsonl.write(json.dumps({k: v if np.isfinite(v) else None for k, v in row.items()}, allow_nan=False) + "\n")
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        # as null in the JSON: absent from the event file
        self.board.add_scalars({k: v for k, v in row.items() if np.isfinite(v)}, row["step"], self.prefix)

    def __exit__(self, *exc):
        if self.jsonl is not None:
            self.jsonl.close()
            try:
                self.board.close()
            except OSError:
                if exc[0] is None:  # else the error already on its way out is the one reported
                    raise


def drop_partial_last_line(path: Path) -> None:
    """A run killed while appending to metrics.jsonl may leave a last line without its newline;
    cut it off (the step is recomputed after the resume) so the file stays one JSON object a line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    log.info("%s: dropping a partial last line of %d bytes (a killed write); its step is recomputed", path, len(data) - keep)
    with open(path, "r+b") as f:
        f.truncate(keep)
