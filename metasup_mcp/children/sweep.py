"""Leave no orphans: find and kill the processes a killed supervisor left behind.

Every process of every child carries `METASUP_INSTANCE=<id>` in its environment (inherited by
grandchildren, even ones that left the process group). The id of the running supervisor is
recorded in the state folder; the next start kills whatever still carries a recorded id that
is not its own. The environment cannot be reused by an unrelated process the way a pid can.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from pathlib import Path

import psutil

from metasup_mcp.children.process import INSTANCE_ENV_VAR

logger = logging.getLogger(__name__)

_RECORD = "instances.json"


def new_instance_id() -> str:
    return uuid.uuid4().hex


def claim_instance(state_dir: Path, instance_id: str) -> list[int]:
    """Kill survivors of earlier instances recorded in `state_dir`, then record this one.

    Returns the pids killed. Earlier instances whose supervisor is still alive are left
    alone (`exclusive_state` refuses a second live supervisor on one state folder).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    record = state_dir / _RECORD
    previous = _read_record(record)
    stale = {
        entry["id"]
        for entry in previous
        if entry.get("id") and entry["id"] != instance_id and not _supervisor_alive(entry)
    }
    killed = kill_marked(stale) if stale else []
    if killed:
        logger.warning("killed %d process(es) left by a supervisor that did not stop cleanly: %s", len(killed), killed)
    alive = [entry for entry in previous if entry.get("id") not in stale and entry.get("id") != instance_id]
    me = psutil.Process()
    alive.append({"id": instance_id, "pid": me.pid, "create_time": me.create_time()})
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(alive))
    os.replace(tmp, record)
    return killed


class StateInUse(RuntimeError):
    """Another live supervisor holds this state folder."""


def lock_state_folder(state_dir: Path) -> int:
    """Hold the state folder (until the returned fd is closed): a second supervisor on it would
    run a second pipeline over the same journal and workspace. The kernel drops the lock when
    this process dies, however it dies; children cannot inherit it (the fd is close-on-exec)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateInUse(
            f"another metasup-mcp (pid {holder}) is using the state folder {state_dir}: "
            "stop it, or give this one its own `state_dir` (and workspace)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def release_instance(state_dir: Path, instance_id: str) -> list[int]:
    """Forget this instance after a clean stop, first killing whatever still carries its mark
    (every child has stopped by now: a survivor is a helper that got out of its child's
    sandbox or reaper). Returns the pids killed."""
    leaked = kill_marked({instance_id})
    if leaked:
        logger.warning("killed %d process(es) that outlived their children: %s", len(leaked), leaked)
    record = state_dir / _RECORD
    entries = [entry for entry in _read_record(record) if entry.get("id") != instance_id]
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, record)
    return leaked


def kill_marked(instance_ids: set[str]) -> list[int]:
    """SIGKILL every process whose environment carries one of `instance_ids`."""
    killed = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(INSTANCE_ENV_VAR) in instance_ids:
                proc.kill()
                killed.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return killed


def _supervisor_alive(entry: dict[str, object]) -> bool:
    try:
        proc = psutil.Process(int(entry["pid"]))  # type: ignore[call-overload]
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # killed, and not yet reaped by its parent
        # A reused pid belongs to a process created later than the one recorded.
        return abs(proc.create_time() - float(entry["create_time"])) < 0.01  # type: ignore[arg-type]
    except (psutil.NoSuchProcess, KeyError, ValueError, TypeError):
        return False


def _read_record(record: Path) -> list[dict[str, object]]:
    try:
        entries = json.loads(record.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        logger.warning("%s is unreadable; starting a new record", record)
        return []
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []
