"""`metasup-mcp reload [--config PATH]`: ask the running supervisor to reload its config (SIGHUP),
then print the outcome from its audit log.

The supervisor's pid is in `<state_dir>/supervisor.lock`, which it holds locked while it runs.
Exit 0 when the reload was applied (or nothing changed), 1 when it was rolled back or refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from metasup_mcp.config import load_config
from metasup_mcp.safety.audit import AuditLog


class NotRunning(Exception):
    """No supervisor holds the config's state folder; the message says which folder."""


def running_pid(state_dir: Path) -> int:
    """The pid of the supervisor holding `state_dir`, or `NotRunning`."""
    lock = state_dir / "supervisor.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        raise NotRunning(f"no supervisor has run on the state folder {state_dir}: start it with `metasup-mcp serve`") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return int(os.pread(fd, 32, 0).decode().strip())
        raise NotRunning(f"no supervisor is running on the state folder {state_dir}: nothing to reload")
    finally:
        os.close(fd)


def reload(config_path: Path, wait: float) -> int:
    state_dir = load_config(config_path).supervisor.state_dir  # a config that does not validate stops here
    pid = running_pid(state_dir)
    audit = AuditLog(state_dir / "audit.jsonl")
    seen = max((entry["seq"] for entry in audit.tail(1)), default=0)
    os.kill(pid, signal.SIGHUP)
    print(f"sent SIGHUP to the supervisor (pid {pid}); waiting up to {wait:g}s for the outcome", file=sys.stderr)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        outcome = _reload_entry(audit, seen)
        if outcome is not None:
            print(json.dumps(outcome, indent=2))
            return 0 if outcome.get("verdict") in ("applied", "unchanged") else 1
        time.sleep(0.1)
    print(f"no outcome within {wait:g}s: see `metasup-mcp status` or the audit log {audit.path}", file=sys.stderr)
    return 1


def _reload_entry(audit: AuditLog, after_seq: int) -> dict[str, Any] | None:
    for entry in audit.tail(20):
        if entry["seq"] > after_seq and entry["event"] == "reload":
            return dict(entry["data"])
    return None
