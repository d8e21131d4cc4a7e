"""Issue #25 for training: handled failures are one line per event (the CLI's logging set-up,
ipo_jax/log.py), a save on a full disk is one error line, and the size rules of
ipo_jax/train/data.py refuse a run before anything is written. The table-driven bad-input cases
(exit 2, one line, nothing written) are rows of tests/test_cli.py BAD_INPUTS."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ipo_jax import log as cli_log
from ipo_jax.cli import main
from ipo_jax.train import data

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "train_tiny_cpu.py")


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--config", CONFIG, f"--config.train.out={out}", f"--config.reference.cache_dir={out.parent}", *extra]


# ----------------------------------------------------------------------------- the logging set-up


def _emit_one_of_each():
    logging.getLogger("ipo_jax.train.loop").info("resumed from somewhere")
    logging.getLogger("ipo_jax.train.checkpoints").warning("checkpoint 6 is unreadable")
    logging.getLogger("jax._src.dispatch").info("compiling a program")  # third-party INFO
    logging.getLogger("jax._src.xla_bridge").warning("a backend note\nwith a second line")
    logging.getLogger("absl").error("Save Finalize thread failed.")  # orbax's echo of a failure raised to us
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown every time, not once per place
        warnings.warn("a library's DeprecationWarning", DeprecationWarning, stacklevel=1)
    try:
        raise RuntimeError("inner")
    except RuntimeError:
        logging.getLogger("ipo_jax.x").exception("a handled failure")


def test_default_logging_is_ours_at_info_and_third_parties_one_line_at_warning(capsys):
    with cli_log.cli_logging(verbose=False):
        _emit_one_of_each()
    captured = capsys.readouterr()
    assert captured.out == "resumed from somewhere\n"
    assert captured.err.splitlines() == ["warning: checkpoint 6 is unreadable", "warning (jax._src.xla_bridge): a backend note",
                                         "error: a handled failure"]
    assert "Traceback" not in captured.err


def test_verbose_logging_shows_everything_with_names_and_tracebacks(capsys):
    with cli_log.cli_logging(verbose=True):
        _emit_one_of_each()
    err = capsys.readouterr().err
    for line in ("INFO ipo_jax.train.loop: resumed from somewhere", "INFO jax._src.dispatch: compiling a program",
                 "ERROR absl: Save Finalize thread failed.", "DeprecationWarning: a library's DeprecationWarning",
                 "ERROR ipo_jax.x: a handled failure", "Traceback (most recent call last):", "RuntimeError: inner"):
        assert line in err, line


def test_the_set_up_is_undone_after_the_command(capsys):
    root, before = logging.getLogger(), list(logging.getLogger().handlers)
    levels = {name: logging.getLogger(name).level for name in ("", "ipo_jax", "absl", "orbax", "py.warnings")}
    with cli_log.cli_logging(verbose=False):
        pass
    assert root.handlers == before
    assert {name: logging.getLogger(name).level for name in levels} == levels
    logging.getLogger("ipo_jax.x").info("not shown: no command is running")
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KB tmpfs: room for config.json, the tokenizer and the metrics, not for a checkpoint."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_leaves_no_partial_save(small_disk):
    """Before: 326 lines on stderr, 4 tracebacks (orbax's threads each logged the failure); then a
    process that printed its error and hung (tensorboardX's writer thread had died on the full
    disk), and 7 more tracebacks at exit (orbax's failed write tasks, collected by asyncio). The
    real command, in its own process: a hang fails here after 540 s instead of stalling the suite."""
    out = small_disk / "run"
    done = subprocess.run([sys.executable, "-m", "ipo_jax.cli", *_train_args(out, "--config.train.max_steps=4",
                                                                             "--config.train.save_every=2")],
                          capture_output=True, text=True, timeout=540, cwd=REPO)
    assert done.returncode == 2, done.stderr[-2000:]
    # the save of step 2 fills the disk in the background; whichever write meets the full disk first
    # (the checkpoint, or step 3's metrics line or event) is the one line
    event_files = [str(p) for p in (out / "tensorboard").glob("events.out.tfevents.*")]
    err = [line for line in done.stderr.splitlines() if not _is_compile_notice(line)]
    assert err in [[f"ipo-jax train: error: cannot write {path}: No space left on device"]
                   for path in (out / "checkpoints" / "2", out / "metrics.jsonl", *event_files)], done.stderr[-2000:]
    assert "Traceback" not in done.stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == []  # the partial save was removed


def _is_compile_notice(line: str) -> bool:
    """XLA's own banner on a slow (loaded) machine, printed by C++ past Python's logging."""
    return line.strip("*") == "" or "Very slow compile?" in line


def test_an_event_file_on_a_full_disk_is_the_os_error_naming_it_not_a_hang(small_disk):
    """tensorboardX's writer thread died on the full disk and the next add_scalar waited forever on
    its queue: the CI run that hung. Events are now written in the caller's thread."""
    import errno

    from ipo_jax.train.metrics import EventFile

    events = EventFile(small_disk / "tensorboard")
    (small_disk / "filler").write_bytes(b"\0" * (small_disk_free(small_disk) - 1024))  # leaves under a page
    with pytest.raises(OSError) as e:
        for step in range(1000):  # a few KB of events: fills the last page
            events.add_scalars({f"metric_{i}": float(i) for i in range(20)}, step)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(events.path))


def small_disk_free(disk: Path) -> int:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


# orbax closes its asyncio loop while tensorstore still reports the failed writes back to it: noise
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_model_export_on_a_full_disk_is_the_os_error_naming_it_and_leaves_nothing(small_disk):
    import errno

    from ipo_jax.checkpoint import save_orbax
    from ipo_jax.models.decoder import init_decoder
    from ipo_jax.models.presets import preset_config

    with pytest.raises(OSError) as e:  # a 4096-token vocabulary: 2 MB of float32 embeddings, twice (untied)
        save_orbax(init_decoder(preset_config("tiny-llama", vocab_size=4096), seed=0), small_disk / "final")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(small_disk / "final"))
    assert list(small_disk.iterdir()) == []  # the temporary directory went with it


