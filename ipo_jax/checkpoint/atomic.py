"""Crash-safe output directories: write into a temporary sibling, rename into place when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, overwrite: bool = False, *, enabled: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out_dir` only if the block finishes.

    A non-empty `out_dir` is refused unless `overwrite`; the old contents are removed only
    after the new directory is in place. With enabled=False (non-writer processes) nothing
    is touched and the yielded path must not be written.
    """
    out_dir = Path(out_dir)
    if not enabled:
        yield out_dir
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
