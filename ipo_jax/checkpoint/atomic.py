"""Crash-safe output directories: write into a temporary sibling, rename into place when complete
(the directory counterpart of `ipo_jax.io.atomic_write_bytes`, sharing its `fsync_dir`).

The finished directory gets ordinary modes (0666 / 0777 less the umask: 0644 files and 0755
directories as usual) whatever the writers used (safetensors writes 0600). A process killed
mid-write leaves `.<name>.tmp-<pid>` (and, between its two renames, `.<name>.old-<pid>`);
`remove_stale_temporaries` clears those when the next run starts. In a run of several JAX
processes the pid is process 0's, shared by all (`ipo_jax.distributed.agreed_token`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from ipo_jax.distributed import agreed_token, all_processes, barrier, is_main_process
from ipo_jax.io import fsync_dir


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out_dir` only if the block finishes.

    A non-empty `out_dir` is refused unless `overwrite`; the old contents are removed only
    after the new directory is in place.

    Several JAX processes: every process calls this together and gets the same temporary path
    (named by `agreed_token`, not by its own pid), so writers that coordinate among themselves
    (orbax) write into one directory; process 0 alone checks, creates and renames, and the
    others wait for it at barriers on the way in and out. Files only process 0 should write
    are the caller's to guard (`ipo_jax.distributed.is_main_process`).
    """
    out_dir = Path(out_dir)
    main = is_main_process()
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{agreed_token()}"
    refusal = None
    if main:
        try:
            remove_stale_temporaries(out_dir.parent, out_dir.name)  # a killed earlier write of this same directory
            if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
                refusal = FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
            else:
                out_dir.parent.mkdir(parents=True, exist_ok=True)
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir()
        except OSError as e:  # a read-only or full disk: agreed below like a refusal, so no process waits
            refusal = e
    if not all_processes(refusal is None):  # every process stops, not only the one that checked
        raise refusal or FileExistsError(f"{out_dir}: process 0 could not prepare it (see its output)")
    try:
        yield tmp
        barrier(f"written {out_dir}")  # every process's part is in tmp
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main:
        set_ordinary_modes(tmp)
        fsync_dir(tmp)  # the directory's entries are on disk before it becomes visible
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"  # process 0 alone renames
            out_dir.rename(old)
        tmp.rename(out_dir)
        fsync_dir(out_dir.parent)  # the rename itself survives a power loss
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    barrier(f"committed {out_dir}")  # no process reads out_dir before it is in place


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_ordinary_modes(root: Path) -> None:
    """Files 0666 and directories 0777, less the umask, under (and including) `root`."""
    mask = _umask()
    for directory, dirs, files in os.walk(root):
        os.chmod(directory, 0o777 & ~mask)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove the `.<name>.tmp-<pid>` leftovers of killed writers in `directory` (files or
    directories, from `atomic_output_dir` and `ipo_jax.io`); returns what was removed. A
    `.<name>.old-<pid>` whose `<name>` is missing (killed between the two renames) is the
    previous complete version and is renamed back; one beside its `<name>` is removed. Entries of
    processes still running on this host are left alone; with `name`, only that entry's."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        match = _TEMPORARY.match(path.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        target = directory / match["name"]
        if match["kind"] == "old" and not target.exists():
            path.rename(target)
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed.append(path)
    return removed
