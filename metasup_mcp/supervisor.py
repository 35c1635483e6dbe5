"""`Supervisor`: the composition root. It owns the child fleet and the emergency mode, and
answers every question the MCP surface, the status endpoint and the CLI ask.

Data flows one way: callers → Supervisor → managers → children and git. What status shows
is read from the owners at the time of asking, never copied.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from metasup_mcp.children.child import ChildEvent, ManagedChild, Supervision
from metasup_mcp.children.events import EventHub
from metasup_mcp.children.manager import ServerManager, UnknownServer
from metasup_mcp.children.sandbox import (
    PACKAGE_DIR,
    SandboxPlan,
    SandboxUnavailable,
    plan_sandbox,
    protected_paths,
)
from metasup_mcp.children.state import ChildState
from metasup_mcp.children.sweep import (
    StateInUse,
    claim_instance,
    lock_state_folder,
    new_instance_id,
    release_instance,
)
from metasup_mcp import redact as redaction
from metasup_mcp.config import Config
from metasup_mcp.evolution.behaviour import BehaviourCheck, ReplaySamples
from metasup_mcp.evolution.breaker import EvolutionBreaker
from metasup_mcp.evolution.pipeline import ChangeRequest, Progress
from metasup_mcp.evolution.proposals import Proposal
from metasup_mcp.evolution.service import ChangeError, ChangeService
from metasup_mcp import timeline
from metasup_mcp.safety.audit import AuditError
from metasup_mcp.safety.integrity import IntegrityGuard, Tamper
from metasup_mcp.gateway import Gateway
from metasup_mcp.gateway.naming import allowed, exposed_name
from metasup_mcp.operator_gate import OperatorGate
from metasup_mcp.safety.workspace import REF_LAST_GOOD, WorkspaceError

logger = logging.getLogger(__name__)

# Rollbacks of changes (they count towards the evolution breaker); operator and emergency ones do not.
_CHANGE_SOURCES = frozenset({"proposal", "on-disk", "probation"})

__all__ = ["ChangeError", "ChangeRequest", "Progress", "Supervisor", "SupervisorError", "UnknownServer"]


class SupervisorError(Exception):
    """A request the supervisor refuses in its current state; the message says what to do."""


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.supervisor
        self.instance_id = new_instance_id()
        self.mode = "normal"  # normal | changes_paused (the evolution breaker is open) | emergency
        self.emergency_reason: str | None = None
        self.breaker = EvolutionBreaker(config.supervisor.max_failures)
        self._tripped: dict[str, str] = {}  # change id -> what its rollback tripped, for its result
        self._started_monotonic: float | None = None
        self._tg: TaskGroup | None = None
        self.events: list[dict[str, Any]] = []  # recent notable events, newest last
        self.sandbox = _sandbox_for(config)
        self.integrity: IntegrityGuard | None = None  # sealed once the workspace is open
        redaction.install(server.env for server in self.settings.mcp_servers)
        self.manager = ServerManager(
            self.settings.mcp_servers,
            Supervision(
                workspace=self.settings.workspace,
                instance_id=self.instance_id,
                min_runtime=self.settings.min_runtime,
                health=self.settings.health_checks,
                restart=self.settings.restart,
                sandbox=self.sandbox,
            ),
            self._on_child_event,
        )
        self.gateway = Gateway(self.manager, self.settings.max_tool_name)  # sets each child's session hooks
        self.child_events = EventHub()  # live child events for the safety loop's watchers
        self.replay = ReplaySamples(self.settings.state_dir / "replay.json", self.settings.replay)
        # One gate for every operator door, so that wrong tokens are counted across all of them.
        self.operator_gate = OperatorGate(lambda: self.settings.approval)
        self.changes = ChangeService(
            config, lambda: list(self.manager), self.child_events, self._record, self.instance_id,
            refuse_reason=self._change_refusal, operator_gate=self.operator_gate, unrecoverable=self._unrecoverable,
            behaviour=BehaviourCheck(
                self.gateway.call_internal, self.gateway.read_only_tools, lambda: self.gateway.settled, self.replay
            ),
        )
        self.gateway.on_read_only_result = self._sample_read_only

    # -- lifecycle ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, autostart: bool = True) -> AsyncIterator[Supervisor]:
        """Hold the state folder, prepare the workspace, finish an interrupted change, sweep
        orphans of a killed predecessor, then run the fleet and the safety loop's watchers."""
        try:
            state_lock = lock_state_folder(self.settings.state_dir)
        except StateInUse as exc:
            raise SupervisorError(str(exc)) from None
        try:
            self._prepare_workspace()
            claim_instance(self.settings.state_dir, self.instance_id)
            try:
                await self.changes.open()
                assert self.changes.guard is not None and self.changes.pipeline is not None
                self.changes.pipeline.sandbox = self.changes.pipeline.coordinator.sandbox = self.sandbox
                self.changes.pipeline.integrity_check = self.integrity_check
                self.integrity = self._seal_protected_files()
                for child in self.manager:
                    child.before_start = self.changes.guard.before_start
                self._started_monotonic = anyio.current_time()
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    tg.start_soon(self.changes.run_background)
                    tg.start_soon(self.gateway.run)
                    tg.start_soon(self.replay.keep_flushed)
                    try:
                        async with self.manager.running(autostart=autostart):
                            yield self
                    finally:
                        tg.cancel_scope.cancel()  # only once every child has stopped
            finally:
                self._tg = None
                release_instance(self.settings.state_dir, self.instance_id)
        finally:
            os.close(state_lock)

    def _seal_protected_files(self) -> IntegrityGuard:
        settings, audit = self.settings, self.changes.audit
        files = [settings.workspace / ".git" / "config", audit.key_path]
        if not self.sandbox.kernel_enforced:
            # In the sandbox no child can write these: a change is the operator's (config_status says so).
            operator = (self.config.source, settings.safety_rules_file, settings.approval.operator_token_file)
            files += [p for p in operator if p]
            files += sorted(PACKAGE_DIR.rglob("*.py"))  # the reaper among them
        guard = IntegrityGuard(files, appended=[audit.path, audit.head_path], writer_lock=audit.lock)
        audit.before_write = guard.before_our_write
        audit.on_written = guard.appended_by_us
        guard.on_tamper = self._on_tamper
        guard.seal()
        if self.changes.workspace is not None:
            self.changes.workspace.before_git = guard.check
            # Without the sandbox a child can move refs: last good is what the supervisor set, and
            # a ref moved by anyone else is a finding (put back by the workspace).
            self.changes.workspace.on_foreign_last_good = lambda found, ours: guard.report(
                REF_LAST_GOOD, f"moved to {found or 'nothing'} by someone else (the supervisor set {ours}); put back"
            )
        return guard

    def integrity_check(self) -> str | None:
        """Why nothing may be accepted now: protected files changed behind the supervisor's back.

        Called before a change's git work and before anything becomes last good; the refusal
        holds until an operator calls `recover`.
        """
        if self.integrity is None:
            return None
        tamper = self.integrity.check()
        if tamper is None:
            return None
        return (
            f"protected files changed behind the supervisor's back ({tamper}); nothing is accepted until an "
            "operator has looked at them, put them right, and called `recover`"
        )

    def _on_tamper(self, tamper: Tamper) -> None:
        self._record("tamper", findings=list(tamper.findings))
        try:
            self.changes.audit.append("tamper", findings=list(tamper.findings))
        except AuditError as exc:
            logger.error("could not audit the tamper finding: %s", exc)

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
        generation = child.generation
        child.request_start()
        await child.wait_for(lambda c: _started_since(c, generation), wait)
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
        await child.wait_for(lambda c: c.settled_since(generation), wait)
        return self.server_status(child)

    def why_unavailable(self, tool: str) -> tuple[str, dict[str, Any]] | None:
        """For a tool no running server offers: if a server at rest owns it, (message, details)
        saying that the server is stopped, why, and what brings it back; None when none claims it."""
        for child in self.manager:
            if not child.at_rest:
                continue
            namespace = child.config.exposed_namespace
            rename = child.config.tools.rename
            offered = [rename.get(t.name, t.name) for t in child.tools if allowed(child.config.tools, t.name)]
            own = {exposed_name(namespace, name) for name in offered}
            if tool not in own and not (namespace and tool.startswith(f"{namespace}__")):
                continue
            if self.mode == "emergency":
                why, cure = f"emergency stop: {self.emergency_reason}", "call `recover` once the cause is fixed"
            elif child.state is ChildState.STOPPED:
                why = "stopped on request" if child.last_error is None else child.last_error
                cure = f"call start_server with name {child.name!r}"
            else:
                why = child.last_error or f"its process {child.state.value}"
                cure = f"fix the cause, then call start_server with name {child.name!r}"
            message = f"tool {tool!r}: server {child.name!r} is {child.state.value} ({why}); {cure}"
            return message, {"server": child.name, "state": child.state.value, "reason": "unavailable",
                             "retry": False, "mode": self.mode}
        return None

    def timeline(self, limit: int, kind: str | None = None) -> list[dict[str, Any]]:
        """Notable events, newest first: durable ones from the audit log (they survive a restart),
        failed starts and health restarts from memory (see `timeline`)."""
        return timeline.merge(timeline.from_audit(self.changes.audit.tail(timeline.AUDIT_WINDOW)),
                              self.events, limit, kind)

    def audit_tail(self, entries: int) -> list[dict[str, Any]]:
        """The newest audit entries, oldest first."""
        return self.changes.audit.tail(entries)

    def server_logs(self, name: str, lines: int = 100) -> list[str]:
        return self.child(name).stderr.tail(lines)

    def _refuse_in_emergency(self, action: str) -> None:
        if self.mode == "emergency":
            raise SupervisorError(
                f"cannot {action}: the supervisor is in emergency mode ({self.emergency_reason}); "
                "fix the cause, then call `recover`"
            )

    # -- the evolution breaker and the emergency stop -----------------------------------

    @property
    def consecutive_failures(self) -> int:
        """Consecutive rolled-back changes (the evolution breaker's count)."""
        return self.breaker.consecutive_failures

    async def emergency_stop(self, reason: str) -> dict[str, Any]:
        """Stop every child and refuse starts, changes and rollbacks until `recover`.

        A transaction in flight is cut short and rolled back (never accepted unverified)
        before the children stop.
        """
        reason = reason or "emergency stop requested"
        self._enter_emergency(reason)
        await self.changes.abort_transaction(f"emergency stop ({reason})")
        await self._automatic_emergency(reason)  # every server stopped, the workspace on last good
        return self.supervisor_block()

    def _enter_emergency(self, reason: str) -> None:
        self.mode = "emergency"
        self.emergency_reason = reason
        self._record("emergency", reason=reason)
        self._audit("emergency", reason=reason)
        logger.error("EMERGENCY: %s; stopping all servers", reason)

    def _unrecoverable(self, reason: str, change_id: str | None = None) -> None:
        """Last good itself cannot be brought back to health, or git is broken: emergency stop."""
        if self.mode == "emergency":
            return
        self._enter_emergency(reason)
        self.changes.halt()
        if change_id:
            self._tripped[change_id] = (
                f"EMERGENCY STOP: {reason}. Every server is being stopped; starts, changes and rollbacks "
                "are refused until `recover`"
            )
        if self._tg is not None:  # None only while shutting down
            self._tg.start_soon(self._automatic_emergency, reason)

    async def _automatic_emergency(self, reason: str) -> None:
        """Stop everything, then make sure the tree is last good (or a backup, when git fails)."""
        await self.manager.stop_all()
        try:
            restored = await self.changes.emergency_rollback()
        except Exception as exc:  # noqa: BLE001 — stay up, stopped, and say what is wrong
            logger.exception("emergency rollback failed")
            self.emergency_reason = f"{reason}; rolling back failed too ({exc}): restore the workspace by hand"
            restored = None
        if restored:
            self._record("rollback", source="emergency", trigger="emergency", reason=reason, to=restored)
        self._record("emergency_done", rolled_back_to=restored)

    def _sample_read_only(self, tool: str, arguments: dict[str, Any] | None, result: dict[str, Any]) -> None:
        """Keep calls answered by last good only: not while a change (or an on-disk edit) is on trial."""
        pipeline = self.changes.pipeline
        if pipeline is None or pipeline.in_transaction or not self.settings.replay.max_calls:
            return
        current, last_good = self.changes.commits()
        if current is not None and current == last_good:
            self.replay.observe(tool, arguments, result)
    async def recover(self) -> dict[str, Any]:
        """Close the evolution breaker; after an emergency stop, also start every enabled server again."""
        was = self.mode
        self.mode = "normal"
        self.emergency_reason = None
        self.breaker.close()
        self.changes.resume()
        if self.integrity is not None and self.integrity.tamper is not None:
            self._record("tamper_cleared", findings=list(self.integrity.tamper.findings))
            self.integrity.seal()  # the operator has looked: what is there now is trusted
        self._record("recover", previous_mode=was)
        self._audit("recover", previous_mode=was)
        if was != "emergency":
            return self.supervisor_block()
        generations = {child.name: child.generation for child in self.manager}
        self.manager.start_all()
        for child in self.manager:
            if child.config.enabled:
                await child.wait_for(lambda c: _started_since(c, generations[c.name]), 30.0)
        return self.supervisor_block()

    def _on_child_event(self, event: ChildEvent) -> None:
        # A failed start is that server's own problem (its restart policy ends it fatal):
        # it never stops the fleet. Only changes count, through the breaker (see _record).
        self.gateway.on_child_event(event)
        if event.kind == "exited" and event.data.get("early") and not event.data.get("requested"):
            self._record("failed_start", server=event.server, reason=event.data.get("reason"))
        elif event.kind == "health":
            self._record("health_restart", server=event.server, **event.data)
        if event.kind == "exited" and event.data.get("state") == ChildState.FATAL.value:
            self._record("fatal", server=event.server, reason=self.child(event.server).last_error)
            self._audit("fatal", server=event.server, reason=self.child(event.server).last_error)
        self.child_events.publish(event)

    def _judge_outcome(self, kind: str, data: dict[str, Any]) -> None:
        """Feed the breaker: rolled-back changes count, accepted ones reset the count."""
        if kind in ("accepted", "candidate_accepted"):
            self.breaker.change_accepted()
        elif kind == "rollback" and data.get("source") in _CHANGE_SOURCES:
            tripped = self.breaker.change_failed(data.get("id"), data.get("trigger"))
            if tripped is None or self.mode != "normal":
                return
            self.mode = "changes_paused"
            self._audit("breaker_open", reason=tripped, id=data.get("id"))
            logger.error("evolution breaker open: %s; changes refused until `recover`", tripped)
            if data.get("id"):
                self._tripped[data["id"]] = (
                    f"EVOLUTION BREAKER OPEN: {tripped}. Further changes are refused until `recover`; "
                    "the servers keep serving last good"
                )

    def _change_refusal(self) -> str | None:
        if (tampered := self.integrity_check()) is not None:
            return tampered
        if self.mode == "emergency":
            return f"the supervisor is in emergency mode ({self.emergency_reason}); call `recover` first"
        return self.breaker.refusal()

    def _audit(self, event: str, **data: Any) -> None:
        """Mode changes go to the audit log too (rare, small: written in place)."""
        try:
            self.changes.audit.append(event, **data)
        except Exception:  # noqa: BLE001 — the audit failing must not stop a mode change
            logger.exception("could not audit %s", event)

    # -- changes (the safety loop) -------------------------------------------------------

    async def propose_change(self, request: ChangeRequest, progress: Progress | None = None) -> Proposal:
        """Run a change through the safety loop; its result says if it tripped the breaker or an emergency."""
        proposal = await self.changes.propose(request, progress)
        if (note := self._tripped.pop(proposal.id, None)) is not None:
            proposal.reasons.append(note)
            await self.changes.save(proposal)
        return proposal

    def get_change(self, proposal_id: str) -> Proposal:
        return self.changes.get(proposal_id)

    async def decide_change(
        self, proposal_id: str, approve: bool, token: str, note: str = "", who: str | None = None,
        via: str = "api", progress: Progress | None = None,
    ) -> Proposal:
        """approve_change / reject_change: needs the operator token; never the proposer's session.
        `via` says which door (`mcp`, `http`, `api`); `who` is the MCP caller's connection identity."""
        return await self.changes.decide(proposal_id, approve, token, note, who, via, progress)

    def workspace_files(self, limit: int = 200) -> tuple[list[str], int]:
        """Up to `limit` files of the current commit, and how many there are in all."""
        workspace = self.changes.workspace
        if workspace is None:
            return [], 0
        try:
            files = workspace.tracked_files()
        except WorkspaceError:
            return [], 0
        return files[:limit], len(files)

    def pending_changes(self) -> list[dict[str, Any]]:
        """Proposals waiting for a human, newest first, each with its unified `diff`."""
        return [
            {**p.model_dump(mode="json"), "diff": self.changes.pending_diff(p.id) or ""}
            for p in self.changes.list("pending_approval", 100)
        ]

    async def rollback(self, target: str = "last_good", reason: str = "") -> dict[str, Any]:
        self._refuse_in_emergency("roll back")
        result = await self.changes.rollback(target, reason)
        self.replay.clear()  # answers sampled from the code left behind no longer say what to expect
        return result

    # -- configuration reload (see reload.py) ----------------------------------------------

    async def reload_config(self, trigger: str = "operator") -> dict[str, Any]:
        """Bring the servers to what the config file says now, as one transaction.

        Returns `{verdict, trigger, diff, not_reloaded, evidence?}`, verdict `applied`,
        `unchanged` or `rolled_back`; `ReloadRefused` if the file does not validate (nothing
        changes) and `SupervisorError` in emergency mode.
        """
        from metasup_mcp.config import ConfigError, load_config
        from metasup_mcp.reload import ConfigReload, ReloadRefused

        self._refuse_in_emergency("reload the configuration")
        if self.config.source is None:
            raise ReloadRefused("this supervisor was not started from a config file: there is nothing to reload")
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            self.audit_event("reload", verdict="rejected", trigger=trigger, problems=exc.problems)
            raise ReloadRefused(f"the config was not reloaded, the running servers are unchanged: {exc}") from None
        assert self.changes.pipeline is not None
        async with self.changes.pipeline.lock:  # no change, rollback or guard trial meanwhile
            return await ConfigReload(self).apply(new, trigger)

    def adopt_servers(self, servers: list[Any]) -> None:
        """The running `mcp_servers` after a reload (other keys stay as started)."""
        self.settings = self.settings.model_copy(update={"mcp_servers": servers})
        self.config = self.config.model_copy(update={"supervisor": self.settings})

    def audit_event(self, kind: str, **data: Any) -> None:
        """Into the hash-chained audit log and the recent events."""
        self.changes.audit.append(kind, **data)
        self._record(kind, **data)

    def _record(self, kind: str, **data: Any) -> None:
        self.events.append({"at": time.time(), "event": kind, **data})
        del self.events[:-200]
        self._judge_outcome(kind, data)

    # -- status ------------------------------------------------------------------------

    def uptime_s(self) -> float:
        if self._started_monotonic is None:
            return 0.0
        return round(anyio.current_time() - self._started_monotonic, 1)

    def supervisor_block(self) -> dict[str, Any]:
        current, last_good = self.changes.commits()
        return {
            "status": "emergency" if self.mode == "emergency" else "running",
            "mode": self.mode,
            "emergency_reason": self.emergency_reason,
            "breaker_reason": self.breaker.reason,
            "probation": self._probation(),
            "current_commit": current,
            "last_good_commit": last_good,
            "consecutive_failures": self.consecutive_failures,
            "max_failures": self.settings.max_failures,
            "uptime_s": self.uptime_s(),
            "strategy": (strategy := self.changes.strategy()).name,
            "strategy_reason": strategy.reason,
            "workspace": str(self.settings.workspace),
            "config": self.changes.config_status(),
            "sandbox": self.sandbox.describe(),
            "tamper": list(self.integrity.tamper.findings) if self.integrity and self.integrity.tamper else None,
        }

    def _probation(self) -> dict[str, Any] | None:
        """The newly accepted commit still on probation, and for how long (see evolution/aftercare.py)."""
        pipeline = self.changes.pipeline
        trial = pipeline.aftercare.current() if pipeline is not None else None
        if trial is None:
            return None
        return {"commit": trial.commit, "change": trial.proposal_id,
                "ends_in_s": round(trial.until - anyio.current_time(), 1), "servers": sorted(trial.generations)}

    def server_status(self, child: ManagedChild) -> dict[str, Any]:
        machine = child.machine
        last_exit = machine.last_exit
        health = child.health
        uptime = machine.uptime()
        live = child.state in (ChildState.STARTING, ChildState.RUNNING, ChildState.STOPPING)
        return {
            "name": child.name,
            "state": child.state.value,
            "pid": child.pid if live else None,
            "uptime_s": round(uptime, 1) if uptime is not None else None,
            "restarts": machine.restarts,
            "last_exit": None
            if last_exit is None
            else {"returncode": last_exit.returncode, "reason": last_exit.reason, "early": last_exit.early},
            # A server with no process has no figures: the last incarnation's would be stale.
            "health": {"rss_mb": health.rss_mb, "cpu_percent": health.cpu_percent, "probe_ms": health.probe_ms}
            if live else {"rss_mb": None, "cpu_percent": None, "probe_ms": None},
            "last_error": child.last_error,
            "tools": len(child.tools),
            "sandbox": self.sandbox.kind,  # what the current incarnation was started in
            "gateway": self.gateway.server_status(child.name),
            # Non-JSON-RPC lines the current (or last) incarnation wrote on stdout: dropped, counted.
            "stdout_garbage": {
                "lines": child.process.garbage_lines if child.process else 0,
                "last": child.process.last_garbage if child.process else None,
            },
            "next_start_in_s": round(machine.next_start_at - anyio.current_time(), 2)
            if child.state is ChildState.BACKOFF and machine.next_start_at is not None
            else None,
            **child.status_extras(),
        }

    def list_changes(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Recent proposals, newest first, each with `id`, `title`, `status`, `verdict`, `trigger`,
        `commit`, `created_at` and `stages` (`[{stage, at, detail}]`)."""
        return [proposal.model_dump(mode="json") for proposal in self.changes.list(status, limit)]

    def evolution_status(self) -> dict[str, Any]:
        """Strategy, success rate, rollbacks (total and by trigger), mean verify time."""
        performance = self.changes.performance()
        strategy = self.changes.coordinator.strategy()
        return {
            "strategy": strategy.name,
            "strategy_reason": strategy.reason,
            "strategy_limits": strategy.limits.model_dump(),
            "consecutive_failed_changes": performance.consecutive_failures,
            "performance_metric": performance.metric,
            "gain_source": performance.gain_source,
            "recent": performance.recent,
            "pending_approval": len(self.changes.list("pending_approval", 1000)),
            "proposals": performance.proposals,
            "applied": performance.applied,
            "rolled_back": performance.rolled_back,
            "rejected": performance.rejected,
            "success_rate": performance.success_rate,
            "performance_gain": performance.gain,
            "rollbacks_by_trigger": performance.rollbacks_by_trigger,
            "mean_verify_s": performance.mean_verify_s,
            "queue": self.changes.pipeline.queue_length if self.changes.pipeline else 0,
        }

    def status(self, name: str | None = None) -> dict[str, Any]:
        children = [self.child(name)] if name else list(self.manager)
        return {
            "supervisor": self.supervisor_block(),
            "servers": {child.name: self.server_status(child) for child in children},
        }


def _sandbox_for(config: Config) -> SandboxPlan:
    settings = config.supervisor
    readonly = [*settings.readonly_paths, *([settings.safety_rules_file] if settings.safety_rules_file else [])]
    token = settings.approval.operator_token_file
    protected = protected_paths(
        settings.workspace, settings.state_dir, config.source, readonly, [token] if token else [], settings.hidden_paths
    )
    try:
        return plan_sandbox(settings.sandbox, protected)
    except SandboxUnavailable as exc:
        raise SupervisorError(str(exc)) from None


def _started_since(child: ManagedChild, generation: int) -> bool:
    """Running, or a start asked after `generation` has settled (a stopped or fatal child has not)."""
    return child.state is ChildState.RUNNING or child.settled_since(generation)
