"""Several JAX processes: start-up from the environment, and the few agreements they need.

`initialize_from_environment` joins this process to a multi-process run when the environment
describes one, and does nothing otherwise (one process is the default):

  * explicit:  JAX_COORDINATOR_ADDRESS (host:port of process 0) + JAX_NUM_PROCESSES +
               JAX_PROCESS_ID (read here: jax itself reads none of them outside a cluster it
               detects), e.g. as Kubernetes / JobSet pods or `ipo-jax launch` set them;
  * SLURM:     `srun` with more than one task (jax reads SLURM_* itself);
  * TPU VMs:   a slice of several hosts (TPU_WORKER_HOSTNAMES; jax asks the TPU metadata).

On CPU the processes' collectives go through gloo (over loopback, or the network).

The agreements (every process calls each one at the same point, or they wait for each other):
  * `barrier(name)`       no process passes until all arrived;
  * `agreed_token()`      one string every process gets the same of (process 0's pid): the
                          temporary names of shared directories (never each process's own pid);
  * `any_process(flag)`   True on every process when it is True on one (a SIGTERM that reached
                          one host first stops all of them at the same step);
  * `all_processes(flag)` True on every process only when it is True on all.

Stages where each process works on its own share (sample, build-pairs, csr, eval) use
`share_devices()` (this process's own devices: a model there runs no collective with the other
processes, which feed other prompts) and `my_share(n)` (positions i, i + N, i + 2N, ... of n
items), and wrap the share in `shares_joined(name)`: leaving it, every process has finished its
share (process 0 then merges the parts, alone); a process whose stage raised (in its share or
before: `report_failure`, called by the CLI) tells the others, which stop with `PeerProcessError`
instead of waiting for it. The wait goes through the
coordination service's key-value store (no device collective, so no collective timeout however
long the other shares take). A process killed outright stops sending heartbeats, and jax's
coordination service ends the others (about 100 s later: `heartbeat_timeout_seconds`); past
IPO_JAX_SHARE_TIMEOUT seconds (default 7 days) the wait ends with an error naming the processes
that never finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import jax
import numpy as np

log = logging.getLogger(__name__)

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


SHARE_TIMEOUT_ENV = "IPO_JAX_SHARE_TIMEOUT"
DEFAULT_SHARE_TIMEOUT = 7 * 24 * 3600.0  # seconds: a share may take days; a dead process is noticed sooner


class DistributedSetupError(ValueError):
    """The environment describes several processes inconsistently (exit code 2)."""


class PeerProcessError(RuntimeError):
    """Another process failed its share of a stage, died, or never finished it."""


def _int_env(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedSetupError(f"environment variable {name}={text!r}: expected an integer") from None


def environment_describes_several_processes() -> bool:
    return bool(
        os.environ.get(COORDINATOR_ENV)
        or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
        or len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    )


def initialize_from_environment() -> None:
    """Join the multi-process run the environment describes (module docstring); idempotent."""
    if jax.distributed.is_initialized() or not environment_describes_several_processes():
        return
    address = os.environ.get(COORDINATOR_ENV) or None
    count, index = _int_env(NUM_PROCESSES_ENV), _int_env(PROCESS_ID_ENV)
    if address and (count is None) != (index is None):
        raise DistributedSetupError(f"{COORDINATOR_ENV} is set with only one of {NUM_PROCESSES_ENV} and "
                                    f"{PROCESS_ID_ENV}; set both (or neither, under SLURM or on a TPU slice)")
    if count is not None and not (count >= 1 and 0 <= index < count):
        raise DistributedSetupError(f"{PROCESS_ID_ENV}={index} with {NUM_PROCESSES_ENV}={count}: expected "
                                    f"0 <= {PROCESS_ID_ENV} < {NUM_PROCESSES_ENV}")
    if address and count is None and not os.environ.get("SLURM_JOB_ID") and not os.environ.get("TPU_WORKER_HOSTNAMES"):
        raise DistributedSetupError(f"{COORDINATOR_ENV}={address} but {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} are not "
                                    "set; jax cannot tell how many processes there are or which one this is")
    # gloo: the CPU backend's collectives across processes (set before the backend starts)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"coordinator_address": address, "num_processes": count, "process_id": index}
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    log.info("process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def is_main_process() -> bool:
    """Process 0: the one that writes shared files (configs, metrics, tokenizers, exports)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _gathered(value: int) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.int32(value)))


