"""The approval stage and the behaviour stage of verification, as parts of `Pipeline`.

`ApprovalStage`: the coordinator decides; a human is asked (outside the workspace lock) or
the change is held in the state folder for an operator until `approval.timeout`.
`BehaviourStage`: the proposal's `verify` calls, the replay of read-only calls, the benchmark.
Both use the pipeline's own steps (`_validate`, `_apply`, `_finish`, `_save`, `_audit`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from metasup_mcp.aio import blocking as _io
from metasup_mcp.children.process import child_environment
from metasup_mcp.evolution.approval import Answer, ApprovalQuestion, changed_since, fingerprints
from metasup_mcp.evolution.behaviour import VerifyCall
from metasup_mcp.evolution.coordinator import Assessment
from metasup_mcp.evolution.proposals import Proposal
from metasup_mcp.evolution.requests import ChangeError, ChangeRequest, Progress
from metasup_mcp.safety.rules import FileChange

if TYPE_CHECKING:
    from metasup_mcp.evolution.pipeline import Pipeline

    _Base = Pipeline
else:
    _Base = object

logger = logging.getLogger(__name__)


async def _quiet(message: str) -> None:
    logger.info("pipeline: %s", message)


class ApprovalStage(_Base):
    async def _approve(self, proposal: Proposal, changes: list[FileChange], request: ChangeRequest, say: Progress) -> Proposal:
        """Ask the coordinator; a human is asked outside the lock, so others' changes go on meanwhile."""
        proposal.mark("approving")
        assessment = await _io(self.coordinator.assess, self.workspace.root, changes)
        decision = assessment.decision
        proposal.strategy = assessment.strategy.name
        proposal.lines_added, proposal.lines_removed = assessment.diff.added, assessment.diff.removed
        if decision.verdict in ("deny", "refuse"):
            await self._decided(proposal, "refused", decision.decided_by, decision.reason)
            proposal.reasons.append(decision.reason)
            return await self._finish(proposal, "rejected")
        if decision.verdict == "approve":
            await self._decided(proposal, "approved", decision.decided_by, decision.reason)
            return await self._apply(proposal, changes, say)
        answer = await self._ask_human(proposal, assessment, request)
        if answer == "accept":
            await self._decided(proposal, "approved", "human (MCP elicitation)", decision.reason)
            return await self._apply(proposal, changes, say)
        if answer in ("decline", "cancel", "timeout"):
            why = {"decline": "declined", "cancel": "cancelled", "timeout": "not answered within approval.timeout"}
            await self._decided(proposal, "refused", "human (MCP elicitation)", why[answer])
            proposal.reasons.append(f"approval {why[answer]}: a human must accept this change ({decision.reason})")
            return await self._finish(proposal, "rejected")
        return await self._hold(proposal, changes, request, assessment, answer)

    async def _ask_human(self, proposal: Proposal, assessment: Assessment, request: ChangeRequest) -> Answer:
        if request.ask is None or not self.settings.approval.elicit:
            return "unavailable"
        question = ApprovalQuestion.of(proposal, assessment)
        with anyio.move_on_after(self.settings.approval.timeout):
            try:
                return await request.ask(question)
            except Exception as exc:  # the client went away or cannot elicit after all: an operator decides
                logger.warning("elicitation for %s failed (%s): leaving it pending", proposal.id, exc)
                return "unavailable"
        return "timeout"

    async def _hold(
        self, proposal: Proposal, changes: list[FileChange], request: ChangeRequest, assessment: Assessment, answer: Answer
    ) -> Proposal:
        """Keep the change for a human to decide later; it expires after `approval.timeout`."""
        stored = [{"path": c.path, "content": c.content} if not c.delete else {"path": c.path, "delete": True}
                  for c in changes]
        base = await _io(fingerprints, self.workspace.root, [c.path for c in changes])
        await _io(self.pending.put, proposal.id, stored, proposal.verify, request.proposer, assessment.diff_text, base)
        proposal.expires_at = time.time() + self.settings.approval.timeout
        how = (
            f"an operator must approve it: approve_change(id={proposal.id!r}, token=<operator token>) from "
            f"another session, `metasup-mcp approve {proposal.id}`, or the dashboard; reject_change refuses it"
        )
        if answer == "deferred":
            how = f"waiting for the proposing client's answer to the approval request (it retries the call), or {how}"
        proposal.reasons.append(
            f"{assessment.decision.reason}; {how}. It expires in {self.settings.approval.timeout:g}s (approval.timeout)"
        )
        proposal.mark("pending_approval", assessment.decision.reason)
        await self._save(proposal)
        await self._audit("pending_approval", id=proposal.id, reason=assessment.decision.reason,
                          decided_by=assessment.decision.decided_by, expires_at=proposal.expires_at)
        return proposal

    async def decide_pending(
        self, proposal: Proposal, approve: bool, decided_by: str, note: str = "", progress: Progress | None = None
    ) -> Proposal:
        """A human's answer to a held proposal (checked by the caller: token, identity, expiry)."""
        if not self._claim(proposal):
            raise ChangeError(f"{proposal.id} is being decided already, or is no longer waiting for approval")
        try:
            return await self._decide_pending(proposal, approve, decided_by, note, progress or _quiet)
        finally:
            self._deciding.discard(proposal.id)

    def _claim(self, proposal: Proposal) -> bool:
        """Take a held proposal for one decision (two operators at once, or one and the expiry)."""
        if proposal.status != "pending_approval" or proposal.id in self._deciding:
            return False
        self._deciding.add(proposal.id)
        return True

    async def _decide_pending(
        self, proposal: Proposal, approve: bool, decided_by: str, note: str, progress: Progress
    ) -> Proposal:
        content = await _io(self.pending.get, proposal.id)
        await _io(self.pending.drop, proposal.id)
        proposal.reasons.clear()  # only the "how to approve it" of the hold: answered now
        if not approve or content is None:
            why = f"rejected by {decided_by}" + (f": {note}" if note else "")
            if content is None:
                why = "its stored content is missing from the state folder; propose it again"
            await self._decided(proposal, "refused", decided_by, why)
            proposal.reasons.append(why)
            return await self._finish(proposal, "rejected")
        moved = await _io(changed_since, self.workspace.root, content.get("base") or {})
        if moved:  # the approved diff is no longer what writing the content would do
            why = (f"{', '.join(moved)} changed since the change was held, so the diff that was approved is not "
                   "what it would do now; propose it again against the files as they are")
            await self._decided(proposal, "refused", decided_by, why)
            proposal.reasons.append(why)
            return await self._finish(proposal, "rejected")
        await self._decided(proposal, "approved", decided_by, note or "approved")
        changes = await self._validate(proposal, ChangeRequest(proposal.title, changes=content["changes"]))
        if changes is None:  # the workspace changed meanwhile (a symlink, a rule): validate again
            return await self._finish(proposal, "rejected")
        return await self._apply(proposal, changes, progress)

    async def expire_pending(self) -> list[str]:
        """Refuse held proposals past their `expires_at`; return their ids."""
        now, expired = time.time(), []
        for proposal in self.store.list(status="pending_approval", limit=10_000):
            if proposal.expires_at is None or proposal.expires_at > now or not self._claim(proposal):
                continue
            try:
                await _io(self.pending.drop, proposal.id)
                await self._decided(proposal, "refused", "timeout", "not approved within approval.timeout")
                proposal.reasons[:] = ["expired: nobody approved it within approval.timeout; propose it again"]
                await self._finish(proposal, "rejected")
                expired.append(proposal.id)
            finally:
                self._deciding.discard(proposal.id)
        return expired

    async def _decided(self, proposal: Proposal, decision: str, decided_by: str, reason: str) -> None:
        proposal.approval = {"decision": decision, "decided_by": decided_by, "reason": reason, "at": time.time()}
        await self._audit("decision", id=proposal.id, decision=decision, decided_by=decided_by, reason=reason,
                          mode=self.settings.approval.mode, strategy=proposal.strategy)


