"""Append-only, hash-chained audit log (one JSON object per line).

Each line is ``{seq, ts, event, data, prev, hash}``: `hash` is the SHA-256 of the
canonical JSON (sorted keys, no spaces, UTF-8) of the entry without `hash`, and `prev` is
the previous line's hash (`GENESIS` for the first). Editing, inserting or removing a line
breaks the chain at that line; truncating the newest lines cannot be detected from the
file alone (anchor the last hash elsewhere, e.g. in a commit trailer, if that matters).

Appends take an exclusive `flock`, read only the tail to continue the chain, write one
line with O_APPEND and fsync. A line torn by a crash mid-write is cut off and its loss is
itself recorded, so one power cut does not poison the log forever.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from metasup_mcp.safety.journal import fsync_dir

__all__ = ["GENESIS", "AuditError", "AuditLog", "AuditVerdict", "entry_hash", "verify_audit_log"]

_log = logging.getLogger(__name__)
GENESIS = "0" * 64
_FIELDS = frozenset({"seq", "ts", "event", "data", "prev", "hash"})
_CHUNK = 8192


class AuditError(RuntimeError):
    """The log cannot be continued (its last line is not an entry) or written."""


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    ok: bool
    entries: int  # valid entries before the first bad line (all of them when ok)
    first_bad_line: int | None  # 1-based
    problem: str | None


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _tail(fd: int, size: int, n: int) -> tuple[list[bytes], bytes]:
    """The last `n` complete lines (newline stripped) and the torn bytes after them."""
    buf, offset = b"", size
    while offset > 0:
        step = min(_CHUNK, offset)
        offset -= step
        buf = os.pread(fd, step, offset) + buf
        if buf.count(b"\n") > n:
            break
    cut = buf.rfind(b"\n") + 1
    complete, torn = buf[:cut], buf[cut:]
    lines = complete.split(b"\n")[:-1]
    if offset > 0:
        lines = lines[1:]  # the first one may have started before the bytes we read
    return lines[-n:] if n else [], torn


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Write one entry and return it; `data` values that are not JSON become strings."""
        # Round-trip first so the hash covers exactly what a reader will parse back.
        clean = json.loads(json.dumps(data, default=str, allow_nan=False))
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # other processes appending to the same file
                seq, prev = self._chain_head(fd)
                entry = self._write(fd, seq + 1, prev, event, clean)
            except OSError as exc:
                raise AuditError(f"cannot append to audit log {self.path}: {exc.strerror or exc}") from exc
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.path.parent)
            return entry

    def _chain_head(self, fd: int) -> tuple[int, str]:
        size = os.fstat(fd).st_size
        lines, torn = _tail(fd, size, 1)
        if torn:
            os.ftruncate(fd, size - len(torn))
            _log.warning("audit log %s: dropped %d bytes of a torn last line", self.path, len(torn))
        if not lines:
            seq, prev = 0, GENESIS
        else:
            try:
                last = json.loads(lines[-1])
                seq, prev = int(last["seq"]), str(last["hash"])
            except (ValueError, TypeError, KeyError) as exc:
                raise AuditError(
                    f"the last line of {self.path} is not an audit entry ({exc}); "
                    "run `metasup-mcp audit verify`, then move the file aside to start a new chain"
                ) from exc
        if torn:
            dropped = {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
            seq, prev = seq + 1, self._write(fd, seq + 1, prev, "audit.torn_tail_dropped", dropped)["hash"]
        return seq, prev

    @staticmethod
    def _write(fd: int, seq: int, prev: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
        ts = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        entry: dict[str, Any] = {"seq": seq, "ts": ts, "event": event, "data": data, "prev": prev}
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        written = os.write(fd, line)
        if written != len(line):  # a short write on a full disk: leave a torn line, not a lie
            raise OSError(f"short write ({written} of {len(line)} bytes)")
        os.fsync(fd)
        return entry

    def tail(self, n: int) -> list[dict[str, Any]]:
        """The newest `n` entries, oldest first; unreadable lines are skipped (verify names them)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            lines, _ = _tail(fd, os.fstat(fd).st_size, n)
        finally:
            os.close(fd)
        out = []
        for raw in lines:
            try:
                out.append(json.loads(raw))
            except ValueError:
                _log.warning("audit log %s: skipping an unreadable line in tail()", self.path)
        return out


def verify_audit_log(path: Path) -> AuditVerdict:
    """Walk the whole chain; report the first line that breaks it."""
    entries, prev_seq, prev_hash = 0, 0, GENESIS
    try:
        f = open(path, "rb")
    except OSError as exc:
        return AuditVerdict(False, 0, None, f"cannot read {path}: {exc.strerror}")
    with f:
        for lineno, raw in enumerate(f, start=1):
            problem = _check_line(raw, prev_seq, prev_hash)
            if problem is not None:
                return AuditVerdict(False, entries, lineno, f"line {lineno}: {problem}")
            entry = json.loads(raw)
            entries, prev_seq, prev_hash = entries + 1, entry["seq"], entry["hash"]
    return AuditVerdict(True, entries, None, None)


def _check_line(raw: bytes, prev_seq: int, prev_hash: str) -> str | None:
    if not raw.endswith(b"\n"):
        return "incomplete (no newline): a torn write"
    try:
        entry = json.loads(raw)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(entry, dict) or set(entry) != _FIELDS:
        return f"not an audit entry (expected fields {sorted(_FIELDS)})"
    if type(entry["seq"]) is not int or entry["seq"] != prev_seq + 1:
        return f"seq is {entry['seq']!r} where {prev_seq + 1} was expected: an entry was removed or inserted"
    if entry["prev"] != prev_hash:
        return "prev does not match the hash of the line before: the chain was edited"
    try:
        if entry["hash"] != entry_hash(entry):
            return "hash does not match the line's content: the line was edited"
    except ValueError as exc:
        return f"content cannot be hashed canonically ({exc})"
    return None
