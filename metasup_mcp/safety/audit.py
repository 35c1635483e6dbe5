"""Append-only, keyed hash-chained audit log (one JSON object per line).

Each line is ``{seq, ts, event, data, prev, hash}``: `hash` is the HMAC-SHA256, under the
log's key, of the canonical JSON (sorted keys, no spaces, UTF-8) of the entry without `hash`,
and `prev` is the previous line's hash (`GENESIS` for the first). Editing, inserting or
removing a line breaks the chain at that line, and without the key nobody can re-compute a
chain that verifies. The key (`<log>.key`, 32 random bytes, mode 0600) lives beside the log in
the state folder, which children and checks cannot see (docs/isolation.md).

The newest `{seq, hash}` is also written apart from the log (`<log>.head`), so that cutting
the newest lines off, or replacing the whole file, fails `verify_audit_log` too.

Appends take an exclusive `flock`, read only the tail to continue the chain, write one
line with O_APPEND and fsync. A line torn by a crash mid-write is cut off and its loss is
itself recorded, so one power cut does not poison the log forever.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metasup_mcp.redact import redact_data
from metasup_mcp.safety.journal import fsync_dir

__all__ = ["GENESIS", "AuditError", "AuditLog", "AuditVerdict", "entry_hash", "load_key", "verify_audit_log"]

_log = logging.getLogger(__name__)
GENESIS = "0" * 64
_FIELDS = frozenset({"seq", "ts", "event", "data", "prev", "hash"})
_CHUNK = 8192
KEY_BYTES = 32


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


def entry_hash(entry: dict[str, Any], key: bytes | None = None) -> str:
    """The entry's HMAC-SHA256 under `key`; without a key, a plain SHA-256 (all a forger has)."""
    body = _canonical({k: v for k, v in entry.items() if k != "hash"})
    return hmac.new(key, body, hashlib.sha256).hexdigest() if key is not None else hashlib.sha256(body).hexdigest()


def key_path(log: Path) -> Path:
    return log.with_name(log.name + ".key")


def head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


def load_key(log: Path, create: bool = False) -> bytes | None:
    """The log's key; with `create`, made (atomically, 0600) if there is none yet."""
    path = key_path(log)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return path.read_bytes()


def _write_head(log: Path, seq: int, digest: str) -> None:
    path = head_path(log)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"seq": seq, "hash": digest}))
    os.replace(tmp, path)


def _read_head(log: Path) -> tuple[int, str] | None:
    try:
        head = json.loads(head_path(log).read_text())
        return int(head["seq"]), str(head["hash"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        return -1, ""


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
        self.head_path = head_path(self.path)
        self.key_path = key_path(self.path)
        self.lock = threading.Lock()  # held while appending: an integrity check takes it too
        self._key: bytes | None = None
        # Told of each file this log is about to write and has just written (the integrity
        # guard: a foreign write before ours is a finding, our own write is trusted).
        self.before_write: Callable[[Path], None] | None = None
        self.on_written: Callable[[Path], None] | None = None

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Write one entry and return it; `data` values that are not JSON become strings, and known
        secrets in them are redacted (`metasup_mcp.redact`)."""
        # Round-trip first so the hash covers exactly what a reader will parse back.
        clean = redact_data(json.loads(json.dumps(data, default=str, allow_nan=False)))
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # other processes appending to the same file
                if self._key is None:
                    self._key = load_key(self.path, create=True)
                if self.before_write is not None:
                    self.before_write(self.path)
                    self.before_write(self.head_path)
                seq, prev = self._chain_head(fd)
                entry = self._write(fd, seq + 1, prev, event, clean)
                _write_head(self.path, entry["seq"], entry["hash"])
                if self.on_written is not None:
                    self.on_written(self.path)
                    self.on_written(self.head_path)
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

    def _write(self, fd: int, seq: int, prev: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
        ts = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        entry: dict[str, Any] = {"seq": seq, "ts": ts, "event": event, "data": data, "prev": prev}
        entry["hash"] = entry_hash(entry, self._key)
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
    """Walk the whole chain under the log's key, then hold its end against the head recorded
    apart; report the first line that breaks it (or the truncation or replacement)."""
    entries, prev_seq, prev_hash = 0, 0, GENESIS
    key = load_key(path)
    head = _read_head(path)
    hashes: dict[int, str] = {}
    try:
        f = open(path, "rb")
    except OSError as exc:
        return AuditVerdict(False, 0, None, f"cannot read {path}: {exc.strerror}")
    with f:
        for lineno, raw in enumerate(f, start=1):
            if key is None:
                return AuditVerdict(False, 0, lineno, f"the key {key_path(path)} is missing: no entry can be verified")
            problem = _check_line(raw, prev_seq, prev_hash, key)
            if problem is not None:
                return AuditVerdict(False, entries, lineno, f"line {lineno}: {problem}")
            entry = json.loads(raw)
            entries, prev_seq, prev_hash = entries + 1, entry["seq"], entry["hash"]
            if head is not None and entry["seq"] == head[0]:
                hashes[entry["seq"]] = entry["hash"]
    problem = _check_head(path, head, entries, hashes)
    if problem is not None:
        return AuditVerdict(False, entries, None, problem)
    return AuditVerdict(True, entries, None, None)


def _check_head(path: Path, head: tuple[int, str] | None, entries: int, hashes: dict[int, str]) -> str | None:
    if head is None:
        return None if entries == 0 else f"the head record {head_path(path)} is missing: the log cannot be vouched for"
    seq, digest = head
    if seq < 0:
        return f"the head record {head_path(path)} is unreadable"
    if seq > entries:
        return f"the log ends at entry {entries} but entry {seq} was written: the newest entries were cut off"
    # The head may lag the log by the one entry written just before a crash, never more.
    if entries - seq > 1 or hashes.get(seq, GENESIS if seq == 0 else None) != digest:
        return f"entry {seq} is not the one the head record names: the log was replaced"
    return None


def _check_line(raw: bytes, prev_seq: int, prev_hash: str, key: bytes) -> str | None:
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
        if not hmac.compare_digest(str(entry["hash"]), entry_hash(entry, key)):
            return "hash does not match the line's content under the log's key: the line was edited"
    except ValueError as exc:
        return f"content cannot be hashed canonically ({exc})"
    return None
