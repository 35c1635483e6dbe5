"""Detection of changes to what the supervisor trusts, for when no kernel sandbox holds them.

Without bubblewrap a child can write the config, the workspace's `.git/config`, the state
folder and the audit log (docs/isolation.md). `IntegrityGuard` seals each protected file
(its SHA-256, or for the audit log the size and identity the supervisor itself last left) and
`check()` names every one that changed since. The Supervisor runs it before every change's
git work and before anything becomes last good; a finding is a `tamper` event, and changes
are refused until an operator has looked and called `recover` (which seals the files anew).

It runs with the sandbox too: cheap, and it also sees what a mount cannot stop (a child that
renames a folder above a protected file and puts its own file in its place).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["IntegrityGuard", "Tamper"]

_ABSENT = "absent"


@dataclass(frozen=True)
class Tamper:
    """What changed behind the supervisor's back: one line per path."""

    findings: tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join(self.findings)


class IntegrityGuard:
    """Seals `files` (content digests) and `appended` logs (size, inode: only the supervisor
    appends to them, and tells the guard each time through `appended_by_us`)."""

    def __init__(
        self, files: Iterable[Path], appended: Iterable[Path] = (), writer_lock: AbstractContextManager[Any] | None = None
    ) -> None:
        self.files = tuple(dict.fromkeys(Path(p) for p in files))
        self.appended = tuple(dict.fromkeys(Path(p) for p in appended))
        # The appending writer's lock: a check never sees an append that `appended_by_us` has not yet heard of.
        self._writer_lock = writer_lock if writer_lock is not None else nullcontext()
        self._lock = threading.Lock()
        self._sealed: dict[Path, str] = {}
        self.tamper: Tamper | None = None  # the first finding, kept until `seal()`
        self.on_tamper: Callable[[Tamper], None] | None = None

    def seal(self) -> None:
        """Take the current state as trusted (at start, and when an operator has acted)."""
        with self._writer_lock, self._lock:
            self._sealed = {path: _fingerprint(path, path in self.appended) for path in (*self.files, *self.appended)}
            self.tamper = None

    def appended_by_us(self, path: Path) -> None:
        """The supervisor itself just wrote `path` (an audit append): its new state is trusted."""
        with self._lock:
            if path in self._sealed:
                self._sealed[path] = _fingerprint(path, True)

    def check(self) -> Tamper | None:
        """Every protected path that differs from its seal; reports (once) through `on_tamper`."""
        with self._writer_lock, self._lock:
            findings = tuple(
                f"{path}: {_describe(sealed, now)}"
                for path, sealed in self._sealed.items()
                if (now := _fingerprint(path, path in self.appended)) != sealed
            )
            if not findings:
                return self.tamper
            first = self.tamper is None or self.tamper.findings != findings
            self.tamper = Tamper(findings)
        if first:
            logger.error("TAMPER: protected files changed behind the supervisor's back: %s", self.tamper)
            if self.on_tamper is not None:
                self.on_tamper(self.tamper)
        return self.tamper


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
