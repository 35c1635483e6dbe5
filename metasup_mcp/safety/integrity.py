"""Detection of changes to what the supervisor trusts, for when no kernel sandbox holds them.

Without bubblewrap a child can write the config, the workspace's `.git/config`, the state
folder and the audit log (docs/isolation.md). `IntegrityGuard` seals each protected file
(its SHA-256, or for the audit log the size and identity the supervisor itself last left) and
`check()` names every one that changed since. The Supervisor runs it before every git call
(`GitRepo.before_git`) and before anything becomes last good; a finding is a `tamper` event, and changes
are refused until an operator has looked and called `recover` (which seals the files anew).

It runs with the sandbox too: cheap, and it also sees what a mount cannot stop (a child that
renames a folder above a protected file and puts its own file in its place).

A file is hashed again only when its stat data moved (`_StatCache`): device, inode, size, mode,
mtime and ctime. A process can set mtime back but not ctime, and a rename or a replacement
brings another inode; a file changed within `RACY_NS` of being read is never trusted by its
stat (git's racy-git rule, widened for writes through a shared mapping).
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
# Past racy-git's second, and past writeback: a write through a shared mapping moves ctime only
# at its first fault after one (about 30 s).
RACY_NS = 60_000_000_000


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
        self._digests = _StatCache()
        self._findings: dict[Path | str, str] = {}  # a path, or what `report` names
        self.tamper: Tamper | None = None  # what has been found (and reported) since the last seal
        self.on_tamper: Callable[[Tamper], None] | None = None

    def seal(self) -> None:
        """Take the current state as trusted (at start, and when an operator has acted)."""
        with self._writer_lock, self._lock:
            self._sealed = {path: self._fingerprint(path) for path in (*self.files, *self.appended)}
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

    def report(self, subject: str, what: str) -> None:
        """A change behind the supervisor's back found elsewhere (a ref it did not set, see
        refs.py): a finding like a sealed file's, sticky until `seal()`, reported through `check`."""
        with self._lock:
            self._findings.setdefault(subject, what)
        self.check()

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
        now = self._fingerprint(path)
        if now != sealed:
            self._findings[path] = _describe(sealed, now)

    def _fingerprint(self, path: Path) -> str:
        return _fingerprint(path, True) if path in self.appended else self._digests.fingerprint(path)


class _StatCache:
    """`_fingerprint` of sealed files, hashed again only when their stat data moved."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, ...], str]] = {}

    def fingerprint(self, path: Path) -> str:
        try:
            st = os.stat(path)
        except OSError:
            self._known.pop(path, None)
            return _fingerprint(path, False)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
        known = self._known.get(path)
        if known is not None and known[0] == key:
            return known[1]
        read_at = time.time_ns()
        digest = _fingerprint(path, False)
        if max(st.st_mtime_ns, st.st_ctime_ns) < read_at - RACY_NS:
            self._known[path] = (key, digest)  # any later write moves ctime past what was read
        else:
            self._known.pop(path, None)  # racily clean: read it again next time
        return digest


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
