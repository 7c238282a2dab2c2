"""Run untrusted Python (model-written code) in a constrained subprocess.

Layers, each cheap and each independent of the others:
- a fresh temporary working directory, removed afterwards;
- `python -I -S` (isolated: no user site, no PYTHON* variables) with an empty environment;
- resource limits: CPU seconds, address space, file size, open files, and processes (stops fork bombs);
- an audit hook (PEP 578, cannot be removed from Python) installed before the program runs:
  no writes outside the working directory, no sockets, no new processes, no ctypes;
- no network at the kernel level too, in a new network namespace where the kernel allows it;
- as root, when `nobody` can run the interpreter, the program runs as `nobody`;
- a wall-clock timeout that kills the whole process group.
"""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

PRELUDE = r"""
import os as _os, sys as _sys
_ROOT = _os.path.realpath(_os.getcwd())
_WRITE = _os.O_WRONLY | _os.O_RDWR | _os.O_APPEND | _os.O_CREAT | _os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
                "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move"}
_DENY = {"os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "subprocess.Popen",
         "os.kill", "os.killpg", "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
         "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "sys.setrecursionlimit", "os.setuid", "os.chdir"}
def _inside(p):
    p = _os.path.realpath(_os.fsdecode(p))
    return p == _ROOT or p.startswith(_ROOT + _os.sep)
def _hook(event, args, _inside=_inside):
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE)
        if writing and not isinstance(path, int) and not _inside(path):
            raise PermissionError("the charter sandbox allows writes only inside its own directory")
    elif event in _PATH_EVENTS:
        if args and not isinstance(args[0], int) and not _inside(args[0]):
            raise PermissionError("the charter sandbox allows changes only inside its own directory")
    elif event in _DENY:
        raise PermissionError(f"{event} is disabled in the charter sandbox")
_sys.addaudithook(_hook)
del _hook
"""
CLONE_NEWNET = 0x40000000
NOBODY = 65534


@dataclass
class Result:
    ok: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str


def _world_executable(path: str) -> bool:
    """Can an unprivileged user run this interpreter (every parent searchable)?"""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        if not os.stat(os.sep.join(parts[:i]) or os.sep).st_mode & 0o001:
            return False
    return True


def _limits(cpu_s: int, mem_bytes: int, as_root: bool, drop: bool):
    def apply():
        os.setsid()
        if as_root:
            try:  # best effort: fails in containers without CAP_SYS_ADMIN
                ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
            except Exception:
                pass
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        if drop:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        # After dropping to nobody the process limit counts only the sandbox's own processes.
        resource.setrlimit(resource.RLIMIT_NPROC, (32, 32))
    return apply


def run_python(code: str, timeout_s: float = 10.0, cpu_s: int = 10, mem_mb: int = 1024) -> Result:
    """Run `code` under the limits above; `ok` is exit status 0 within the time limit."""
    work = tempfile.mkdtemp(prefix="charter-sandbox-")
    as_root = os.geteuid() == 0
    drop = as_root and _world_executable(sys.executable)
    try:
        path = os.path.join(work, "main.py")
        with open(path, "w") as f:
            f.write(PRELUDE + "\n" + code)
        if drop:
            os.chown(work, NOBODY, NOBODY)
            os.chown(path, NOBODY, NOBODY)
        proc = subprocess.Popen([sys.executable, "-I", "-S", path], cwd=work, env={"PATH": "/usr/bin:/bin"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                preexec_fn=_limits(cpu_s, mem_mb << 20, as_root, drop), text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
            return Result(proc.returncode == 0, proc.returncode, False, out[-4000:], err[-4000:])
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            return Result(False, None, True, out[-4000:], err[-4000:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