class BehaviourStage(_Base):
    async def _verify_behaviour(self, proposal: Proposal, say: Progress) -> tuple[str, str] | None:
        """The agent's `verify` calls and the replay of read-only calls, then the benchmark."""
        if self.behaviour is not None:
            await say("checking behaviour (verify calls, replay)")
            verify = [VerifyCall.model_validate(v) for v in proposal.verify]
            proposal.behaviour, failure = await self.behaviour.run(verify, proposal.restarted)
            if failure is not None:
                return failure
        if self.settings.benchmark is None:
            return None
        await say("running the benchmark")
        assert proposal.commit is not None
        baseline = await _io(self.workspace.last_good) or ""
        env = child_environment({}, instance_id=self._instance_id)
        outcome = await self.coordinator.judge(proposal.commit, baseline, self.workspace.root, env)
        proposal.metric, proposal.gain = outcome.metric, outcome.gain
        return ("regression", outcome.regression) if outcome.regression else None

    async def _measure_baseline(self, say: Progress) -> None:
        last_good = await _io(self.workspace.last_good)
        if last_good is None or self.coordinator.metrics.get(last_good) is not None:
            return
        if await _io(self.workspace.head) != last_good:
            return  # the tree is not last good's: no honest baseline now
        await say("measuring last good with the benchmark (the baseline)")
        env = child_environment({}, instance_id=self._instance_id)
        await self.coordinator.measure_commit(last_good, self.workspace.root, env)