def agreed_token() -> str:
    """A string every process gets the same of: process 0's pid (so that a leftover temporary is
    recognised as a dead run's by `ipo_jax.checkpoint.atomic.remove_stale_temporaries` on host 0)."""
    if jax.process_count() == 1:
        return str(os.getpid())
    return str(int(_gathered(os.getpid())[0]))


def any_process(flag: bool) -> bool:
    """`flag` or-ed over every process (the same answer on all)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(_gathered(int(bool(flag))).any())


def all_processes(flag: bool) -> bool:
    """`flag` and-ed over every process (the same answer on all)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(_gathered(int(bool(flag))).all())


def share_devices() -> list:
    """The devices this process uses for its own share of a stage: its local devices when there
    are several processes (a mesh over every process's devices would make each sampling step a
    program all processes must run together, with the same inputs), else all devices."""
    return list(jax.local_devices() if jax.process_count() > 1 else jax.devices())


def my_share(n: int) -> list[int]:
    """The positions of n items that this process handles: i, i + N, i + 2N, ... (N processes)."""
    return list(range(jax.process_index(), n, jax.process_count()))


_share_calls: dict[str, int] = {}


def _share_timeout() -> float:
    text = os.environ.get(SHARE_TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else DEFAULT_SHARE_TIMEOUT
    except ValueError:
        raise DistributedSetupError(f"environment variable {SHARE_TIMEOUT_ENV}={text!r}: expected seconds") from None


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:2000]


_FAILED_PREFIX = "ipo_jax/failed/"


def report_failure(e: BaseException) -> None:
    """Tell the other processes that this one is ending with error `e` (the CLI calls it for any
    error of a stage; a process waiting in `shares_joined` then stops with `PeerProcessError`
    instead of waiting for a share that never comes). A no-op in one process (without starting a
    backend: a stage may fail before it touched a device); never raises."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return
    with contextlib.suppress(Exception):
        from jax._src import distributed as jax_distributed

        jax_distributed.global_state.client.key_value_set(f"{_FAILED_PREFIX}{jax.process_index()}", f"failed: {_one_line(e)}",
                                                          allow_overwrite=True)


@contextlib.contextmanager
def shares_joined(name: str, *, timeout_s: float | None = None, poll_s: float = 0.2):
    """Run this process's share of stage `name` in the block; leave it only when every process
    has finished its own (module docstring). In one process: just the block.

    A block that raises reports the error to the others before it propagates; a process waiting
    here then raises `PeerProcessError` naming the failed process and its error. Every process
    must enter with the same `name` the same number of times (each call its own keys)."""
    if jax.process_count() == 1:
        yield
        return
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    count, index = jax.process_count(), jax.process_index()
    call = _share_calls[name] = _share_calls.get(name, 0) + 1
    prefix = f"ipo_jax/shares/{name}/{call}/"
    try:
        yield
    except BaseException as e:
        report_failure(e)
        raise
    client.key_value_set(f"{prefix}{index}", "ok")
    timeout = _share_timeout() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    while True:
        reports = {int(key.rsplit("/", 1)[-1]): value for key, value in client.key_value_dir_get(prefix)}
        # a process that failed before it got here, or inside its share
        failed = sorted((int(key.rsplit("/", 1)[-1]), value) for key, value in client.key_value_dir_get(_FAILED_PREFIX))
        if failed:
            i, value = failed[0]
            raise PeerProcessError(f"process {i} of {count} failed ({value.removeprefix('failed: ')}) while this "
                                   f"process waited for every share of {name}; this process's share is done")
        missing = [i for i in range(count) if i not in reports]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise PeerProcessError(f"waited {timeout:.0f} s ({SHARE_TIMEOUT_ENV}) for process(es) {missing} of {count} "
                                   f"to finish their share of {name}; giving up")
        time.sleep(poll_s)
        poll_s = min(poll_s * 1.5, 2.0)  # hours of waiting: a few requests a second at most, per process


__all__ = ["COORDINATOR_ENV", "NUM_PROCESSES_ENV", "PROCESS_ID_ENV", "SHARE_TIMEOUT_ENV", "DistributedSetupError",
           "PeerProcessError", "agreed_token",
           "all_processes", "any_process", "barrier", "environment_describes_several_processes",
           "initialize_from_environment", "is_main_process", "my_share", "report_failure", "share_devices",
           "shares_joined"]
