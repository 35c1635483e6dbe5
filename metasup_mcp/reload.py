"""Configuration hot reload: the running servers brought to what the config file says, as one
transaction.

`diff_servers(old, new)` compares the running `mcp_servers` with the file's: added, removed,
changed (any key differs) and unchanged. `ConfigReload.apply(new)` then, holding the
workspace lock (no change or rollback runs meanwhile): stops the removed and changed servers,
starts the added and changed ones from the new config, and watches each for its
`min_runtime`: it must get through the MCP handshake and stay running. If one does not, the
new servers are stopped and the previous ones started again, and the result carries the
evidence (state, last error, last stderr lines). Unchanged servers are never touched.
Clients hear `list_changed` through the gateway as the lists change; every reload is audited.
Supervisor-level keys (everything outside `mcp_servers`) are not reloaded: the result names
the ones that differ, for a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.children.state import ChildState
from metasup_mcp.config import Config, ServerConfig, SupervisorConfig
from metasup_mcp.operator_gate import OperatorGate
from metasup_mcp.supervisor import SupervisorError

if TYPE_CHECKING:
    from metasup_mcp.supervisor import Supervisor

logger = logging.getLogger(__name__)
EVIDENCE_LINES = 20


class ReloadRefused(SupervisorError):
    """A reload that cannot be attempted (bad token, no config file, a config that does not validate)."""


@dataclass(frozen=True)
class ServerDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "unchanged": self.unchanged}


def diff_servers(old: list[ServerConfig], new: list[ServerConfig]) -> ServerDiff:
    before, after = {s.name: s for s in old}, {s.name: s for s in new}
    return ServerDiff(
        added=[n for n in after if n not in before],
        removed=[n for n in before if n not in after],
        changed=[n for n in after if n in before and after[n] != before[n]],
        unchanged=[n for n in after if n in before and after[n] == before[n]],
    )


def settings_not_reloaded(old: SupervisorConfig, new: SupervisorConfig) -> list[str]:
    """Supervisor keys that differ between `old` and `new` but take a restart to apply."""
    return sorted(
        key for key in SupervisorConfig.model_fields
        if key != "mcp_servers" and getattr(old, key) != getattr(new, key)
    )


def check_operator_token(gate: OperatorGate, given: str) -> None:
    """`ReloadRefused` unless `gate` lets `given` act (the same token as approve_change)."""
    problem = gate.problem(given)
    if problem is not None:
        raise ReloadRefused(f"cannot reload: {problem}")


class ConfigReload:
    """One reload transaction over `supervisor`'s fleet and gateway."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor

    async def apply(self, new: Config, trigger: str) -> dict[str, Any]:
        sup = self.sup
        diff = diff_servers(sup.settings.mcp_servers, new.supervisor.mcp_servers)
        pending = settings_not_reloaded(sup.settings, new.supervisor)
        result: dict[str, Any] = {"trigger": trigger, "diff": diff.as_dict(), "not_reloaded": pending}
        if pending:
            result["note"] = f"{', '.join(pending)} changed: these take effect when the supervisor restarts"
        if diff.empty:
            sup.audit_event("reload", verdict="unchanged", **result)
            return {"verdict": "unchanged", **result}
        old = {s.name: s for s in sup.settings.mcp_servers}
        fresh = {s.name: s for s in new.supervisor.mcp_servers}
        outgoing = diff.removed + diff.changed
        wanted_before = {name: sup.child(name).wanted for name in outgoing}
        retired = {name: await self._retire(name) for name in outgoing}
        incoming = [self._enlist(fresh[name]) for name in diff.added + diff.changed]
        failures = await self._trial(incoming)
        if not failures:
            for child in incoming:
                self._guard(child)
            sup.adopt_servers(new.supervisor.mcp_servers)
            sup.audit_event("reload", verdict="applied", **result)
            logger.info("reload (%s) applied: %s", trigger, diff.as_dict())
            return {"verdict": "applied", **result}
        for child in incoming:
            await self._retire(child.name)
        for name in outgoing:
            child = retired[name]
            self._adopt(child)
            if wanted_before[name] and old[name].enabled:
                child.request_start()
            self._guard(child)  # its start waits for the workspace lock, which this reload releases next
        result["evidence"] = failures
        sup.audit_event("reload", verdict="rolled_back", **result)
        logger.warning("reload (%s) rolled back: %s", trigger, failures)
        return {"verdict": "rolled_back", **result}

    async def _retire(self, name: str) -> ManagedChild:
        child = await self.sup.manager.release(name)
        self.sup.gateway.detach(name)
        return child

    def _enlist(self, config: ServerConfig) -> ManagedChild:
        child = self.sup.manager.create(config)
        self._adopt(child)
        if config.enabled:
            child.request_start()
        return child

    def _adopt(self, child: ManagedChild) -> None:
        child.before_start = None
        self.sup.manager.adopt(child)
        self.sup.gateway.attach(child)

    def _guard(self, child: ManagedChild) -> None:
        """Let the on-disk guard judge edits at this child's starts. Not during the reload's own
        trial: the guard takes the workspace lock, which the reload holds."""
        if self.sup.changes.guard is not None and not child.config.is_remote:
            child.before_start = self.sup.changes.guard.before_start

    async def _trial(self, children: list[ManagedChild]) -> dict[str, dict[str, Any]]:
        """Each enabled child must finish its handshake and stay running for its min_runtime."""
        failures: dict[str, dict[str, Any]] = {}

        async def watch(child: ManagedChild) -> None:
            if not child.config.enabled:
                return
            min_runtime = child.machine.policy.min_runtime
            await child.wait_for(lambda c: c.settled_since(0), child.config.handshake_timeout + 5)
            generation = child.generation
            if child.state is ChildState.RUNNING:
                survived = not await child.wait_for(
                    lambda c: c.state is not ChildState.RUNNING or c.generation != generation, min_runtime
                )
                if survived:
                    return
            failures[child.name] = _evidence(child, min_runtime)

        async with anyio.create_task_group() as tg:
            for child in children:
                tg.start_soon(watch, child)
        return failures


def _evidence(child: ManagedChild, min_runtime: float) -> dict[str, Any]:
    last_exit = child.machine.last_exit
    return {
        "state": child.state.value,
        "problem": child.last_error or (last_exit.reason if last_exit else None)
        or f"not running through its min_runtime of {min_runtime:g}s",
        "stderr": child.stderr.tail(EVIDENCE_LINES),
    }
