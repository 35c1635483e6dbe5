"""Detection of changes to what the supervisor trusts, for when no kernel sandbox holds them.

Without bubblewrap a child can write the config, the workspace's `.git/config`, the state
folder and the audit log (docs/isolation.md). `IntegrityGuard` seals each protected file
(its SHA-256, or for the audit log the size and identity the supervisor itself last left) and
`check()` names every one that changed since. The Supervisor runs it before every git call
(`GitRepo.before_git`) and before anything becomes last good; a finding is a `tamper` event, and changes
are refused until an operator has looked and called `recover` (which seals the files anew).

It runs with the sandbox too: cheap, and it also sees what a mount cannot stop (a child that
renames a folder above a protected file and puts its own file in its place).

A check runs before every git call, so it must cost next to nothing: a file hashed and found
as sealed is not hashed again while its `stat` (device, inode, size, mtime and ctime) stays the
same. Any write, rename over it or chmod sets the ctime to the current time, which no
unprivileged process can choose; a file whose ctime was within `RACY_S` of the moment it was
hashed is hashed every time (git's "racy clean" rule: a change within one timestamp tick
would leave its stat as it was).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["IntegrityGuard", "Tamper"]

_ABSENT = "absent"
RACY_S = 2.0  # seconds: a ctime this close to the hash is not trusted (coarse clock ticks, skew)


@dataclass(frozen=True)
class Tamper:
    """What changed behind the supervisor's back: one line per path."""

    findings: tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join(self.findings)


class IntegrityGuard:
    """Seals `files` (content digests) and `appended` logs (size, inode: only the supervisor
    appends to them, and says so around each write: `before_our_write`, `appended_by_us`).

    Findings are sticky: once something changed behind the supervisor's back, it stays found
    (even if the file is put back, or the supervisor appends after it) until `seal()`.
    """

    def __init__(
        self, files: Iterable[Path], appended: Iterable[Path] = (), writer_lock: AbstractContextManager[Any] | None = None
    ) -> None:
        self.files = tuple(dict.fromkeys(Path(p) for p in files))
        self.appended = tuple(dict.fromkeys(Path(p) for p in appended))
        # The appending writer's lock: a check never sees an append that `appended_by_us` has not yet heard of.
        self._writer_lock = writer_lock if writer_lock is not None else nullcontext()
        self._lock = threading.Lock()
        self._sealed: dict[Path, str] = {}
        self._trusted: dict[Path, tuple[int, ...]] = {}  # stat of a file last hashed as sealed
        self._findings: dict[Path, str] = {}
        self.tamper: Tamper | None = None  # what has been found (and reported) since the last seal
        self.on_tamper: Callable[[Tamper], None] | None = None

    def seal(self) -> None:
        """Take the current state as trusted (at start, and when an operator has acted)."""
        with self._writer_lock, self._lock:
            self._sealed = {path: _fingerprint(path, path in self.appended) for path in (*self.files, *self.appended)}
            self._trusted = {}
            self._findings = {}
            self.tamper = None

    def before_our_write(self, path: Path) -> None:
        """The supervisor is about to append to `path`: anything someone else wrote there is a finding.
        (Reported by the next `check`: this runs inside the writer's lock, where no report may write.)"""
        with self._lock:
            self._compare(path)

    def appended_by_us(self, path: Path) -> None:
        """The supervisor itself just wrote `path` (an audit append): its new state is trusted."""
        with self._lock:
            if path in self._sealed:
                self._sealed[path] = _fingerprint(path, True)

    def check(self) -> Tamper | None:
        """What changed behind the supervisor's back since the last seal; a new finding is
        reported once through `on_tamper`."""
        with self._writer_lock, self._lock:
            for path in self._sealed:
                self._compare(path)
            if not self._findings:
                return None
            found = Tamper(tuple(f"{path}: {what}" for path, what in self._findings.items()))
            new = self.tamper is None or self.tamper.findings != found.findings
            self.tamper = found
        if new:
            logger.error("TAMPER: protected files changed behind the supervisor's back: %s", found)
            if self.on_tamper is not None:
                self.on_tamper(found)
        return found

    def _compare(self, path: Path) -> None:
        sealed = self._sealed.get(path)
        if sealed is None or path in self._findings:
            return
        appended = path in self.appended
        before = None if appended else _stat(path)
        if before is not None and self._trusted.get(path) == before[0]:
            return  # not written, renamed over or chmod'ed since it was hashed as sealed
        now = _fingerprint(path, appended)
        if now != sealed:
            self._findings[path] = _describe(sealed, now)
            self._trusted.pop(path, None)
        elif before is not None:
            key, taken_ns = before
            after = _stat(path)  # unchanged across the hash: the bytes hashed are the ones `key` describes
            if after is not None and after[0] == key and key[-1] < taken_ns - RACY_S * 1e9:
                self._trusted[path] = key


def _stat(path: Path) -> tuple[tuple[int, ...], int] | None:
    """((device, inode, size, mtime, ctime), the time it was taken), both in ns; None if unreadable."""
    taken = time.time_ns()
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), taken


def _fingerprint(path: Path, appended: bool) -> str:
    try:
        if appended:
            st = os.stat(path)
            return f"inode {st.st_ino} size {st.st_size} mtime {st.st_mtime_ns}"
        return "sha256 " + hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return _ABSENT
    except IsADirectoryError:
        return "a folder"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def _describe(sealed: str, now: str) -> str:
    if now == _ABSENT:
        return "deleted"
    if sealed == _ABSENT:
        return "created"
    return "content changed" if sealed.startswith("sha256") else f"rewritten ({sealed} → {now})"
