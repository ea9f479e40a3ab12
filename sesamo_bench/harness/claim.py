r"""Claiming a run directory, so that two processes never train the same run.

A process trains a run only while it holds the run's claim: ``<run_dir>/claim.json``, created
atomically (``O_CREAT | O_EXCL``, which also holds on NFS) with the owner's host, pid, process start
time and a random token. While the run trains, a daemon thread touches the file every
:data:`HEARTBEAT_S` seconds. Another process that finds the claim

* leaves it alone while it is **live** (:class:`Busy` is raised; the grid skips the run, a
  cluster job waits for it), and
* takes it over when it is **stale**: its pid is not running on this host (or runs a different
  process, told by the start time), or its heartbeat is older than :data:`STALE_S` seconds (an
  owner on another host that died).

A take-over is serialised by an atomic ``mkdir`` of ``<run_dir>/claim.lock`` and re-checks the
claim inside it, so of two processes taking over the same stale claim only one wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError

#: seconds between two heartbeats of a live claim
HEARTBEAT_S = 10.0
#: a claim whose heartbeat is older than this (seconds) is stale, whoever holds it
STALE_S = float(os.environ.get("SESAMO_BENCH_CLAIM_STALE_S", "120"))
CLAIM = "claim.json"
LOCK = "claim.lock"


class Busy(Exception):
    """The run is claimed by a live process; ``owner`` is what its claim says."""

    def __init__(self, run_dir: Path, owner: dict[str, Any]):
        self.run_dir, self.owner = run_dir, owner
        super().__init__(f"run {run_dir.name} is being trained by pid {owner.get('pid')} on host "
                         f"{owner.get('host')} (since {owner.get('since')})")


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/<pid>/stat), None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


def _read(path: Path) -> dict[str, Any] | None:
    """The claim at ``path`` with its heartbeat age; None when there is none; {} when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except ValueError:
        owner = {}
    if not isinstance(owner, dict):
        owner = {}
    owner["age_s"] = age
    return owner


def is_stale(owner: dict[str, Any]) -> bool:
    """Whether a claim read by :func:`_read` may be taken over."""
    if owner.get("age_s", 0.0) > STALE_S:
        return True
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not isinstance(pid, bool):
        return not _alive(pid, owner.get("start"))
    # unreadable (being written, or garbage): stale only once its heartbeat has expired
    return False


class ClaimLost(Exception):
    """This process's claim on a run was taken over (it was stopped, e.g. by SIGSTOP, past
    :data:`STALE_S`, and another process now trains the run): it must stop and write nothing."""

    def __init__(self, run_dir: Path, owner: dict[str, Any] | None):
        self.run_dir, self.owner = run_dir, owner or {}
        super().__init__(f"run {run_dir.name} was taken over by pid {self.owner.get('pid')} on host "
                         f"{self.owner.get('host')} while this process was stopped; this process leaves it")


#: seconds between two checks of :meth:`Claim.check` (a stopped process checks at once on SIGCONT)
CHECK_S = 1.0


class Claim:
    """A held claim; :meth:`release` (or leaving the ``with`` block) gives it up."""

    def __init__(self, run_dir: Path, token: str):
        self.run_dir, self.token = run_dir, token
        self.path = run_dir / CLAIM
        self._checked = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim-{run_dir.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                if self.owned():
                    os.utime(self.path)

    def owned(self) -> bool:
        owner = _read(self.path)
        return bool(owner) and owner.get("token") == self.token

    def check(self, *, now: bool = False) -> bool:
        r"""Raise :class:`ClaimLost` if the claim is no longer this process's (read at most every
        :data:`CHECK_S` seconds, or at once with ``now``); else return False, so that it can be
        chained with a stop flag: ``claim.check() or should_stop()``."""
        t = time.monotonic()
        if now or t - self._checked >= CHECK_S:
            self._checked = t
            if not self.owned():
                raise ClaimLost(self.run_dir, _read(self.path))
        return False

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            if self.owned():
                self.path.unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _create(run_dir: Path, token: str) -> bool:
    pid = os.getpid()
    body = json.dumps({"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "token": token,
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
    try:
        fd = os.open(run_dir / CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _take_over(run_dir: Path, seen: dict[str, Any], token: str) -> bool:
    """Replace the stale claim ``seen`` by ours, under the take-over lock; False if someone else won."""
    lock = run_dir / LOCK
    try:
        lock.mkdir()
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - lock.stat().st_mtime > 30:  # a take-over that died halfway
                lock.rmdir()
        return False
    try:
        now = _read(run_dir / CLAIM)
        if now is not None:
            if not (is_stale(now) and now.get("token") == seen.get("token")):
                return False
            (run_dir / CLAIM).unlink()
        return _create(run_dir, token)
    finally:
        with contextlib.suppress(OSError):
            lock.rmdir()


def acquire(run_dir: Path, *, wait_s: float = 0.0, poll_s: float = 1.0) -> Claim:
    r"""Claim ``run_dir`` (created if missing).

    Arguments:
        run_dir: the run's directory.
        wait_s: how long to wait for a live claim to end or go stale (0: not at all).

    Raises:
        Busy: a live process holds the claim (after ``wait_s``).
        StoreError: the directory cannot be written.
    """
    token = secrets.token_hex(8)
    deadline = time.monotonic() + wait_s
    hard = deadline + 35.0  # a take-over lock left by a dead process is cleared after 30 s
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            if _create(run_dir, token):
                return Claim(run_dir, token)
            owner = _read(run_dir / CLAIM)
            if owner is None:
                continue  # released meanwhile
            stale = is_stale(owner)
            if stale and _take_over(run_dir, owner, token):
                return Claim(run_dir, token)
            now = time.monotonic()
            if now >= deadline and (not stale or now >= hard):
                raise Busy(run_dir, owner)
            time.sleep(0.05 if stale else poll_s)  # stale: another process is taking it over
    except OSError as exc:
        raise StoreError(f"cannot write {run_dir}: {exc.strerror or exc}") from None
