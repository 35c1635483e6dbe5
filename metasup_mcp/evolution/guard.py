"""The seed's loop, for edits made on disk (by the children themselves, or anyone).

Before a child starts while the workspace differs from last good, the state is committed as
a *candidate*. If the child then dies or turns unhealthy within `min_runtime`, the candidate
is kept under a rejected ref and the workspace is reset to last good (the child's next
start runs the last good code); if it survives, the candidate becomes last good.

Edits to protected paths are never given a trial: they are reverted from last good at
once, whenever they are seen (before each start and on a short poll).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from metasup_mcp.aio import blocking as _io
from metasup_mcp.children.child import ChildEvent, ManagedChild
from metasup_mcp.children.events import EventHub
from metasup_mcp.evolution.proposals import new_proposal_id
from metasup_mcp.safety.audit import AuditLog
from metasup_mcp.safety.rules import ChangePolicy, is_protected
from metasup_mcp.safety.workspace import Workspace

logger = logging.getLogger(__name__)

Recorder = Callable[..., None]


@dataclass
class Trial:
    id: str
    candidate: str
    last_good: str
    generations: dict[str, int] = field(default_factory=dict)  # server → incarnation on trial


class DiskGuard:
    def __init__(
        self,
        workspace: Workspace,
        policy: ChangePolicy,
        lock: anyio.Lock,
        in_transaction: Callable[[], bool],
        events: EventHub,
        audit: AuditLog,
        record: Recorder,
        poll_interval: float = 2.0,
    ) -> None:
        self.workspace = workspace
        self.policy = policy
        self.lock = lock  # the pipeline's: one owner of the workspace at a time
        self._in_transaction = in_transaction
        self._events = events
        self.audit = audit
        self._record = record
        self.poll_interval = poll_interval
        self.trial: Trial | None = None

    async def before_start(self, child: ManagedChild) -> None:
        """Put the on-disk state on trial with this incarnation, if it differs from last good."""
        if self._in_transaction():
            return  # a proposal or a rollback owns the workspace and verifies it itself
        async with self.lock:
            await self._revert_protected()
            ws = self.workspace
            last_good = await _io(ws.last_good) or await _io(ws.head)
            if self.trial is not None and self.trial.last_good != last_good:
                self.trial = None  # last good moved under it (a change was applied): start afresh
            if self.trial is not None:
                self.trial.generations[child.name] = child.generation
                return
            dirty, head = await _io(ws.is_dirty), await _io(ws.head)
            if not dirty and head == last_good:
                return
            changed = await _io(ws.changed_paths, last_good)
            if not any(child.config.watches(path) for path in changed):
                return  # edits elsewhere: this server cannot judge them
            trial_id = new_proposal_id(prefix="c")
            candidate = (
                await _io(ws.commit_all, "metasup: on-disk edits (candidate)", {"Metasup-Candidate": trial_id})
                if dirty
                else head
            )
            self.trial = Trial(trial_id, candidate, last_good, {child.name: child.generation})
            await _io(self.audit.append, "candidate", id=trial_id, commit=candidate, last_good=last_good, server=child.name)
            logger.info("on-disk edits committed as candidate %s (%s), on trial with %s", trial_id, candidate[:12], child.name)

    async def run(self) -> None:
        """Judge trials from child events, and revert protected edits on a poll."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll_protected)
            with self._events.subscribe() as events:
                async for event in events:
                    try:
                        await self._judge(event)
                    except Exception:  # git or the audit log failing must not stop the supervisor
                        logger.exception("could not judge the on-disk trial; dropping it (HEAD stays as it is)")
                        self.trial = None

    async def _judge(self, event: ChildEvent) -> None:
        trial = self.trial
        if trial is None or trial.generations.get(event.server) != event.generation:
            return
        if event.kind == "stable":
            del trial.generations[event.server]
            if not trial.generations:
                await self._accept(trial)
        elif event.kind == "exited" and event.data.get("requested"):
            # Stopped on purpose (an operator, or a change's restart): it can no longer judge.
            del trial.generations[event.server]
            if not trial.generations:
                self.trial = None
        elif event.kind == "exited" and event.data.get("early"):
            await self._reject(trial, "early_exit", f"{event.server}: {event.data.get('reason')}")
        elif event.kind == "health":
            await self._reject(trial, f"health:{event.data.get('reason')}", f"{event.server}: {event.data.get('detail')}")

    async def _still_current(self, trial: Trial) -> bool:
        """False when a change or rollback moved last good since the trial began (it is stale)."""
        if self.trial is trial and await _io(self.workspace.last_good) == trial.last_good:
            return True
        self.trial = None if self.trial is trial else self.trial
        return False

    async def _accept(self, trial: Trial) -> None:
        async with self.lock:
            if not await self._still_current(trial):
                return
            self.trial = None
            await _io(self.workspace.mark_last_good, trial.candidate)
            await _io(self.audit.append, "candidate_accepted", id=trial.id, commit=trial.candidate)
            self._record("candidate_accepted", id=trial.id, commit=trial.candidate)

    async def _reject(self, trial: Trial, trigger: str, evidence: str) -> None:
        async with self.lock:
            if not await self._still_current(trial):
                return
            self.trial = None
            ws = self.workspace
            snapshot = await _io(ws.snapshot, f"before rolling back candidate {trial.id}")
            ref = await _io(ws.keep_rejected, trial.id, trial.candidate)
            await _io(ws.reset_to, trial.last_good)
            await _io(
                self.audit.append,
                "rollback", id=trial.id, source="on-disk", trigger=trigger, bad_commit=trial.candidate,
                to=trial.last_good, rejected_ref=ref, snapshot_ref=snapshot, evidence=evidence,
            )
            self._record(
                "rollback", id=trial.id, source="on-disk", trigger=trigger, reason=evidence,
                **{"from": trial.candidate, "to": trial.last_good},
            )
            logger.warning("on-disk edits broke a server (%s: %s): rolled back to %s", trigger, evidence, trial.last_good[:12])

    async def _poll_protected(self) -> None:
        while True:
            await anyio.sleep(self.poll_interval)
            if self.lock.locked():
                continue  # its owner checks or resets the tree itself
            try:
                async with self.lock:
                    await self._revert_protected()
            except Exception:  # git or the audit log failing: try again at the next poll
                logger.exception("protected-path check failed")

    async def _revert_protected(self) -> None:
        ws = self.workspace
        last_good = await _io(ws.last_good)
        if last_good is None:
            return
        changed = await _io(ws.changed_paths, last_good)
        touched = [path for path in changed if is_protected(path, self.policy, ws.root)]
        if not touched:
            return
        await _io(ws.restore_paths, last_good, touched)
        await _io(self.audit.append, "revert", paths=touched, restored_from=last_good)
        self._record("protected_revert", paths=touched)
        logger.warning("reverted on-disk edits to protected paths from last good: %s", ", ".join(touched))
