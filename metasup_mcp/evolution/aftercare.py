"""After a verdict: a newly accepted commit on probation until `stable_after`, and, after any
rollback, bringing last good back to health (falling back along the verified history, or an
emergency stop when nothing serves again).

Works on the pipeline's workspace under its lock; the pipeline calls `begin_probation` when it
accepts a change and `bring_back` when it rolls one back; `run_probation` runs for the life of
the supervisor.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from metasup_mcp.aio import blocking as _io
from metasup_mcp.children.child import ManagedChild
from metasup_mcp.evolution.proposals import Proposal
from metasup_mcp.safety.refs import REF_REJECTED
from metasup_mcp.safety.workspace import WorkspaceError

if TYPE_CHECKING:
    from metasup_mcp.evolution.pipeline import Pipeline

logger = logging.getLogger(__name__)

# Verified commits tried, newest first, when last good itself cannot serve again.
FALLBACK_ATTEMPTS = 3


class MoveCode(Protocol):
    async def __call__(self, to: str, *, source: str, trigger: str, reason: str, change_id: str | None) -> None: ...


async def _no_move(to: str, *, source: str, trigger: str, reason: str, change_id: str | None) -> None:
    raise WorkspaceError("no way to move the code is wired in")


@dataclass
class Probation:
    """A newly accepted commit, watched through the incarnations that verified it."""

    proposal_id: str
    commit: str
    previous: str  # the verified commit it replaced: where a failure rolls back to
    generations: dict[str, int]  # server -> the incarnation that verified the commit
    until: float  # clock time the probation ends (stable_after after acceptance)
    healthy_before: set[str]


class Aftercare:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.probation: Probation | None = None  # the newest accepted commit, until stable_after
        # Puts the code back to a verified commit as a rollback does and makes it last good; the
        # caller holds the lock. Set by the ChangeService, which owns how code is put back.
        self.move_code: MoveCode = _no_move

    def current(self) -> Probation | None:
        """The commit on probation now, if any (a window that has passed has ended)."""
        if self.probation is not None and anyio.current_time() >= self.probation.until:
            self.probation = None
        return self.probation

    def begin_probation(self, proposal: Proposal, previous: str) -> None:
        """Watch the incarnations that verified `proposal` until `stable_after`: a failure of one
        of them in that window (say, healthy for min_runtime, dead 2 s later) rolls it back."""
        restarted = {c.name: c.generation for c in self.p._children() if c.name in proposal.restarted}
        self.watch(proposal.id, proposal.commit, previous, restarted)

    def watch(self, change_id: str, commit: str | None, previous: str, generations: dict[str, int]) -> None:
        """Put `commit`, just made last good in place of `previous`, on probation with the
        incarnations that verified it (server -> generation): proposals and on-disk candidates
        alike, since there is one road to last good."""
        children = [c for c in self.p._children() if c.name in generations]
        if not children or commit is None:
            self.probation = None
            return
        window = max(c.machine.policy.stable_after for c in children)
        self.probation = Probation(
            change_id, commit, previous, dict(generations),
            until=anyio.current_time() + window, healthy_before=set(generations),
        )

    async def run_probation(self) -> None:
        """Judge the commit on probation from child events, for the life of the supervisor."""
        with self.p._events.subscribe() as events:
            async for event in events:
                trial = self.probation
                if trial is None or trial.generations.get(event.server) != event.generation:
                    continue
                if anyio.current_time() >= trial.until:
                    self.probation = None
                    continue
                if event.kind == "exited" and event.data.get("requested"):
                    del trial.generations[event.server]  # stopped on purpose: it can no longer judge
                    continue
                if event.kind == "health" or (event.kind == "exited" and not event.data.get("requested")):
                    detail = event.data.get("detail") or event.data.get("reason")
                    try:
                        await self._fail_probation(trial, f"{event.server}: {detail}")
                    except Exception:  # git failing here must not end the watch: the next start recovers
                        logger.exception("could not roll back %s after its probation failed", trial.commit[:12])

    async def _fail_probation(self, trial: Probation, evidence: str) -> None:
        async with self.p.lock:
            self.p.in_transaction = True  # the guard must not wait for this lock before a start
            try:
                await self._roll_back_probation(trial, evidence)
            finally:
                self.p.in_transaction = False

    async def _roll_back_probation(self, trial: Probation, evidence: str) -> None:
        ws = self.p.workspace
        if self.probation is not trial:
            return
        self.probation = None
        if await _io(ws.last_good) != trial.commit:
            return  # last good moved on meanwhile: nothing of this commit to undo
        await self.move_code(trial.previous, source="probation", trigger="probation", reason=evidence,
                             change_id=trial.proposal_id)
        # Known bad now: under a rejected ref, so no recovery falls back to it (see bring_back).
        await _io(ws.keep_rejected, trial.proposal_id, trial.commit)
        logger.warning("%s failed its probation (%s): rolled back to %s", trial.commit[:12], evidence, trial.previous[:12])
        proposal = self.p.store.get(trial.proposal_id)
        if proposal is not None:
            proposal.trigger = "probation"
            proposal.reasons.append(f"probation: {evidence}; rolled back to {trial.previous[:12]}")
            proposal.mark("rolled_back", "failed within stable_after of being accepted")
            await self.p._save(proposal)
        children = [c for c in self.p._children() if c.name in trial.healthy_before]
        await self.bring_back(children, trial.healthy_before, trial.proposal_id, failed={trial.commit})

    async def bring_back(
        self, children: Sequence[ManagedChild], healthy_before: set[str], change_id: str | None,
        failed: set[str] | None = None,
    ) -> None:
        """Restart `children` on last good (the lock is held). Those that were serving before must
        hold for `min_runtime`; if one cannot, last good itself is broken (a file outside git
        changed, say): fall back along the verified history, newest first. If none serves
        again, or git fails, it is an emergency stop."""
        if self.p.halted:
            return  # an emergency stop has stopped every server: none is started again here
        judged = [c for c in children if c.name in healthy_before]
        if not judged:
            await restart_and_settle(children)
            return
        for other in children:
            if other.name not in healthy_before:
                other.request_restart()
        ws, tried = self.p.workspace, set(failed or ())
        try:
            last_good = await _io(ws.last_good) or await _io(ws.head)
            # The history of last-good moves, newest first, then any other verified commit.
            verified = [*reversed(self.p.history.commits()), *await _io(ws.verified_commits)]
            tried |= {r.sha for r in await _io(ws.list_refs, REF_REJECTED)}  # verified once, failed since
            older = [sha for sha in dict.fromkeys(verified) if sha != last_good and sha not in tried]
            failure: tuple[str, str] | None = None
            for attempt, commit in enumerate([last_good, *older][:FALLBACK_ATTEMPTS]):
                if attempt:
                    why = f"last good {last_good[:12]} could not serve again: {failure[1] if failure else ''}"
                    await self.move_code(commit, source="recovery", trigger="last_good_unhealthy", reason=why,
                                         change_id=None)
                failure = await self.p.watch_restart(judged)
                if failure is None or self.p.halted:
                    return
                logger.error("%s cannot be brought back to health: %s", commit[:12], failure[1])
        except WorkspaceError as exc:
            self.p._unrecoverable(f"git failed while bringing last good back ({exc})", change_id)
            return
        assert failure is not None
        self.p._unrecoverable(
            f"last good cannot be brought back to health ({failure[0]}: {failure[1].splitlines()[0]}), "
            "nor any earlier verified commit tried", change_id,
        )


def runs_python(child: ManagedChild) -> bool:
    """Whether a server runs Python (an interpreter, or a `.py` script) and may import workspace code."""
    words = [child.config.command, child.config.executable, *child.config.args]
    return any(re.fullmatch(r"python[0-9.]*", os.path.basename(w)) for w in words[:2]) or any(
        w.endswith(".py") for w in words
    )


async def restart_and_settle(children: Sequence[ManagedChild], timeout: float = 30.0) -> None:
    """Restart `children` now and wait until each new incarnation is past its handshake (or failed)."""
    before = {child.name: child.generation for child in children}
    for child in children:
        child.request_restart()
    for child in children:
        await child.wait_for(lambda c: c.settled_since(before[c.name]), timeout)
