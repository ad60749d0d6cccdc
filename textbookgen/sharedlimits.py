"""One rate budget for the processes on one host that share a (server, API key, model): a small file of numbers,
read-modify-written under an exclusive `fcntl.flock` held for microseconds.

Why (field notes §7.1): teams run several builds at once on one key (several recipes, shards of one recipe), and
processes that learn of each other only through the server's `remaining` headers each start with a full bucket and
overshoot together into 429s. Here they keep one set of buckets, so what one spends, reserves, refunds or learns
(a limit from headers, a 429) the others see at their next admission. Nothing in the file holds for a process
that is gone: levels refill with time, and the few probes sent before the server first answers are held by pid,
freed when that process is, so one killed mid-request leaves nothing stuck. The file holds only numbers, named by a
hash of what identifies the budget (the key itself is never written). A file that is corrupt, truncated, foreign (laid
out otherwise, by another version: `layout_stamp`) or from before a reboot is rebuilt; where no file can be used (a
read-only folder, no `fcntl` on Windows) each process goes on with its own buckets, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import time
import urllib.parse
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, each process keeps its own buckets
    fcntl = None

log = logging.getLogger("textbookgen.ratelimit")

DIR_ENV = "TEXTBOOKGEN_LIMITS_DIR"  # where the files live (tests, or a folder of your choice)
SWITCH_ENV = "TEXTBOOKGEN_SHARE_LIMITS"  # "0" (or off, false, no): each process keeps its own buckets
MAGIC = b"TBGL"
STALE_S = 600.0  # a budget nobody touched for this long is started afresh, as a lone process would
PRUNE_S = 86400.0  # files untouched for this long are deleted (each run on another server, key or model adds one)
CLOCK_SKEW_S = 5.0  # wall and monotonic clocks drifting apart by more than this since the last write: a reboot
_HEAD = struct.Struct("<4s16sHdd")  # magic, layout stamp, count, written at (monotonic), written at (wall)
_BODY = "<{}d"  # the numbers, NaN for None
_CRC = struct.Struct("<I")


def layout_stamp(names: Sequence[str]) -> bytes:
    """16 bytes naming a record's layout: a hash of its numbers' names in order and of how they are stored. Processes
    that lay a record out otherwise (another version of this code) read each other's as foreign, and each runs alone:
    a number added, dropped, renamed or moved changes the stamp, with no version to bump by hand (a hand-bumped one,
    left as it was when 4 numbers changed meaning at the same count, let each version read the other's). A number
    whose meaning changes takes a new name."""
    return hashlib.sha256(json.dumps([_HEAD.format, _BODY, list(names)]).encode()).digest()[:16]


def limits_dir() -> Path:
    """$TEXTBOOKGEN_LIMITS_DIR, else $XDG_RUNTIME_DIR/textbookgen/limits (a tmpfs, emptied at reboot), else the
    user cache folder."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "textbookgen" / "limits"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textbookgen" / "limits"


def budget_id(provider: str, base_url: str | Sequence[str] | None, secrets: Sequence[str], model: str,
              limits: Sequence[float | None] = ()) -> str:
    """16 hex digits naming one budget: a hash of the provider, its server URL(s), the key and the model, and the
    limits its user set where any is (processes told different limits cannot keep one bucket: each would refill
    and cap it at its own, so the lower-capped ran at the higher limit)."""
    urls = [base_url] if base_url is None or isinstance(base_url, str) else base_url
    parts = [provider, sorted(server_name(url) for url in urls), list(secrets), model]
    if any(limit is not None for limit in limits):
        parts.append(list(limits))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def server_name(url: str | None) -> str:
    """The server a URL reaches, spelled one way, so that builds which wrote it differently share one budget:
    scheme and host in lower case, the default port made explicit, loopback under one name (`localhost`, `::1`,
    `0.0.0.0`, `::` and `127.x.x.x` all reach the local server), no trailing slash. A URL it cannot parse is kept as
    written."""
    text = (url or "").strip()
    try:
        parts = urllib.parse.urlsplit(text)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:  # a port that is not a number
        return text.rstrip("/")
    if not host:
        return text.rstrip("/")
    if host in ("localhost", "::1", "0.0.0.0", "::") or host.startswith("127."):
        host = "127.0.0.1"
    scheme = parts.scheme.lower()
    port = port or {"http": 80, "https": 443}.get(scheme)
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}{query}"


