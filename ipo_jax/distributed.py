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
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

log = logging.getLogger(__name__)

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


class DistributedSetupError(ValueError):
    """The environment describes several processes inconsistently (exit code 2)."""


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


__all__ = ["COORDINATOR_ENV", "NUM_PROCESSES_ENV", "PROCESS_ID_ENV", "DistributedSetupError", "agreed_token",
           "all_processes", "any_process", "barrier", "environment_describes_several_processes",
           "initialize_from_environment", "is_main_process"]
