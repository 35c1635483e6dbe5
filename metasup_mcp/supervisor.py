"""`Supervisor`: the composition root. It owns the child fleet and the emergency mode, and
answers every question the MCP surface, the status endpoint and the CLI ask.

Data flows one way: callers → Supervisor → managers → children and git. What status shows
is read from the owners at the time of asking, never copied.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from metasup_mcp.children.child import ChildEvent, ManagedChild, Supervision
from metasup_mcp.children.manager import ServerManager, UnknownServer
from metasup_mcp.children.state import ChildState
from metasup_mcp.children.sweep import claim_instance, new_instance_id, release_instance
from metasup_mcp.config import Config
from metasup_mcp.gateway import Gateway

logger = logging.getLogger(__name__)

__all__ = ["Supervisor", "SupervisorError", "UnknownServer"]


class SupervisorError(Exception):
    """A request the supervisor refuses in its current state; the message says what to do."""


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.supervisor
        self.instance_id = new_instance_id()
        self.mode = "normal"
        self.emergency_reason: str | None = None
        self.consecutive_failures = 0
        self.started_at = time.time()
        self._started_monotonic: float | None = None
        self._tg: TaskGroup | None = None
        self.events: list[dict[str, Any]] = []  # recent notable events, newest last
        self.manager = ServerManager(
            self.settings.mcp_servers,
            Supervision(
                workspace=self.settings.workspace,
                instance_id=self.instance_id,
                min_runtime=self.settings.min_runtime,
                health=self.settings.health_checks,
                restart=self.settings.restart,
            ),
            self._on_child_event,
        )
        self.gateway = Gateway(self.manager, source=config.source)  # sets each child's session hooks

    # -- lifecycle ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, autostart: bool = True) -> AsyncIterator[Supervisor]:
        """Prepare the workspace, sweep orphans of a killed predecessor, run the fleet."""
        self._prepare_workspace()
        claim_instance(self.settings.state_dir, self.instance_id)
        self._started_monotonic = anyio.current_time()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.gateway.run)
                try:
                    async with self.manager.running(autostart=autostart):
                        yield self
                finally:
                    tg.cancel_scope.cancel()  # only once every child has stopped
        finally:
            self._tg = None
            release_instance(self.settings.state_dir, self.instance_id)

    def _prepare_workspace(self) -> None:
        workspace, template = self.settings.workspace, self.settings.workspace_template
        if not workspace.exists() and template is not None and template.is_dir():
            logger.info("creating workspace %s from %s", workspace, template)
            shutil.copytree(template, workspace, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        workspace.mkdir(parents=True, exist_ok=True)

    # -- child control -----------------------------------------------------------------

    def child(self, name: str) -> ManagedChild:
        return self.manager.get(name)

    async def start_server(self, name: str, wait: float = 30.0) -> dict[str, Any]:
        child = self.child(name)
        self._refuse_in_emergency(f"start {name!r}")
        child.request_start()
        await child.wait_for(_settled_after_start, wait)
        return self.server_status(child)

    async def stop_server(self, name: str) -> dict[str, Any]:
        child = self.child(name)
        child.request_stop()
        await child.wait_for(lambda c: c.at_rest, child.config.stop_timeout + 5)
        return self.server_status(child)

    async def restart_server(self, name: str, wait: float = 30.0) -> dict[str, Any]:
        child = self.child(name)
        self._refuse_in_emergency(f"restart {name!r}")
        generation = child.generation
        child.request_restart()
        await child.wait_for(lambda c: c.generation > generation and _settled_after_start(c), wait)
        return self.server_status(child)

    def server_logs(self, name: str, lines: int = 100) -> list[str]:
        return self.child(name).stderr.tail(lines)

    def _refuse_in_emergency(self, action: str) -> None:
        if self.mode == "emergency":
            raise SupervisorError(
                f"cannot {action}: the supervisor is in emergency mode ({self.emergency_reason}); "
                "fix the cause, then call `recover`"
            )

    # -- emergency ---------------------------------------------------------------------

    async def emergency_stop(self, reason: str) -> dict[str, Any]:
        """Stop every child and refuse starts until `recover`."""
        self.mode = "emergency"
        self.emergency_reason = reason or "emergency stop requested"
        self._record("emergency", reason=self.emergency_reason)
        logger.error("EMERGENCY: %s; stopping all servers", self.emergency_reason)
        await self.manager.stop_all()
        return self.supervisor_block()

    async def recover(self) -> dict[str, Any]:
        """Leave emergency mode and start every enabled server again."""
        was = self.mode
        self.mode = "normal"
        self.emergency_reason = None
        self.consecutive_failures = 0
        self._record("recover", previous_mode=was)
        self.manager.start_all()
        for child in self.manager:
            if child.config.enabled:
                await child.wait_for(_settled_after_start, 30.0)
        return self.supervisor_block()

    def _on_child_event(self, event: ChildEvent) -> None:
        self.gateway.on_child_event(event)
        if event.kind == "exited" and event.data.get("early") and not event.data.get("requested"):
            self.consecutive_failures += 1
            self._record("failed_start", server=event.server, reason=event.data.get("reason"))
            if self.consecutive_failures >= self.settings.max_failures and self.mode != "emergency":
                reason = f"{self.consecutive_failures} consecutive failed starts (max_failures)"
                self._spawn(self.emergency_stop(reason))
        elif event.kind == "stable":
            self.consecutive_failures = 0
        elif event.kind == "health":
            self._record("health_restart", server=event.server, **event.data)
        if event.kind == "exited" and event.data.get("state") == ChildState.FATAL.value:
            self._record("fatal", server=event.server, reason=event.data.get("reason"))

    def _spawn(self, coro: Any) -> None:
        if self._tg is None:
            coro.close()
            return
        self._tg.start_soon(lambda: coro)

    def _record(self, kind: str, **data: Any) -> None:
        self.events.append({"at": time.time(), "event": kind, **data})
        del self.events[:-200]

    # -- status ------------------------------------------------------------------------

    def uptime_s(self) -> float:
        if self._started_monotonic is None:
            return 0.0
        return round(anyio.current_time() - self._started_monotonic, 1)

    def supervisor_block(self) -> dict[str, Any]:
        return {
            "status": "emergency" if self.mode == "emergency" else "running",
            "mode": self.mode,
            "emergency_reason": self.emergency_reason,
            "current_commit": None,
            "last_good_commit": None,
            "consecutive_failures": self.consecutive_failures,
            "max_failures": self.settings.max_failures,
            "uptime_s": self.uptime_s(),
            "strategy": "metamorphic" if self.consecutive_failures > 3 else "hybrid",
            "workspace": str(self.settings.workspace),
        }

    def server_status(self, child: ManagedChild) -> dict[str, Any]:
        machine = child.machine
        last_exit = machine.last_exit
        health = child.health
        uptime = machine.uptime()
        return {
            "name": child.name,
            "state": child.state.value,
            "pid": child.pid if child.state in (ChildState.STARTING, ChildState.RUNNING, ChildState.STOPPING) else None,
            "uptime_s": round(uptime, 1) if uptime is not None else None,
            "restarts": machine.restarts,
            "last_exit": None
            if last_exit is None
            else {"returncode": last_exit.returncode, "reason": last_exit.reason, "early": last_exit.early},
            "health": {"rss_mb": health.rss_mb, "cpu_percent": health.cpu_percent, "probe_ms": health.probe_ms},
            "last_error": child.last_error,
            "tools": len(child.tools),
            "gateway": self.gateway.server_status(child.name),
            "next_start_in_s": round(machine.next_start_at - anyio.current_time(), 2)
            if child.state is ChildState.BACKOFF and machine.next_start_at is not None
            else None,
        }

    def list_changes(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Recent proposals, newest first, each with `id`, `title`, `status`, `verdict`, `trigger`,
        `commit`, `created_at` and `stages` (`[{stage, at, detail}]`). Filled by the safety loop."""
        return []

    def evolution_status(self) -> dict[str, Any]:
        """Strategy, success rate, rollbacks (total and by trigger), mean verify time."""
        return {
            "strategy": self.supervisor_block()["strategy"],
            "proposals": 0,
            "applied": 0,
            "rolled_back": 0,
            "rejected": 0,
            "success_rate": None,
            "rollbacks_by_trigger": {},
            "mean_verify_s": None,
        }

    def status(self, name: str | None = None) -> dict[str, Any]:
        children = [self.child(name)] if name else list(self.manager)
        return {
            "supervisor": self.supervisor_block(),
            "servers": {child.name: self.server_status(child) for child in children},
        }


def _settled_after_start(child: ManagedChild) -> bool:
    return child.state in (ChildState.RUNNING, ChildState.BACKOFF, ChildState.EXITED, ChildState.FATAL, ChildState.STOPPED)
