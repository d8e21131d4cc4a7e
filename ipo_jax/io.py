"""Crash-safe file writes for the whole project: the one atomic write.

`atomic_write_bytes` writes a file so that a reader (or a restarted run) sees either the old
file or the complete new one, never a part: the data goes to a temporary name in the same
directory, is flushed and fsynced, renamed over the target, and the directory is fsynced so
that the rename itself survives a power loss (a later file, written after it, may rely on it).
`atomic_write_text` and `atomic_write_jsonl` are the same for text and JSON lines; `jsonl_bytes`
is the exact bytes `atomic_write_jsonl` writes (callers that record a checksum use it).
`fsync_dir` is the directory half, shared with `ipo_jax.checkpoint.atomic`.

Temporary names are ``.<name>.tmp-<pid>``: hidden, per process, and recognisable so a stage
can remove the leftovers of a killed run before it starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def temp_path(path: str | os.PathLike[str]) -> Path:
    """The temporary sibling `atomic_write_bytes` writes `path` through."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make renames in `directory` durable.  A no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically and durably (see the module docstring); returns `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # the write failed before the rename: leave no temporary behind
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    """One JSON document per line (UTF-8, non-ASCII kept), each line ending in a newline."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    return atomic_write_bytes(path, jsonl_bytes(rows))


def atomic_write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2) -> Path:
    """`value` as one JSON document (indented, newline-terminated)."""
    return atomic_write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_jsonl", "atomic_write_text", "fsync_dir",
           "jsonl_bytes", "temp_path"]
