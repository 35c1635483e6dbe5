"""Finish or roll back a change transaction that did not end: the supervisor was killed
mid-way (found at the next start), or the transaction was cancelled or failed in flight.

The journal says how far it got; the answer is deterministic:
accepted → applied (last good moved, idempotently); saved (anything later, not accepted) →
the touched paths put back as the savepoint recorded them and the change's commit taken off
the branch (kept as rejected); begun only → nothing was written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from metasup_mcp.aio import blocking
from metasup_mcp.evolution.proposals import ProposalStore
from metasup_mcp.safety.audit import AuditLog
from metasup_mcp.safety.history import LastGoodHistory, move_last_good
from metasup_mcp.safety.journal import CorruptJournal, Journal, JournalRecord
from metasup_mcp.safety.workspace import Savepoint, Workspace, WorkspaceError

logger = logging.getLogger(__name__)


async def finish_interrupted(
    workspace: Workspace, journal: Journal, store: ProposalStore, audit: AuditLog, history: LastGoodHistory, why: str
) -> str | None:
    """Resolve the pending transaction, if any; return what was done (None: nothing pending)."""
    record = await blocking(journal.pending)
    if record is None:
        return None
    if isinstance(record, CorruptJournal):
        await blocking(audit.append, "journal_corrupt", problem=record.problem, moved_to=str(record.moved_to))
        return f"journal unreadable ({record.problem}); moved aside"
    outcome, verdict, trigger, rejected_ref, commit = await blocking(_resolve, workspace, history, record, why)
    proposal = store.get(record.txn_id)
    if proposal is not None and proposal.verdict is None:
        proposal.reasons.append(outcome)
        if verdict == "rolled_back":
            proposal.trigger = trigger
            proposal.rejected_ref = rejected_ref or proposal.rejected_ref
            proposal.commit = commit or proposal.commit
        proposal.mark(verdict, outcome)  # type: ignore[arg-type]
        await blocking(store.save, proposal)
    steps = [step.name for step in record.steps]
    await blocking(audit.append, "recovered", id=record.txn_id, steps=steps, outcome=outcome, verdict=verdict,
                   commit=commit if verdict == "applied" else None)
    await blocking(journal.finish, verdict)
    logger.warning("transaction %s: %s", record.txn_id, outcome)
    return outcome


def _resolve(
    ws: Workspace, history: LastGoodHistory, record: JournalRecord, why: str
) -> tuple[str, str, str, str | None, str | None]:
    """(outcome, verdict, trigger, rejected ref, commit) after putting the workspace right."""
    data = {step.name: step.data for step in record.steps}
    trigger = "supervisor_restart" if why.startswith("supervisor restarted") else "interrupted"
    commit = data.get("committed", {}).get("commit")
    if "accepted" in data:
        if commit:
            move_last_good(ws, history, commit, f"accepted {record.txn_id}")  # idempotent
        return f"applied ({why} after acceptance)", "applied", trigger, None, commit
    saved = data.get("saved")
    if saved is None:
        return f"{why} before anything was written", "rolled_back", trigger, None, None
    savepoint = Savepoint(saved.get("ref"), saved["commit"], saved.get("index"), saved["head"])
    paths = list(saved.get("paths", []))
    if commit is None:
        commit = _own_tip(ws, record.txn_id, savepoint.head)  # committed, killed before the journal said so
    ref = ws.keep_rejected(record.txn_id, commit) if commit else None
    undo_change(ws, savepoint, paths, commit, f"interrupted {record.txn_id}")
    return f"{why} mid-change: put back as it was before", "rolled_back", trigger, ref, commit


def _own_tip(ws: Workspace, txn_id: str, base: str) -> str | None:
    """HEAD, if it is this transaction's commit on top of `base`."""
    head = ws.head()
    if head == base or not ws.is_ancestor(base, head):
        return None
    return head if f"Metasup-Proposal: {txn_id}" in ws.commit_message(head) else None


def undo_change(ws: Workspace, saved: Savepoint, touched: Sequence[str], commit: str | None, what: str) -> str | None:
    """Put `touched` back as `saved` recorded them and take the change's commit off the branch;
    return the ref saving what was on disk first (servers may have written there meanwhile).

    Idempotent (recovery may repeat it). The branch goes back only if it is still at the
    change's commit; if someone committed on top meanwhile, the restoration is committed forward.
    """
    during = None if commit is not None and ws.untouched_since_commit(touched) else ws.save(touched, f"during {what}").ref
    ws.put_back(saved, touched)
    if commit is not None and not ws.move_head(commit, saved.head) and ws.head() != saved.head:
        with contextlib.suppress(WorkspaceError):  # nothing to commit: the branch already agrees
            ws.commit_paths(touched, f"metasup: roll back {commit[:12]} ({what})")
    return during