def test_a_tensorstore_write_error_is_read_as_the_os_error_it_holds():
    from ipo_jax.checkpoint.orbax import os_error_from

    store = ValueError('RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database at local file "/r/2.orbax-checkpoint-tmp/": '
                       "Failed to write 84293 bytes to file 21: No space left on device [os_error_code='28']")
    wrapped = RuntimeError("Save Finalize thread failed")
    wrapped.__cause__ = store
    for error in (store, wrapped):
        found = os_error_from(error, "/r/2")
        assert (found.errno, found.strerror, found.filename) == (28, os.strerror(28), "/r/2")
    assert os_error_from(ValueError("DATA_LOSS: checksum mismatch"), "/r/2") is None  # not a write that failed
    assert os_error_from(PermissionError(13, "Permission denied", "/r/x"), "/r").filename == "/r/x"


# ----------------------------------------------------------------------------- size rules (ipo_jax/train/data.py)


def test_a_batch_beyond_the_hosts_memory_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "host_memory_bytes", lambda: 64 * 2**10)  # a 64 KiB host
    out = tmp_path / "run"
    assert main(_train_args(out, "--config.data.pairs_per_micro=16", "--config.data.micro_batches=4")) == 2
    err = capsys.readouterr().err
    # 16 x 4 rows of 256 tokens (the bucket of the longest sample pair), 7 int32 + 2 bool arrays per token slot
    assert err == ("ipo-jax train: error: one step's batch needs 480 KiB of host memory (64 rows of 256 tokens, 30 bytes "
                   "per token) but this host has 64 KiB; lower data.pairs_per_micro, data.micro_batches or data.max_length\n")
    assert not out.exists()


def test_host_memory_is_the_smaller_of_physical_memory_and_the_cgroup_limit():
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < data.host_memory_bytes() <= physical