def sharing_enabled() -> bool:
    """Unless $TEXTBOOKGEN_SHARE_LIMITS says 0, off, false or no."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("0", "off", "false", "no")


def _prune(folder: Path) -> None:
    """Delete the budgets nobody used for a day (long stale: `_decode` would rebuild them anyway)."""
    cutoff = time.time() - PRUNE_S
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".limits") and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
    except OSError:
        pass  # another process pruned it first, or the folder is not ours to tidy


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's counts; a zombie not yet reaped does too). POSIX
    only, as shared records are: on Windows `os.kill(pid, 0)` sends a Ctrl-C."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's
        return True
    return True


class SharedRecord:
    """`size` floats (None stored as NaN) in one file, changed under an exclusive lock; named by `lay_out` (until
    then by their places), and read only where laid out alike."""

    def __init__(self, path: Path, size: int, fd: int) -> None:
        self.path, self.size, self._fd = path, size, fd
        self._body = struct.Struct(_BODY.format(size))
        self._length = _HEAD.size + self._body.size + _CRC.size
        self.lay_out([str(i) for i in range(size)])

    def lay_out(self, names: Sequence[str]) -> None:
        """Name the numbers, in order: the record reads back only where they are named alike (`layout_stamp`)."""
        if len(names) != self.size:
            raise ValueError(f"{self.path}: {len(names)} names for a record of {self.size} numbers")
        self.stamp = layout_stamp(names)

    @classmethod
    def open(cls, name: str, size: int | Sequence[str], folder: Path | None = None) -> SharedRecord | None:
        """The record `name` in `folder` (default `limits_dir()`) of `size` numbers, or of these names (`lay_out`);
        None where it cannot be used (logged once)."""
        if not sharing_enabled():
            return None
        folder = folder or limits_dir()
        if fcntl is None:
            log.info("rate limits: no fcntl on this platform, so each process keeps its own budget")
            return None
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(folder / f"{name}.limits", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            log.info("rate limits: cannot share a budget with other processes on this host (%s), so this one keeps "
                     "its own", exc)
            return None
        _prune(folder)
        record = cls(folder / f"{name}.limits", size if isinstance(size, int) else len(size), fd)
        if not isinstance(size, int):
            record.lay_out(size)
        return record

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def update(self, change: Callable[[list[float | None] | None], Sequence[float | None]]) -> bool:
        """Under the lock: `change(values)` (None: no valid record yet) returns the values to write. False (and
        `change` not called) where the file cannot be used any more: the caller goes on alone."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            return self._give_up(exc)
        try:
            try:
                data = os.pread(self._fd, self._length + 1, 0)
            except OSError as exc:
                return self._give_up(exc)
            new = change(self._decode(data))
            try:
                os.pwrite(self._fd, self._encode(new), 0)
                if len(data) > self._length:  # a longer (foreign) file: cut its tail, or it never reads back
                    os.ftruncate(self._fd, self._length)
            except OSError as exc:
                self._give_up(exc)  # `change` ran on this process's buckets: they carry on alone
            return True
        finally:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass

    def _give_up(self, exc: OSError) -> bool:
        log.info("rate limits: %s no longer usable (%s), so this process keeps its own budget", self.path, exc)
        return False

    def _decode(self, data: bytes) -> list[float | None] | None:
        """The values, or None for a record that is missing, truncated, corrupt, foreign, stale or from another boot."""
        if len(data) != self._length or _CRC.unpack_from(data, self._length - _CRC.size)[0] != zlib.crc32(
                data[:-_CRC.size]):
            return None
        magic, stamp, count, mono, wall = _HEAD.unpack_from(data)
        now_mono, now_wall = time.monotonic(), time.time()
        if (magic, stamp, count) != (MAGIC, self.stamp, self.size) or not 0 <= now_mono - mono <= STALE_S \
                or abs((now_wall - wall) - (now_mono - mono)) > CLOCK_SKEW_S:
            return None
        return [None if math.isnan(v) else v for v in self._body.unpack_from(data, _HEAD.size)]

    def _encode(self, values: Sequence[float | None]) -> bytes:
        body = _HEAD.pack(MAGIC, self.stamp, self.size, time.monotonic(), time.time()) + self._body.pack(
            *(math.nan if v is None else v for v in values))
        return body + _CRC.pack(zlib.crc32(body))
