"""Finish or roll back a change transaction that did not end: the supervisor was killed
mid-way (found at the next start), or the transaction was cancelled or failed in flight.

The journal says how far it got; the answer is deterministic:
accepted → applied; committed → rolled back to last good (the commit kept as rejected);
written or snapshot → reset to the base and the user's uncommitted state restored;
begun only → nothing was written.
"""

from __future__ import annotations

import logging

from metasup_mcp.aio import blocking
from metasup_mcp.evolution.proposals import ProposalStore
from metasup_mcp.safety.audit import AuditLog
from metasup_mcp.safety.journal import CorruptJournal, Journal, JournalRecord
from metasup_mcp.safety.workspace import Workspace

logger = logging.getLogger(__name__)


async def finish_interrupted(
    workspace: Workspace, journal: Journal, store: ProposalStore, audit: AuditLog, why: str
) -> str | None:
    """Resolve the pending transaction, if any; return what was done (None: nothing pending)."""
    record = await blocking(journal.pending)
    if record is None:
        return None
    if isinstance(record, CorruptJournal):
        await blocking(audit.append, "journal_corrupt", problem=record.problem, moved_to=str(record.moved_to))
        return f"journal unreadable ({record.problem}); moved aside"
    outcome, verdict, trigger, rejected_ref, commit = await _resolve(workspace, record, why)
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
    await blocking(audit.append, "recovered", id=record.txn_id, steps=steps, outcome=outcome, verdict=verdict)
    await blocking(journal.finish, verdict)
    logger.warning("transaction %s: %s", record.txn_id, outcome)
    return outcome


async def _resolve(
    ws: Workspace, record: JournalRecord, why: str
) -> tuple[str, str, str, str | None, str | None]:
    """(outcome, verdict, trigger, rejected ref, commit) after putting the workspace right."""
    data = {step.name: step.data for step in record.steps}
    last_good = record.data.get("last_good") or await blocking(ws.head)
    base = record.data.get("base") or last_good
    trigger = "supervisor_restart" if why.startswith("supervisor restarted") else "interrupted"
    if "committed" in data:
        commit = data["committed"]["commit"]
        if "accepted" in data:
            await blocking(ws.mark_last_good, commit)  # idempotent: acceptance is journaled first
            return f"applied ({why} after acceptance)", "applied", trigger, None, commit
        await blocking(ws.snapshot, f"before rolling back interrupted {record.txn_id}")
        ref = await blocking(ws.keep_rejected, record.txn_id, commit)
        await blocking(ws.reset_to, last_good)
        return f"{why} mid-verify: rolled back to last good", "rolled_back", trigger, ref, commit
    if "snapshot" in data:
        await blocking(ws.reset_to, base)
        if snapshot := data["snapshot"].get("ref"):
            await blocking(ws.restore_uncommitted, snapshot)
        return f"{why} mid-apply: nothing was committed", "rolled_back", trigger, None, None
    return f"{why} before anything was written", "rolled_back", trigger, None, None
