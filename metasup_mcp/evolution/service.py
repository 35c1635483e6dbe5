"""`ChangeService`: the safety loop's owner — workspace, journal, audit, proposals, pipeline,
on-disk guard and backups — opened before the children start and asked by the Supervisor.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from metasup_mcp.aio import blocking
from metasup_mcp.children.child import ManagedChild
from metasup_mcp.children.events import EventHub
from metasup_mcp.config import Config
from metasup_mcp.operator_gate import OperatorGate
from metasup_mcp.evolution.approval import PendingContent
from metasup_mcp.evolution.behaviour import BehaviourCheck
from metasup_mcp.evolution.coordinator import Coordinator, Performance
from metasup_mcp.evolution.performance import MetricStore, benchmark_files
from metasup_mcp.evolution.strategy import StrategyChoice
from metasup_mcp.evolution.guard import DiskGuard
from metasup_mcp.evolution.pipeline import ChangeError, ChangeRequest, Pipeline, Progress, restart_and_settle
from metasup_mcp.evolution.proposals import Proposal, ProposalStore, new_proposal_id
from metasup_mcp.safety.audit import AuditError, AuditLog
from metasup_mcp.safety.history import LastGoodHistory, move_last_good
from metasup_mcp.safety.journal import Journal, JournalError
from metasup_mcp.safety.ownership import Ownership
from metasup_mcp.safety.rules import ChangePolicy, load_safety_rules
from metasup_mcp.safety.workspace import Workspace, WorkspaceError

logger = logging.getLogger(__name__)

Recorder = Callable[..., None]

__all__ = ["ApprovalRefused", "ChangeError", "ChangeService"]


class ApprovalRefused(ChangeError):
    """An operator action refused for who asked: a wrong or missing token, or the proposer itself."""

# The supervisor's own code: protected if it lies inside the workspace.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


class ChangeService:
    def __init__(
        self,
        config: Config,
        children: Callable[[], Sequence[ManagedChild]],
        events: EventHub,
        record: Recorder,
        instance_id: str,
        refuse_reason: Callable[[], str | None],
        operator_gate: OperatorGate,
        behaviour: BehaviourCheck | None = None,
        unrecoverable: Callable[[str, str | None], None] = lambda reason, change_id: None,
    ) -> None:
        settings = config.supervisor
        self._config = config
        self.settings = settings
        self._children = children
        self._events = events
        self._record = record
        self._instance_id = instance_id
        self._refuse_reason = refuse_reason
        self._operator_gate = operator_gate
        self._unrecoverable = unrecoverable
        state = settings.state_dir
        assert state is not None  # load_config always resolves it
        self.backup_dir = state / "backups"
        self.audit = AuditLog(state / "audit.jsonl")
        self.journal = Journal(state / "journal.json")
        self.history = LastGoodHistory(state / "last_good.json")
        self.store = ProposalStore(state / "proposals")
        self.coordinator = Coordinator(settings, self.store, MetricStore(state / "metrics.json"))
        self.pending = PendingContent(state / "pending")
        self.behaviour = behaviour
        # Operator-owned, wherever they are: never staged, committed, reverted or deleted, and
        # protected from proposals if they lie inside the workspace.
        always = [state, _PACKAGE_DIR]
        if config.source is not None:
            always.append(config.source)
        if settings.safety_rules_file is not None:
            always.append(settings.safety_rules_file)
        if settings.benchmark is not None:  # a change must not rewrite what measures it
            always.extend(benchmark_files(settings.benchmark, settings.workspace))
        if settings.approval.operator_token_file is not None:
            always.append(settings.approval.operator_token_file)
        self.ownership = Ownership(settings.workspace, tuple(always), tuple(settings.data_paths))
        self.policy = ChangePolicy(
            protected_paths=list(settings.protected_paths),
            writable_paths=list(settings.writable_paths),
            max_file_bytes=settings.max_file_bytes,
            max_files=settings.max_files,
            safety_rules=load_safety_rules(settings.safety_rules_file) if settings.safety_rules_file else [],
            always_protected=always,
        )
        self.workspace: Workspace | None = None
        self.pipeline: Pipeline | None = None
        self.guard: DiskGuard | None = None

    # -- start-up ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create, or restore from a bundle) the workspace and finish any interrupted change."""
        settings = self.settings
        try:
            ws = await blocking(Workspace.open_or_init, settings.workspace, (), self.ownership)
            healthy = await blocking(ws.is_healthy)
        except WorkspaceError as exc:
            logger.error("workspace %s is unreadable by git (%s)", settings.workspace, exc)
            healthy, ws = False, None
        if not healthy:
            ws = await self._restore_from_backup()
        assert ws is not None
        if await blocking(ws.last_good) is None:  # the initial state is the first good one
            await blocking(move_last_good, ws, self.history, await blocking(ws.head), "the workspace as first opened")
        self.workspace = ws
        self.pipeline = pipeline = Pipeline(
            ws, settings, self.policy, self.store, self.journal, self.audit, self.history, self._children,
            self._events, self._instance_id, refuse_reason=self._refuse_reason, record=self._record,
            coordinator=self.coordinator, pending=self.pending, behaviour=self.behaviour,
            unrecoverable=self._unrecoverable,
        )
        pipeline.aftercare.move_code = self._move_code
        self.guard = DiskGuard(
            ws, self.policy, pipeline.lock, lambda: pipeline.in_transaction, self._events, self.audit,
            self.history, pipeline.screen, self._record,
            paused=self._refuse_reason, on_accepted=pipeline.aftercare.watch, children=self._children,
        )
        pipeline.wait_for_trial, pipeline.withdraw_trial = self.guard.wait_judged, self.guard.withdraw
        pipeline.trial_paths = lambda: self.guard.trial.paths if self.guard and self.guard.trial else ()
        outcome = await self.pipeline.recover_pending()
        if outcome:
            self._record("recovered", outcome=outcome)
        await blocking(self.history.settle, await blocking(ws.last_good))
        self.audit.append("start", workspace=str(settings.workspace), head=await blocking(ws.head))

    async def _restore_from_backup(self) -> Workspace:
        try:
            ws = await blocking(Workspace.restore_from_bundle, self.settings.workspace, self.backup_dir, (), self.ownership)
        except WorkspaceError as exc:
            raise ChangeError(
                f"the workspace {self.settings.workspace} is broken and no backup could restore it ({exc}); "
                f"look in {self.backup_dir} and the .git.broken-* folder"
            ) from exc
        self.audit.append("restored_from_backup", backup_dir=str(self.backup_dir))
        self._record("restored_from_backup")
        return ws

    async def run_background(self) -> None:
        """The on-disk guard and periodic backups, for the life of the supervisor."""
        assert self.guard is not None
        assert self.pipeline is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.guard.run)
            tg.start_soon(self._expire_pending)
            tg.start_soon(self.pipeline.aftercare.run_probation)
            if self.settings.rollback.enabled:
                tg.start_soon(self._backups)

    async def _expire_pending(self) -> None:
        """Refuse proposals left pending past `approval.timeout` (checked a few times per timeout)."""
        assert self.pipeline is not None
        interval = min(5.0, self.settings.approval.timeout / 4)
        while True:
            for proposal_id in await self.pipeline.expire_pending():
                self._record("approval_expired", id=proposal_id)
            await anyio.sleep(interval)

    async def _backups(self) -> None:
        while True:
            try:
                await self.backup_now()
            except WorkspaceError as exc:
                logger.warning("backup failed: %s", exc)
            await anyio.sleep(self.settings.rollback.backup_interval)

    async def backup_now(self) -> Path:
        """Write a `git bundle` of the whole workspace (all refs) into the state folder."""
        assert self.workspace is not None and self.pipeline is not None
        async with self.pipeline.lock:
            return await blocking(self.workspace.write_bundle, self.backup_dir, self.settings.rollback.keep_backups)

    # -- requests ---------------------------------------------------------------------------

    async def propose(self, request: ChangeRequest, progress: Progress | None = None) -> Proposal:
        assert self.pipeline is not None
        with _operational_errors("the change"):
            return await self.pipeline.propose(request, progress)

    async def save(self, proposal: Proposal) -> None:
        await blocking(self.store.save, proposal)

    async def abort_transaction(self, reason: str) -> None:
        """Roll back the change in flight, if any, and restart nothing until `resume` (see `Pipeline.abort`)."""
        if self.pipeline is not None:
            await self.pipeline.abort(reason)

    def halt(self) -> None:
        """An emergency from inside the safety loop: finish what runs, but restart nothing until `resume`."""
        if self.pipeline is not None:
            self.pipeline.halted = True

    def resume(self) -> None:
        if self.pipeline is not None:
            self.pipeline.resume()

    def get(self, proposal_id: str) -> Proposal:
        proposal = self.store.get(proposal_id)
        if proposal is None:
            recent = ", ".join(p.id for p in self.store.list(limit=5)) or "none yet"
            raise ChangeError(f"no change with id {proposal_id!r}; recent ones: {recent}")
        return proposal

    def list(self, status: str | None = None, limit: int = 50) -> list[Proposal]:
        return self.store.list(status, limit)

    def performance(self) -> Performance:
        return self.coordinator.performance()

    def strategy(self) -> StrategyChoice:
        return self.coordinator.strategy()

    async def decide(
        self, proposal_id: str, approve: bool, token: str, note: str, who: str | None, via: str,
        progress: Progress | None = None,
    ) -> Proposal:
        """An operator approves or rejects a pending proposal: the token is checked, and the
        session that proposed it can never approve it (`who`: the asking connection's identity)."""
        assert self.pipeline is not None
        await self.pipeline.expire_pending()
        proposal = self.get(proposal_id)
        problem = self._operator_gate.problem(token)
        if problem is not None:
            self.audit.append("decision_refused", id=proposal_id, via=via, reason=problem)
            raise ApprovalRefused(f"cannot {'approve' if approve else 'reject'} {proposal_id}: {problem}")
        if proposal.status != "pending_approval":
            raise ChangeError(
                f"{proposal_id} is not waiting for approval (it is {proposal.verdict or proposal.status})"
            )
        content = self.pending.get(proposal_id)
        if approve and via == "mcp" and who is None:
            self.audit.append("decision_refused", id=proposal_id, via=via, reason="caller without session identity")
            raise ApprovalRefused(
                f"cannot approve {proposal_id} from a stateless connection: nothing tells it apart from the session "
                "that proposed the change. Approve from a stdio or 2025-11-25 session, `metasup-mcp approve`, "
                "or the dashboard"
            )
        if approve and who is not None and content is not None and content.get("proposer") == who:
            self.audit.append("decision_refused", id=proposal_id, via=via, reason="self-approval")
            raise ApprovalRefused(
                f"cannot approve {proposal_id}: this session proposed it, and a change is never approved by the "
                "session that proposed it; approve it from another session, `metasup-mcp approve`, or the dashboard"
            )
        decided_by = f"operator ({via})"
        with _operational_errors("the change"):
            return await self.pipeline.decide_pending(proposal, approve, decided_by, note, progress)

    async def answer_elicitation(self, proposal_id: str, action: str, progress: Progress | None = None) -> Proposal:
        """The proposing client's answer, on retry, to the approval it was asked (2026-07-28 era)."""
        assert self.pipeline is not None
        await self.pipeline.expire_pending()
        proposal = self.get(proposal_id)
        if proposal.status != "pending_approval":
            return proposal  # expired or already decided: its verdict says so
        approve = action == "accept"
        who = f"human (MCP elicitation, {action})"
        with _operational_errors("the change"):
            note = "" if approve else f"{action}d at the client" if action == "decline" else f"{action}led at the client"
            return await self.pipeline.decide_pending(proposal, approve, who, note, progress)

    def pending_diff(self, proposal_id: str) -> str | None:
        content = self.pending.get(proposal_id)
        return None if content is None else str(content.get("diff", ""))

    async def rollback(self, target: str, reason: str) -> dict[str, Any]:
        """Put the code back as a verified commit has it (see docs/safety-model.md).

        `target`: `last_good`, `previous` (the verified commit before the current last good in
        the history of last-good moves), or a commit that was once last good (or the initial
        one). Data and operator-owned files are never touched; every code path it overwrites
        is saved first. A rollback to where the code already is changes nothing and says so.
        """
        with _operational_errors("the rollback"):
            return await self._rollback(target, reason)

    async def _rollback(self, target: str, reason: str) -> dict[str, Any]:
        assert self.workspace is not None and self.pipeline is not None
        ws = self.workspace
        async with self.pipeline.lock:
            current, last_good = await blocking(ws.head), await blocking(ws.last_good)
            to = await self._resolve_target(target)
            paths = await blocking(self._code_paths_differing, to)
            if not paths and to == last_good:
                return {"from": current, "to": to, "noop": True, "restarted": [], "saved_ref": None,
                        "message": f"nothing to roll back: the code is already at {to[:12]}, last good"}
            saved = await blocking(ws.save, paths, f"before rollback to {to[:12]}")
            kept = await self._keep_unverified(current, to)
            await blocking(ws.put_back, to, paths)
            moved_branch = await blocking(self._branch_to, current, to, paths)
            await blocking(move_last_good, ws, self.history, to, f"rollback: {reason}")
            affected = self.pipeline.affected(paths)
            await blocking(self.audit.append, "rollback", source="operator", trigger="manual", reason=reason,
                           bad_commit=current, to=to, saved_ref=saved.ref, rejected_ref=kept, paths=paths)
            self._record("rollback", source="operator", trigger="manual", reason=reason, **{"from": current, "to": to})
        await restart_and_settle(affected)
        return {"from": current, "to": to, "noop": False, "saved_ref": saved.ref, "rejected_ref": kept,
                "branch": "moved back" if moved_branch else "committed forward", "paths": paths,
                "restarted": [c.name for c in affected]}

    async def _move_code(self, to: str, *, source: str, trigger: str, reason: str, change_id: str | None) -> None:
        """With the pipeline's lock held: the code back to verified `to` as `rollback` puts it (what it
        overwrites saved first), `to` made last good, audited (probation failures, fallbacks)."""
        ws = self.workspace
        assert ws is not None
        current = await blocking(ws.head)
        paths = await blocking(self._code_paths_differing, to)
        saved = await blocking(ws.save, paths, f"before {source} rollback to {to[:12]}")
        kept = await self._keep_unverified(current, to)
        await blocking(ws.put_back, to, paths)
        await blocking(self._branch_to, current, to, paths)
        await blocking(move_last_good, ws, self.history, to, f"{source}: {reason[:200]}")
        await blocking(self.audit.append, "rollback", id=change_id, source=source, trigger=trigger,
                       reason=reason[:300], bad_commit=current, to=to, saved_ref=saved.ref, rejected_ref=kept,
                       paths=paths, evidence=reason[-2000:])
        self._record("rollback", id=change_id, source=source, trigger=trigger, reason=reason[:300],
                     **{"from": current, "to": to})

    def _code_paths_differing(self, to: str) -> list[str]:
        """What a rollback to `to` resets: paths committed differently since `to`, and on-disk
        edits under some server's `watch`; never data, operator-owned or other uncommitted work."""
        ws = self.workspace
        assert ws is not None
        committed = set(ws.changed_paths(to, untracked=False, worktree=False))
        watched = {p for p in ws.changed_paths(to, untracked=False) if any(c.config.watches(p) for c in self._children())}
        return ws.ownership.code_only(sorted(committed | watched))

    def _branch_to(self, current: str, to: str, paths: list[str]) -> bool:
        """Move the branch back to `to` if only the supervisor committed since; otherwise commit
        the rolled-back paths on top (someone's own commits stay on their branch). True: moved."""
        ws = self.workspace
        assert ws is not None
        if current == to:
            return False
        if ws.only_ours_between(to, current) and ws.move_head(current, to):
            return True
        try:
            ws.commit_paths(paths, f"metasup: roll back to {to[:12]}", {"Metasup-Rollback": to})
        except WorkspaceError as exc:
            if not str(exc).startswith("nothing to commit"):
                raise
        return False

    async def _keep_unverified(self, current: str, to: str) -> str | None:
        """Before the branch leaves `current` behind: keep it under a rejected ref unless it
        stays reachable anyway (verified, or an ancestor of where the workspace goes)."""
        ws = self.workspace
        assert ws is not None
        if current in await blocking(ws.verified_commits) or await blocking(ws.is_ancestor, current, to):
            return None
        return await blocking(ws.keep_rejected, new_proposal_id(prefix="r"), current)

    async def _resolve_target(self, target: str) -> str:
        ws = self.workspace
        assert ws is not None
        verified = set(await blocking(ws.verified_commits)) | set(self.history.commits())
        initial = await blocking(ws.initial_commit)
        last_good = await blocking(ws.last_good)
        if target == "last_good":
            assert last_good is not None
            return last_good
        if target == "previous":
            previous = await blocking(self.history.previous)
            if previous is None:
                raise ChangeError(
                    "there is no verified commit before last good in the history of last-good moves; "
                    "use rollback(target=<commit>) with a commit that was once last good"
                )
            return previous
        try:
            sha = await blocking(ws.resolve, target)
        except (WorkspaceError, ValueError) as exc:
            raise ChangeError(f"{target!r} is not a commit of the workspace: {exc}") from exc
        if sha != initial and sha not in verified:
            raise ChangeError(
                f"{target!r} was never verified by the supervisor; roll back only to last_good, previous, "
                "a commit that was once last good, or the initial commit"
            )
        return sha

    async def emergency_rollback(self) -> str | None:
        """Part of an emergency: code back to last good (or a backup when git itself fails)."""
        assert self.workspace is not None and self.pipeline is not None
        try:
            async with self.pipeline.lock:
                ws = self.workspace
                if self.guard is not None:  # an on-disk candidate on trial is undone, its edits saved
                    await self.guard.withdraw("emergency stop")
                last_good, current = await blocking(ws.last_good), await blocking(ws.head)
                if last_good is None:
                    return None
                paths = await blocking(self._code_paths_differing, last_good)
                if not paths:
                    return None
                saved = await blocking(ws.save, paths, "before emergency rollback")
                kept = await self._keep_unverified(current, last_good)
                await blocking(ws.put_back, last_good, paths)
                await blocking(self._branch_to, current, last_good, paths)
                await blocking(self.audit.append, "rollback", source="emergency", trigger="emergency",
                               bad_commit=current, to=last_good, saved_ref=saved.ref, rejected_ref=kept, paths=paths)
                return last_good
        except WorkspaceError as exc:
            logger.error("emergency rollback failed (%s): restoring from the newest backup", exc)
            self._use(await self._restore_from_backup())
            return "backup"

    def _use(self, ws: Workspace) -> None:
        """Point everything that works on the workspace at this one (after a restore)."""
        if self.workspace is not None:  # the integrity check and the foreign-last-good report go on
            ws.before_git, ws.on_foreign_last_good = self.workspace.before_git, self.workspace.on_foreign_last_good
        self.workspace = ws
        if self.pipeline is not None:
            self.pipeline.workspace = ws
        if self.guard is not None:
            self.guard.workspace = ws

    # -- status -----------------------------------------------------------------------------

    def config_status(self) -> dict[str, Any]:
        """The config file: where it is, whether it lies in the workspace, and whether the file
        on disk still is what the supervisor runs (an edit takes effect only by a restart)."""
        source = self._config.source
        if source is None:
            return {"path": None, "inside_workspace": False, "changed_on_disk": False}
        try:
            on_disk: str | None = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            on_disk = None
        return {
            "path": str(source),
            "inside_workspace": self.ownership.lies_inside(source),
            "changed_on_disk": on_disk != self._config.source_sha256,
            "state_dir": str(self.settings.state_dir),
        }

    def commits(self) -> tuple[str | None, str | None]:
        """(current, last good) as the ref files say now; (None, None) before the workspace opens."""
        return self.workspace.peek() if self.workspace is not None else (None, None)


@contextmanager
def _operational_errors(what: str) -> Iterator[None]:
    """git, the journal, the audit log or the disk failing: one error a person can act on."""
    try:
        yield
    except (WorkspaceError, JournalError, AuditError, OSError) as exc:
        raise ChangeError(
            f"{what} could not be carried out: {exc}. Fix the cause (disk space, permissions, a held "
            ".git/index.lock) and try again; if the workspace looks wrong, restart the supervisor to recover it"
        ) from exc
