"""validate → approve → snapshot → write → commit → check → restart and watch → accept or roll back.

One transaction at a time (a queue; the caller is told its position). Every stage is written
to the journal before the next begins, so a supervisor killed at any point finishes or
rolls back the transaction deterministically at its next start (`recover_pending`).

Rollback triggers: `compile`, `check:<name>`, `early_exit`, `handshake`, `health:<reason>`,
`behaviour:<tool>` (a `verify` call or a replayed read-only call differs), `regression` (the
benchmark fell more than `benchmark.max_regression`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from pydantic import ValidationError

from metasup_mcp.aio import blocking as _io
from metasup_mcp.children.child import ManagedChild
from metasup_mcp.children.events import EventHub
from metasup_mcp.children.process import child_environment
from metasup_mcp.children.sandbox import SandboxPlan
from metasup_mcp.children.state import ChildState
from metasup_mcp.config import SupervisorConfig
from metasup_mcp.evolution.approval import PendingContent
from metasup_mcp.evolution.behaviour import BehaviourCheck, VerifyCall
from metasup_mcp.evolution.aftercare import Aftercare, restart_and_settle, runs_python
from metasup_mcp.evolution.checks import run_checks, trigger_for
from metasup_mcp.evolution.content_check import ContentCheck
from metasup_mcp.evolution.coordinator import Coordinator
from metasup_mcp.evolution.performance import MetricStore
from metasup_mcp.evolution.proposals import ChangeSummary, Proposal, ProposalStore, new_proposal_id
from metasup_mcp.evolution.recovery import finish_interrupted, undo_change
from metasup_mcp.evolution.seal import seal_code
from metasup_mcp.evolution.unscreened import unscreened_code, unscreened_reason
from metasup_mcp.evolution.requests import Asker, ChangeError, ChangeRequest, Progress
from metasup_mcp.evolution.stages import ApprovalStage, BehaviourStage
from metasup_mcp.safety.audit import AuditLog
from metasup_mcp.safety.history import LastGoodHistory, move_last_good
from metasup_mcp.safety.journal import Journal
from metasup_mcp.safety.rules import ChangePolicy, ChangeSetError, FileChange, parse_changes, validate_changes
from metasup_mcp.safety.workspace import Savepoint, Workspace, WorkspaceError

logger = logging.getLogger(__name__)

__all__ = ["Asker", "ChangeError", "ChangeRequest", "Pipeline", "Progress", "restart_and_settle"]

# Environment switch for fault-injection tests: SIGKILL this process when the named step is reached.
FAULT_ENV = "METASUP_FAULT_AT"
# Time beyond handshake_timeout + min_runtime that a restarted child gets to prove itself.
VERIFY_SLACK = 5.0
# Bound on putting the workspace right after a transaction is cut short (shielded from cancellation).
RECOVERY_TIMEOUT = 60.0
STDERR_EVIDENCE_LINES = 20
MAX_VERIFY_CALLS = 20  # behaviour checks one proposal may ask for
TRIAL_WAITS = 3  # times a change waits for an on-disk trial's verdict before withdrawing it


class Pipeline(ApprovalStage, BehaviourStage):
    def __init__(
        self,
        workspace: Workspace,
        settings: SupervisorConfig,
        policy: ChangePolicy,
        store: ProposalStore,
        journal: Journal,
        audit: AuditLog,
        history: LastGoodHistory,
        children: Callable[[], Sequence[ManagedChild]],
        events: EventHub,
        instance_id: str,
        refuse_reason: Callable[[], str | None] = lambda: None,
        record: Callable[..., None] = lambda kind, **data: None,
        coordinator: Coordinator | None = None,
        pending: PendingContent | None = None,
        behaviour: BehaviourCheck | None = None,
        unrecoverable: Callable[[str, str | None], None] = lambda reason, change_id: None,
    ) -> None:
        self.workspace = workspace
        self.settings = settings
        self.policy = policy
        self.store = store
        self.journal = journal
        self.audit = audit
        self.history = history
        self._children = children
        self._events = events
        self._instance_id = instance_id  # checks carry it, so a killed supervisor's leftovers are swept
        self._refuse_reason = refuse_reason
        self._record = record  # notable events for status and the dashboard
        self.coordinator = coordinator or Coordinator(settings, store, MetricStore(settings.state_dir / "metrics.json"))
        self.pending = pending or PendingContent(settings.state_dir / "pending")
        self.behaviour = behaviour  # None: no gateway to call through (verify and replay are skipped)
        self._deciding: set[str] = set()  # held proposals being decided right now
        self.lock = anyio.Lock()  # one owner of the workspace at a time: changes, rollbacks, the guard, backups
        # True while a transaction owns the workspace: the guard must not put its state on trial.
        self.in_transaction = False
        self._unrecoverable = unrecoverable  # last good cannot be brought back to health: emergency stop
        self._transaction_scope: anyio.CancelScope | None = None
        self._transaction_done = anyio.Event()
        self._abort_reason: str | None = None
        self.halted = False  # set by an emergency stop: no restarts until resume()
        self._healthy_before: set[str] = set()
        self._began_at = 0.0  # clock time the transaction in flight began
        self.aftercare = Aftercare(self)  # probation, and bringing last good back to health
        self._content = ContentCheck(workspace)  # edits git's stat cache cannot see (same second, same size)
        self.sandbox: SandboxPlan | None = None  # what checks run in (set by the Supervisor)
        # Why nothing may be accepted now (protected files tampered with), or None; set by the Supervisor.
        self.integrity_check: Callable[[], str | None] = lambda: None
        # The on-disk guard's trial in flight (set by the ChangeService): wait for its verdict,
        # then (the lock held) undo it if it still has none.
        self.wait_for_trial: Callable[[], Awaitable[None]] = _nothing
        self.withdraw_trial: Callable[[str], Awaitable[None]] = _nothing
        self.trial_paths: Callable[[], Sequence[str]] = lambda: ()  # the paths of that trial, if any

    @property
    def queue_length(self) -> int:
        return self.lock.statistics().tasks_waiting

    async def propose(self, request: ChangeRequest, progress: Progress | None = None) -> Proposal:
        say = progress or _quiet
        proposal = Proposal(
            id=new_proposal_id(), title=request.title, description=request.description,
            steps=list(request.steps), dry_run=request.dry_run,
        )
        position = self.queue_length + 1 if self.lock.locked() else 0
        proposal.mark("queued", f"position {position}")
        await self._save(proposal)
        await self._audit("proposal", id=proposal.id, title=proposal.title)
        if position:
            await say(f"queued: position {position}")
        proposal.mark("validating")
        changes = await self._validate(proposal, request)
        if changes is None:
            return await self._finish(proposal, "rejected")
        if len(request.verify) > MAX_VERIFY_CALLS:
            proposal.reasons.append(f"verify: {len(request.verify)} calls; at most {MAX_VERIFY_CALLS} per change")
            return await self._finish(proposal, "rejected")
        try:
            proposal.verify = [VerifyCall.model_validate(v).model_dump() for v in request.verify]
        except ValidationError as exc:
            proposal.reasons.append(f"verify: {exc.errors()[0]['msg']} (each item is {{tool, arguments, expect, match}})")
            return await self._finish(proposal, "rejected")
        if request.dry_run:
            return await self._finish(proposal, "valid", "dry run: the change set passed validation")
        if await self._unscreened(proposal, changes, self.trial_paths()):
            return await self._finish(proposal, "rejected")
        return await self._approve(proposal, changes, request, say)

    async def _unscreened(self, proposal: Proposal, changes: list[FileChange], on_trial: Sequence[str] = ()) -> bool:
        """Refuse (reason added, True) a change whose restart would run code nobody screened."""
        touched = [c.path for c in changes]
        servers, restarted = list(self._children()), self.affected(touched)
        ws = self.workspace
        last_good = await _io(ws.last_good) or await _io(ws.head)
        found = await _io(unscreened_code, ws, last_good, restarted, servers, touched, on_trial, self._content)
        if found:
            stopped = {c.name for c in servers if not c.wanted and c not in restarted}
            proposal.reasons.append(unscreened_reason(found, stopped))
        return bool(found)

    @asynccontextmanager
    async def _workspace_after_trial(self) -> AsyncIterator[None]:
        """The workspace lock, taken once no on-disk trial is in flight: one that began while this
        waited for the lock (a server starting on the user's edits) gets its verdict first too,
        rather than being withdrawn unjudged (after `TRIAL_WAITS` turns it is withdrawn)."""
        for turn in range(TRIAL_WAITS):
            await self.wait_for_trial()
            await self.lock.acquire()
            if turn == TRIAL_WAITS - 1 or not self.trial_paths():
                break
            self.lock.release()
        try:
            yield
        finally:
            self.lock.release()

    async def _apply(self, proposal: Proposal, changes: list[FileChange], say: Progress) -> Proposal:
        # Again, for edits made since it was proposed (a human approving). Outside the lock: a child
        # whose start waits for it while no transaction is marked would block its own restart. A
        # write after this is still caught by the seal (`code_swapped`).
        if await self._unscreened(proposal, changes, self.trial_paths()):
            return await self._finish(proposal, "rejected")
        async with self._workspace_after_trial():
            refused = self._refuse_reason()
            if refused:
                proposal.reasons.append(refused)
                return await self._finish(proposal, "rejected")
            # An on-disk candidate still unjudged must not ride into last good under this change.
            await self.withdraw_trial(f"{proposal.id} takes the workspace")
            if self.settings.benchmark is not None:  # the baseline: last good's metric, once
                await self._measure_baseline(say)
            self.in_transaction = True
            self._began_at = anyio.current_time()
            done = self._transaction_done = anyio.Event()
            try:
                with anyio.CancelScope() as scope:
                    self._transaction_scope = scope
                    return await self._transaction(proposal, changes, say)
                return await self._aborted(proposal)  # only abort() cancels that scope
            finally:
                self.in_transaction = False
                self._transaction_scope = self._abort_reason = None
                done.set()

    async def abort(self, reason: str) -> None:
        """Cut the transaction in flight short (an emergency stop): it is resolved from the journal
        as a killed supervisor's would be, so it is rolled back unless verification had finished.
        Until `resume`, nothing here restarts a server (the emergency stop has stopped them all)."""
        self.halted = True
        scope = self._transaction_scope
        if scope is None:
            return
        self._abort_reason = reason
        scope.cancel()
        await self._transaction_done.wait()

    def resume(self) -> None:
        """After `recover`: restarts are the pipeline's to ask for again."""
        self.halted = False

    async def _aborted(self, proposal: Proposal) -> Proposal:
        resolved = self.store.get(proposal.id) or proposal  # finish_interrupted marked the stored one
        resolved.reasons.append(f"cut short by {self._abort_reason}")
        await self._save(resolved)
        return resolved

    async def _validate(self, proposal: Proposal, request: ChangeRequest) -> list[FileChange] | None:
        try:
            changes = parse_changes(list(request.changes))
        except ChangeSetError as exc:
            proposal.reasons.append(str(exc))
            return None
        proposal.changes = [
            ChangeSummary(path=c.path, delete=c.delete, bytes=len(c.content.encode()) if c.content else 0)
            for c in changes
        ]
        violations = await _io(validate_changes, changes, self.policy, self.workspace.root)
        proposal.reasons.extend(f"{v.rule}: {v.path}: {v.message}" for v in violations)
        return None if violations else changes

    async def _transaction(self, proposal: Proposal, changes: list[FileChange], say: Progress) -> Proposal:
        """Apply and verify under the journal; whatever interrupts it, the workspace ends on
        last good (or the change accepted), exactly as a restart of the supervisor would leave it."""
        ws = self.workspace
        last_good = await _io(ws.last_good) or await _io(ws.head)
        proposal.base_commit = await _io(ws.head)
        proposal.mark("applying")
        await self._save(proposal)
        await _io(self.journal.begin, proposal.id, base=proposal.base_commit, last_good=last_good)
        try:
            return await self._apply_and_verify(proposal, changes, last_good, say)
        except BaseException as exc:
            outcome = await self._resolve_interrupted(proposal, exc)
            if isinstance(exc, Exception):
                raise ChangeError(
                    f"{proposal.id} failed midway ({type(exc).__name__}: {exc}); {outcome}. "
                    "Nothing was lost: see get_change and the refs under refs/metasup/"
                ) from exc
            raise

    async def _resolve_interrupted(self, proposal: Proposal, exc: BaseException) -> str:
        why = "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else f"failed ({type(exc).__name__})"
        with anyio.CancelScope(shield=True), anyio.move_on_after(RECOVERY_TIMEOUT):
            try:
                outcome = await finish_interrupted(self.workspace, self.journal, self.store, self.audit, self.history, why)
            except Exception:  # the workspace itself is broken: the next start restores a backup
                logger.exception("could not resolve interrupted transaction %s", proposal.id)
                return "the workspace could not be put right; restart the supervisor to recover it"
            if proposal.restarted and self._abort_reason is None:  # children may run the abandoned code
                for child in self.affected([c.path for c in proposal.changes]):
                    child.request_restart()
            return outcome or "it had already finished"
        return "resolving it timed out; restart the supervisor to recover"

    async def _apply_and_verify(
        self, proposal: Proposal, changes: list[FileChange], last_good: str, say: Progress
    ) -> Proposal:
        ws = self.workspace
        touched = [c.path for c in changes]
        _fault_point("begin")
        if await _io(_all_unchanged, ws, changes, self.settings.max_file_bytes):
            proposal.reasons.append("nothing to apply: the workspace already has exactly this content")
            await _io(self.journal.finish, "rejected")
            return await self._finish(proposal, "rejected")
        ignored_before = await _io(ws.ignored, touched)  # judged before the change can edit .gitignore
        saved = await _io(ws.save, touched, f"before {proposal.id}")
        proposal.snapshot_ref = saved.ref
        await _io(self.journal.step, "saved", paths=touched, **saved._asdict())
        _fault_point("snapshot")
        await say("writing the change")
        await _io(ws.apply, changes)
        await _io(self.journal.step, "written")
        _fault_point("written")
        try:
            proposal.commit = await _io(
                ws.commit_paths, touched, f"metasup: {proposal.title}", {"Metasup-Proposal": proposal.id}, ignored_before
            )
        except WorkspaceError as exc:
            if not str(exc).startswith("nothing to commit"):
                raise
            proposal.reasons.append("only data or ignored files changed: nothing was committed")
        await _io(self.journal.step, "committed", commit=proposal.commit)
        await self._audit("apply", id=proposal.id, commit=proposal.commit, paths=touched, saved_ref=saved.ref)
        _fault_point("committed")

        started = time.monotonic()
        proposal.mark("verifying")
        await self._save(proposal)
        failure = await self._verify(proposal, changes, say)
        if failure is None and (tampered := self.integrity_check()) is not None:
            failure = ("tamper", tampered)
        proposal.verify_s = round(time.monotonic() - started, 3)
        if failure is None:
            await _io(self.journal.step, "accepted")  # before last good moves: recovery can redo the move
            _fault_point("accepted")
            if proposal.commit is not None:
                await _io(move_last_good, ws, self.history, proposal.commit, f"accepted {proposal.id}")
            await self._audit("accepted", id=proposal.id, commit=proposal.commit, verify_s=proposal.verify_s)
            self._record("accepted", id=proposal.id, commit=proposal.commit)
            self.aftercare.begin_probation(proposal, last_good)
            await _io(self.journal.finish, "applied")
            await self._prune()
            now = (await _io(ws.last_good) or "")[:12]
            return await self._finish(proposal, "applied", f"verified in {proposal.verify_s:.1f}s; last good is now {now}")
        trigger, evidence = failure
        await say(f"verification failed ({trigger}); rolling back")
        await self._roll_back(proposal, saved, touched, trigger, evidence)
        await _io(self.journal.finish, "rolled_back")
        return await self._finish(proposal, "rolled_back", f"{trigger}: put back as it was before {proposal.id}")

    async def _verify(self, proposal: Proposal, changes: list[FileChange], say: Progress) -> tuple[str, str] | None:
        affected = self.affected([c.path for c in changes])
        commit = proposal.commit or await _io(self.workspace.head)
        # What is checked and restarted must be the commit itself, until it is accepted (see seal.py).
        seal, differing = await _io(seal_code, self.workspace, commit, affected, self._content)
        if differing:
            return "code_swapped", (
                f"code the restarted servers watch differs on disk from {commit[:12]}: {', '.join(differing[:20])}. "
                "Verifying would prove code that is not the commit; propose those edits too, or undo them"
            )
        failure = await self._checks_restart_behaviour(proposal, changes, affected, say)
        if failure is None and (written := await _io(seal.broken)):
            return "code_swapped", (
                f"code was written on disk while {proposal.id} was verified: {', '.join(written[:20])}; what the "
                "servers ran may not be the commit"
            )
        return failure

    async def _checks_restart_behaviour(
        self, proposal: Proposal, changes: list[FileChange], affected: list[ManagedChild], say: Progress
    ) -> tuple[str, str] | None:
        await say("running checks")
        changed = [c.path for c in changes if not c.delete]
        env = child_environment({}, instance_id=self._instance_id)
        proposal.checks = await run_checks(self.settings.checks, self.workspace.root, changed, env, self.sandbox)
        await _io(self.journal.step, "checked", ok=all(c.ok for c in proposal.checks))
        _fault_point("checked")
        for spec, check in zip(self.settings.checks, proposal.checks, strict=False):
            if not check.ok:
                return trigger_for(spec), check.output_tail
        proposal.restarted = [child.name for child in affected]
        # Who was serving before the change: after a rollback they must serve again (see aftercare).
        self._healthy_before = {c.name for c in affected if c.state is ChildState.RUNNING}
        if not affected:
            return await self._verify_behaviour(proposal, say)
        await say(f"restarting {', '.join(proposal.restarted)} and watching for min_runtime")
        await _io(self.journal.step, "restarting", servers=proposal.restarted)
        _fault_point("restarting")
        failure = await self.watch_restart(affected)
        if failure is None:
            failure = await self._verify_behaviour(proposal, say)
        return failure

    async def screen(self, paths: Sequence[str]) -> tuple[str, str] | None:
        """What a proposal passes before it may run, for edits found on disk: the rules, the
        approval mode and the configured checks. None: they may go on trial; else (trigger, why)."""
        ws = self.workspace
        changes, unreadable = [], []
        for path in paths:
            text = await _io(ws.read_text, path, self.policy.max_file_bytes)
            if text is not None:
                changes.append(FileChange(path, text))
            elif os.path.lexists(ws.root / path):
                unreadable.append(f"{path}: not UTF-8 text, not a regular file, or over max_file_bytes")
        violations = await _io(validate_changes, changes, self.policy, ws.root)
        problems = unreadable + [f"{v.rule}: {v.path}: {v.message}" for v in violations]
        if problems:
            return "rules", "; ".join(problems)
        decision = (await _io(self.coordinator.assess, ws.root, changes)).decision
        if decision.verdict != "approve":
            return f"approval:{decision.verdict}", (
                f"{decision.reason} ({decision.decided_by}): edits found on disk in {', '.join(paths)} run only "
                "where a proposal would be applied without a person; propose them instead"
            )
        env = child_environment({}, instance_id=self._instance_id)
        checks = await run_checks(self.settings.checks, ws.root, [c.path for c in changes], env, self.sandbox)
        for spec, check in zip(self.settings.checks, checks, strict=False):
            if not check.ok:
                return trigger_for(spec), check.output_tail
        return None

    def affected(self, paths: Sequence[str]) -> list[ManagedChild]:
        """Children whose `watch` globs match a changed path (no `watch`: every path), wanted running.

        A Python file that no `watch` covers may still be imported by any server that runs Python
        from the workspace: those all restart (an unverified import must not wait for the next start).
        """
        children = [c for c in self._children() if c.wanted or c.state is ChildState.FATAL]
        unwatched_python = any(
            path.endswith(".py") and not any(c.config.watches(path) for c in self._children()) for path in paths
        )
        return [
            child for child in children
            if any(child.config.watches(path) for path in paths) or (unwatched_python and runs_python(child))
        ]

    async def watch_restart(self, children: Sequence[ManagedChild]) -> tuple[str, str] | None:
        """Restart `children` and watch each new incarnation for `min_runtime`: None if all held."""
        before = {child.name: child.generation for child in children}
        by_name = {child.name: child for child in children}
        budget = max(c.handshake_allowance + c.machine.policy.min_runtime for c in children) + VERIFY_SLACK
        with self._events.subscribe() as events:
            for child in children:
                child.request_restart()
            pending = set(before)
            with anyio.move_on_after(budget):
                async for event in events:
                    if event.server not in pending or event.generation <= before[event.server]:
                        continue  # the old incarnation stopping, or another server
                    child = by_name[event.server]
                    if event.kind == "exited":
                        reason = str(event.data.get("reason", ""))
                        trigger = "handshake" if reason.startswith("handshake") else "early_exit"
                        return trigger, _evidence(child, reason, before[child.name])
                    if event.kind == "health":
                        detail = str(event.data.get("detail"))
                        return f"health:{event.data.get('reason')}", _evidence(child, detail, before[child.name])
                    if event.kind == "stable":
                        pending.discard(event.server)
                        if not pending:
                            return None
        names = ", ".join(sorted(pending))
        return "handshake", f"{names}: not up and stable within {budget:g}s"

    async def _roll_back(self, proposal: Proposal, saved: Savepoint, touched: list[str], trigger: str, evidence: str) -> None:
        await _io(self.journal.step, "rolling_back", trigger=trigger)
        proposal.trigger = trigger
        proposal.reasons.append(f"{trigger}: {evidence}".strip())
        if proposal.commit is not None:
            proposal.rejected_ref = await _io(self.workspace.keep_rejected, proposal.id, proposal.commit)
        during = await _io(undo_change, self.workspace, saved, touched, proposal.commit, f"verification of {proposal.id}")
        _fault_point("rolled_back")
        await self._audit(
            "rollback", id=proposal.id, trigger=trigger, bad_commit=proposal.commit, to=saved.head,
            rejected_ref=proposal.rejected_ref, saved_ref=saved.ref, during_ref=during, evidence=evidence[-2000:],
        )
        self._record(
            "rollback", id=proposal.id, source="proposal", trigger=trigger, reason=evidence.splitlines()[0][:300],
            **{"from": proposal.commit, "to": saved.head},
        )
        # A server that (re)started on its own during the transaction (a first start, a crash
        # restart) may run the unverified change too: it restarts on last good as well.
        for child in self.affected([c.path for c in proposal.changes]) if not self.halted else ():
            if child.name not in proposal.restarted and (child.machine.started_at or 0) >= self._began_at:
                child.request_restart()
        if proposal.restarted:  # children ran the bad code: bring them back on what was there
            await self.aftercare.bring_back([c for c in self._children() if c.name in proposal.restarted],
                                            self._healthy_before, proposal.id)
        await self._prune()

    async def _prune(self) -> None:
        try:
            await _io(self.workspace.prune, self.settings.rollback.keep_commits, self.history.commits())
        except WorkspaceError as exc:
            logger.warning("could not prune old metasup refs: %s", exc)

    async def _finish(self, proposal: Proposal, verdict: str, detail: str = "") -> Proposal:
        proposal.mark(verdict, detail)  # type: ignore[arg-type]
        await self._save(proposal)
        if verdict in ("rejected", "valid"):
            await self._audit(verdict, id=proposal.id, reasons=proposal.reasons)
        return proposal

    async def _save(self, proposal: Proposal) -> None:
        await _io(self.store.save, proposal)  # fsync'd: off the event loop

    async def _audit(self, event: str, **data: Any) -> None:
        await _io(self.audit.append, event, **data)

    # -- start-up recovery ------------------------------------------------------------------

    async def recover_pending(self) -> str | None:
        """Finish or roll back a transaction a killed supervisor left; return what was done."""
        return await finish_interrupted(
            self.workspace, self.journal, self.store, self.audit, self.history, "supervisor restarted"
        )


def _evidence(child: ManagedChild, reason: str, before_generation: int) -> str:
    """The reason and what the trial's own incarnations printed (never an earlier one's lines)."""
    tail = "\n".join(child.stderr.tail(STDERR_EVIDENCE_LINES, since_generation=before_generation))
    return f"{child.name}: {reason}" + (f"\n--- stderr tail ---\n{tail}" if tail else "")


def _all_unchanged(ws: Workspace, changes: Sequence[FileChange], limit: int) -> bool:
    return all(c.content is not None and ws.read_text(c.path, limit) == c.content for c in changes)


async def _nothing(*_: Any) -> None:
    return None


async def _quiet(message: str) -> None:
    logger.info("pipeline: %s", message)


def _fault_point(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        logger.error("fault injection: SIGKILL at pipeline step %r", step)
        os.kill(os.getpid(), signal.SIGKILL)
