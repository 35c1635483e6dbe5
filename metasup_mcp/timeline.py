"""The events timeline of the status endpoint and the dashboard, read from the audit log so that it
survives a restart of the supervisor, plus the transient child events only memory holds.

Durable kinds (rollbacks of every source, emergency, recover, the evolution breaker, fatal servers,
protected-path reverts, restores from a backup, interrupted changes finished at start-up) come from
the audit log; failed starts and health restarts come from memory (a crash loop would flood the log).
Each event is `{"at", "event", ...}`; a rollback carries `source`, `trigger`, `from`, `to`, `reason`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

__all__ = ["TRANSIENT", "merge", "from_audit"]

# Kinds only memory holds; every other kind the timeline shows is read from the audit log.
TRANSIENT = frozenset({"failed_start", "health_restart"})
_RENAMED = {"revert": "protected_revert"}
_DURABLE = frozenset({"rollback", "emergency", "recover", "breaker_open", "fatal", "revert",
                      "restored_from_backup", "recovered"})
AUDIT_WINDOW = 500  # audit entries read per request: enough for any page, cheap to read


def from_audit(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeline events from audit entries (`{"ts", "event", "data"}`), in the entries' order."""
    events = []
    for entry in entries:
        kind = entry.get("event")
        if kind not in _DURABLE:
            continue
        data = dict(entry.get("data") or {})
        event: dict[str, Any] = {"at": _seconds(entry.get("ts")), "event": _RENAMED.get(kind, kind), **data}
        if kind == "rollback":
            event.setdefault("source", "proposal" if data.get("id") else "operator")
            event["from"] = data.get("bad_commit")
            evidence = str(data.get("reason") or data.get("evidence") or "")
            event["reason"] = evidence.splitlines()[0][:300] if evidence else None
            event.pop("evidence", None)
        elif kind == "revert":
            event["detail"] = ", ".join(data.get("paths") or [])
        elif kind == "recovered":
            event["detail"] = data.get("outcome")
        events.append(event)
    return events


def merge(durable: list[dict[str, Any]], memory: Iterable[dict[str, Any]], limit: int,
          kind: str | None = None) -> list[dict[str, Any]]:
    """Newest first: the durable events and memory's transient ones, optionally of one kind."""
    transient = [e for e in memory if e.get("event") in TRANSIENT]
    events = sorted([*durable, *transient], key=lambda e: e.get("at") or 0, reverse=True)
    return [e for e in events if kind is None or e.get("event") == kind][:limit]


def _seconds(ts: Any) -> float | None:
    """An audit timestamp (ISO 8601) as Unix seconds, what the status document uses."""
    try:
        return datetime.fromisoformat(str(ts)).timestamp()
    except ValueError:
        return None
