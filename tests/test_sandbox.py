"""The HumanEval sandbox under attack: programs that loop, allocate, fork, write outside their
directory, open sockets or fake a pass must fail without effect (ipo_jax.eval.sandbox)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import pytest

from ipo_jax.eval.sandbox import SandboxError, run_code, run_many

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the sandbox uses Linux namespaces and rlimits")

TIMEOUT = 10.0  # for programs that end by themselves: generous, so a loaded machine cannot turn a result into a timeout
LOOP_TIMEOUT = 2.0  # for programs that never end


@pytest.fixture(scope="module")
def layers() -> tuple[str, ...]:
    """The isolation layers `auto` gets on this machine (each test that needs one skips without it)."""
    result = run_code("pass\n", timeout=TIMEOUT)
    assert result.status == "passed", result
    return result.isolation


def test_correct_solution_passes_and_wrong_one_fails():
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    right = run_code("def add(a, b):\n    return a + b\n" + tests + "check(add)\n", timeout=TIMEOUT)
    wrong = run_code("def add(a, b):\n    return a - b\n" + tests + "check(add)\n", timeout=TIMEOUT)
    assert right.status == "passed" and right.passed
    assert wrong.status == "failed" and not wrong.passed
    assert "AssertionError" in wrong.stderr_tail


def test_run_many_keeps_input_order_in_parallel():
    programs = [f"assert {i} % 2 == 0\n" for i in range(6)]
    results = run_many(programs, workers=3, timeout=TIMEOUT)
    assert [r.status for r in results] == ["passed", "failed"] * 3


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)\nassert False\n",
    "import os\nos._exit(0)\n",
    "raise SystemExit(0)\n",
    "import sys\nprint('IPO-SANDBOX-PASSED-' + '0' * 32)\nsys.stdout.flush()\nimport os\nos._exit(0)\n",
    "import os\nos.close(1)\n",  # the driver cannot print its marker: not a pass either
    "import __main__, os\nprint(getattr(__main__, 'marker', b'').decode())\nos._exit(0)\n",  # not a global
])
def test_exiting_early_with_status_zero_is_not_a_pass(program):
    result = run_code(program + "\ndef check(candidate):\n    assert False\ncheck(None)\n", timeout=TIMEOUT)
    assert result.status == "failed", result


def test_a_pass_is_not_undone_by_a_thread_left_running():
    program = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
    result = run_code(program, timeout=TIMEOUT)
    assert result.status == "passed", result


def test_output_is_truncated_and_capped():
    chatty = run_code("for i in range(20000):\n    print('line', i)\n", timeout=TIMEOUT)
    assert chatty.status == "passed" and len(chatty.stdout_tail) <= 2000 and chatty.stdout_tail.endswith("line 19999")
    flood = run_code("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout=TIMEOUT, max_output_mb=1)
    assert flood.status == "failed" and "File too large" in flood.stderr_tail, flood


def test_infinite_loop_is_killed_by_the_timeout():
    started = time.monotonic()
    result = run_code("while True:\n    pass\n", timeout=LOOP_TIMEOUT)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert elapsed < LOOP_TIMEOUT + 2.0


def test_sleeping_program_is_killed_by_the_wall_clock_timeout():
    started = time.monotonic()
    result = run_code("import time\ntime.sleep(60)\n", timeout=1.0)
    assert result.status == "timeout" and time.monotonic() - started < 1.0 + 2.0


@pytest.mark.parametrize("program", [
    "x = bytearray(8 * 1024 ** 3)\n",  # one huge allocation
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n",  # a steady leak
])
def test_memory_bomb_is_stopped(program):
    result = run_code(program, timeout=TIMEOUT, memory_mb=256)
    assert result.status == "memory", result
    assert len(bytearray(10 ** 6)) == 10 ** 6  # this process is unaffected


def test_write_outside_the_directory_fails_without_effect(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_code(f"open({str(target)!r}, 'w').write('x')\n", timeout=TIMEOUT)
    assert result.status == "failed"
    assert not target.exists()


def _reachable_by_anyone(path: str) -> bool:
    """Whether every directory on the way to `path` may be entered by any uid (the root path's program uid)."""
    parts = os.path.realpath(path).split(os.sep)
    return all(os.stat(os.sep.join(parts[:i]) or os.sep).st_mode & 0o001 for i in range(1, len(parts) + 1))


PRIVATE_DIRS = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")  # the sandbox covers each with an empty tmpfs


def test_write_around_the_guard_hits_the_read_only_file_system(layers):
    if "readonly-fs" not in layers:
        pytest.skip(f"no read-only mount namespace here (isolation {layers}): only the guard protects")
    # a world-writable directory, so that only the read-only mount (not file permissions) can stop the write;
    # next to this test (not under /tmp, which the sandbox covers with an empty tmpfs of its own)
    here = os.path.dirname(os.path.abspath(__file__))
    if not _reachable_by_anyone(here) or not os.access(here, os.W_OK):
        pytest.skip(f"{here} is not a directory any uid can reach and this test can write in")
    open_dir = tempfile.mkdtemp(prefix="sandbox-test-", dir=here)
    os.chmod(open_dir, 0o777)
    target = os.path.join(open_dir, "escaped.txt")
    try:
        result = run_code(f"import _io\nf = _io.FileIO({target!r}, 'w')\nf.write(b'x')\nf.close()\n", timeout=TIMEOUT)
        # a checkout under /tmp (a CI clone) sits under the sandbox's private tmpfs: the directory is not
        # there at all for the program; anywhere else the read-only mount refuses the write
        covered = any(os.path.realpath(open_dir).startswith(os.path.realpath(d) + os.sep)
                      for d in PRIVATE_DIRS if os.path.isdir(d))
        refusal = "No such file or directory" if covered else "Read-only file system"
        assert result.status == "failed" and refusal in result.stderr_tail, result
        assert not os.path.exists(target)
    finally:
        shutil.rmtree(open_dir)


def test_a_namespace_of_its_own_does_not_make_the_file_system_writable(layers):
    if "readonly-fs" not in layers:
        pytest.skip(f"no read-only mount namespace here (isolation {layers})")
    # around the guard (ctypes re-enabled), a new user + mount namespace: full capabilities there,
    # yet the read-only flags copied from ours are locked
    program = ("import sys\nfor m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m, None)\nimport ctypes, os\n"
               "libc = ctypes.CDLL(None, use_errno=True)\nassert libc.unshare(0x10000000 | 0x20000) == 0\n"
               "MS_REMOUNT, MS_BIND = 32, 4096\n"
               "remounted = libc.mount(None, b'/', None, MS_REMOUNT | MS_BIND, None)\n"
               "assert remounted == 0, os.strerror(ctypes.get_errno())\n")
    result = run_code(program, timeout=TIMEOUT)
    assert result.status == "failed" and "Operation not permitted" in result.stderr_tail, result


def test_writes_inside_the_directory_work_and_the_directory_is_removed():
    result = run_code("import os\nopen('scratch.txt', 'w').write('kept')\nassert open('scratch.txt').read() == 'kept'\n"
                      "os.makedirs('locked/inner')\nopen('locked/inner/f', 'w').close()\n"
                      "os.chmod('locked/inner', 0)\nos.chmod('locked', 0o500)\n"  # still removed afterwards
                      "print(os.getcwd())\n", timeout=TIMEOUT)
    assert result.status == "passed", result
    workdir = result.stdout_tail.strip().splitlines()[-1]
    assert "ipo-sandbox-" in workdir and not os.path.exists(workdir)


@pytest.fixture
def listener():
    """A loopback TCP listener that records every connection it accepts."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    accepted: list[tuple] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, address = server.accept()
            except (socket.timeout, OSError):
                continue
            accepted.append(address)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(timeout=2)
    server.close()


@pytest.mark.parametrize("make_socket", [
    "socket.socket(socket.AF_INET, socket.SOCK_STREAM)",  # stopped by the guard
    "socket.SocketType(socket.AF_INET, socket.SOCK_STREAM)",  # the real class, around the guard
])
def test_socket_connection_fails_and_the_listener_sees_nothing(listener, layers, make_socket):
    port, accepted = listener
    if "SocketType" in make_socket and "netns" not in layers:
        pytest.skip(f"no network namespace here (isolation {layers}): only the guard protects")
    program = (f"import socket\ns = {make_socket}\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
               "print('connected')\n")
    result = run_code(program, timeout=TIMEOUT)
    time.sleep(0.3)  # let the listener's accept loop see anything that got through
    assert result.status == "failed" and "connected" not in result.stdout_tail
    assert accepted == []


def _processes_in(workdir: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(workdir):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_fork_bomb_is_contained_and_leaves_no_process(layers):
    if "rlimit-nproc" not in layers:
        pytest.skip(f"RLIMIT_NPROC not applied here (isolation {layers})")
    program = ("import os, posix, sys, time\nprint(os.getcwd(), flush=True)\nforks = 0\n"
               "try:\n    while True:\n        if posix.fork() == 0:\n"
               "            time.sleep(30)\n            os._exit(0)\n"
               "        forks += 1\nexcept OSError:\n    print('forks', forks, flush=True)\n    raise\n")
    result = run_code(program, timeout=TIMEOUT, max_processes=8)
    assert result.status == "failed", result
    lines = result.stdout_tail.strip().splitlines()
    workdir, forks = lines[0], int(lines[-1].split()[1])
    assert forks < 8
    deadline = time.monotonic() + 3
    while _processes_in(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_in(workdir) == []


def test_spawning_a_subprocess_fails():
    result = run_code("import subprocess\nsubprocess.run(['true'])\n", timeout=TIMEOUT)
    assert result.status == "failed" and "disabled" in result.stderr_tail


def test_guard_only_mode_still_blocks_plain_writes_and_sockets(tmp_path):
    target = tmp_path / "escaped.txt"
    write = run_code(f"open({str(target)!r}, 'w').write('x')\n", timeout=TIMEOUT, isolation="guard")
    sock = run_code("import socket\nsocket.socket()\n", timeout=TIMEOUT, isolation="guard")
    assert write.isolation == ("tree-kill", "memory-total", "disk-poll", "guard")  # no namespace
    assert write.status == "failed" and not target.exists()
    assert sock.status == "failed" and "socket.socket is disabled" in sock.stderr_tail


def test_a_sandbox_that_cannot_be_built_is_an_error_not_a_failure(monkeypatch):
    import ipo_jax.eval.sandbox as sandbox

    monkeypatch.setattr(sandbox, "_LAUNCHER", "import os\nos.write(2, b'IPO_SANDBOX_ERROR forced\\n')\nos._exit(97)\n")
    result = sandbox.run_code("pass\n", timeout=TIMEOUT)
    assert result.status == "error" and "IPO_SANDBOX_ERROR forced" in result.stderr_tail


def test_bad_limits_are_errors():
    with pytest.raises(SandboxError, match="isolation 'none'"):
        run_code("pass\n", isolation="none")
    with pytest.raises(SandboxError, match="must be positive"):
        run_code("pass\n", timeout=0)
