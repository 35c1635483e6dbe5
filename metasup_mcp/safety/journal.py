"""Crash-safe journal of the one transaction in flight.

The file holds a single JSON document, rewritten atomically at every step, so after a
crash it shows either the state before a step or after it, never half of one. A finished
transaction removes the file: its story lives on in the audit log, not here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["CorruptJournal", "Journal", "JournalError", "JournalRecord", "JournalStep", "atomic_write", "fsync_dir"]

_log = logging.getLogger(__name__)
_VERSION = 1


class JournalError(RuntimeError):
    """Misuse: a step without a transaction, or a second transaction over a pending one."""


@dataclass(frozen=True, slots=True)
class JournalStep:
    name: str
    at: str  # ISO 8601, UTC
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JournalRecord:
    txn_id: str
    started_at: str
    data: dict[str, Any]
    steps: list[JournalStep]

    @property
    def last_step(self) -> JournalStep | None:
        return self.steps[-1] if self.steps else None


@dataclass(frozen=True, slots=True)
class CorruptJournal:
    """The journal could not be read; it was moved to `moved_to` (None if that failed)."""

    problem: str
    moved_to: Path | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Temp file in the same folder, flush, fsync, `os.replace`, fsync the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def begin(self, txn_id: str, **data: Any) -> None:
        with self._lock:
            current = self._read()
            if isinstance(current, JournalRecord):
                raise JournalError(f"transaction {current.txn_id!r} is still pending; recover or finish it before {txn_id!r}")
            self._write({"version": _VERSION, "txn_id": txn_id, "started_at": _now(), "data": data, "steps": []})

    def step(self, name: str, **data: Any) -> None:
        """Record that the transaction reached stage `name`."""
        with self._lock:
            current = self._read()
            if not isinstance(current, JournalRecord):
                raise JournalError(f"step {name!r} without a transaction in flight; call begin() first")
            steps = [{"name": s.name, "at": s.at, "data": s.data} for s in current.steps]
            steps.append({"name": name, "at": _now(), "data": data})
            doc = {"version": _VERSION, "txn_id": current.txn_id, "started_at": current.started_at, "data": current.data}
            self._write({**doc, "steps": steps})

    def finish(self, outcome: str) -> None:
        """Clear the in-flight record; a no-op when nothing is pending (recovery may repeat)."""
        with self._lock:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return
            fsync_dir(self.path.parent)
            _log.debug("journal %s: transaction finished: %s", self.path, outcome)

    def pending(self) -> JournalRecord | CorruptJournal | None:
        """The unfinished transaction, None, or a `CorruptJournal` (file already moved aside)."""
        with self._lock:
            return self._read()

    def _write(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # default=str: a Path or datetime in step data must not abort a transaction midway.
        atomic_write(self.path, json.dumps(doc, default=str, indent=1).encode("utf-8"))

    def _read(self) -> JournalRecord | CorruptJournal | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _decode(raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return self._move_aside(f"{type(exc).__name__}: {exc}")

    def _move_aside(self, problem: str) -> CorruptJournal:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, target)
            fsync_dir(self.path.parent)
        except OSError as exc:
            _log.error("journal %s is corrupt (%s) and could not be moved aside: %s", self.path, problem, exc)
            return CorruptJournal(problem=problem, moved_to=None)
        _log.warning("journal %s is corrupt (%s); moved to %s", self.path, problem, target)
        return CorruptJournal(problem=problem, moved_to=target)


def _decode(raw: bytes) -> JournalRecord:
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        raise ValueError("not a metasup journal (missing or unknown version)")
    steps = doc["steps"]
    if not isinstance(doc["txn_id"], str) or not isinstance(doc["data"], dict) or not isinstance(steps, list):
        raise ValueError("txn_id, data or steps has the wrong type")
    return JournalRecord(
        txn_id=doc["txn_id"],
        started_at=str(doc["started_at"]),
        data=doc["data"],
        steps=[JournalStep(name=str(s["name"]), at=str(s["at"]), data=dict(s["data"])) for s in steps],
    )
