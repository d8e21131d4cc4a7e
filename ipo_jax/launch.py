"""`ipo-jax launch`: run one stage as N JAX processes on this machine (development and CI).

    ipo-jax launch --processes 2 --devices-per-process 4 -- train --config configs/train_tiny_cpu.py

Each process is `ipo-jax STAGE ARGS...` with JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free
port), JAX_NUM_PROCESSES and JAX_PROCESS_ID set, on CPU with D simulated devices and gloo
collectives over loopback: the environment a SLURM job, a TPU slice or a JobSet gives each host
(`ipo_jax.distributed`). Every output line is prefixed with its process index (`[0] ...`);
gloo's connection chatter ("[Gloo] Rank 3 is connected to 7 peer ranks") is left out.
SIGINT and SIGTERM are forwarded to every process (a SIGTERM'd training run checkpoints and
exits 143 on all of them; the launcher waits for every one to finish its save); a second signal
kills them all. When one process fails on its own, the others are stopped -- they could only wait
for it in their next collective -- and the launcher exits with the failed process's code (128 + N
for a process killed by signal N). On a real cluster the stages start without this:
see README "Running on a TPU pod or several GPUs".
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from ipo_jax.distributed import COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV

# How long the others get to exit after one process failed, before they are killed.
STOP_GRACE_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(index: int, processes: int, port: int, devices: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({COORDINATOR_ENV: f"127.0.0.1:{port}", NUM_PROCESSES_ENV: str(processes), PROCESS_ID_ENV: str(index),
                "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"})
    for name in [k for k in env if k.startswith("SLURM_")]:  # a launch inside a SLURM allocation is not srun
        del env[name]
    if devices is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    return env


# gloo's C++ logging of each connection it opens (one line per device and collective group; the
# lines of several threads arrive interleaved, so any piece of one is dropped)
_GLOO_CHATTER = re.compile(r"\[Gloo\]|peer ranks|^\s*\d+\s*$")


def _relay(index: int, stream, sink, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if _GLOO_CHATTER.search(line):
            continue
        line = line.rstrip("\r").rsplit("\r", 1)[-1]  # tqdm redraws with \r: keep the line's last state
        with lock:
            sink.write(f"[{index}] {line}\n")
            sink.flush()
    stream.close()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def launch(processes: int, devices_per_process: int | None, command: list[str], *, port: int | None = None) -> int:
    """Run `ipo-jax COMMAND` as `processes` JAX processes; the first failure's exit code, or 0."""
    if processes < 1:
        raise ValueError(f"--processes {processes}: expected at least 1")
    if devices_per_process is not None and devices_per_process < 1:
        raise ValueError(f"--devices-per-process {devices_per_process}: expected at least 1")
    if not command:
        raise ValueError("no stage to launch: give it after `--`, e.g. `ipo-jax launch --processes 2 -- train --config ...`")
    if command[0] == "launch":
        raise ValueError("`ipo-jax launch -- launch ...`: a launcher cannot launch itself")
    port = port or free_port()
    lock = threading.Lock()
    children, relays = [], []
    for index in range(processes):
        child = subprocess.Popen([sys.executable, "-m", "ipo_jax.cli", *command],
                                 env=process_environment(index, processes, port, devices_per_process),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        children.append(child)
        for stream, sink in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
            relay = threading.Thread(target=_relay, args=(index, stream, sink, lock), daemon=True)
            relay.start()
            relays.append(relay)

    forwarded = []  # the signals passed on: every process got them, and may need time to act on them

    def forward(signum, frame):
        forwarded.append(signum)
        for child in children:  # a second signal kills: a process may be stuck waiting for one that died
            if child.poll() is None:
                child.send_signal(signum) if len(forwarded) == 1 else child.kill()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    failed: tuple[int, int] | None = None  # (process index, return code) of the first failure
    try:
        while True:
            codes = [child.poll() for child in children]  # every child polled (any() would stop at the first)
            failed = next(((i, code) for i, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None or all(code == 0 for code in codes):
                break
            time.sleep(0.1)
        if failed is not None and forwarded:  # e.g. SIGTERM: the others are saving their checkpoint, not stuck
            for child in children:
                child.wait()
        elif failed is not None:
            _stop_others(children, failed, lock)
    finally:
        for child in children:  # never leave a process behind (the launcher itself was killed, ...)
            if child.poll() is None:
                child.kill()
                child.wait()
        for relay in relays:
            relay.join(timeout=5)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if failed is None else _exit_code(failed[1])


def _stop_others(children, failed: tuple[int, int], lock: threading.Lock) -> None:
    index, code = failed
    running = [c for c in children if c.poll() is None]
    if running:
        with lock:
            sys.stderr.write(f"ipo-jax launch: process {index} exited with {_exit_code(code)}; stopping the other "
                             f"{len(running)} (they would wait for it in their next collective)\n")
    for child in running:
        child.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in running:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


__all__ = ["STOP_GRACE_SECONDS", "free_port", "launch", "process_environment"]
