"""The seed's loop, for edits made on disk (by the children themselves, or anyone).

Before a child starts while the workspace differs from last good in code it watches (the
changed files under its `watch` globs, never data, ignored or operator-owned files), the
edits are saved (`refs/metasup/saved/`) and screened exactly as a proposal is: the rules,
the approval mode and the configured checks. Refused: the paths are put back as last good
has them and the child starts on last good. Passed: exactly those paths are committed as a
*candidate* on the current branch; if the child then dies or turns unhealthy within
`min_runtime`, the candidate is kept under a rejected ref, the paths put back as last good
has them and the commit taken off the branch; if it survives, the candidate becomes last good.
Only servers that run the code on trial judge it: one that starts meanwhile but watches none
of its paths (an untracked file counts only under an explicit `watch`) is no evidence. Every
other running server whose code the candidate changes (a user's commit spanning several
servers, overlapping watches) is restarted onto it and must hold `min_runtime` too.

Declared `protected_paths` edited on disk are put back from last good (saved first) before
each start and on a short poll. Operator-owned files (the config, the state folder, the
package) are never touched: status shows a config that differs from what runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from metasup_mcp.aio import blocking as _io
from metasup_mcp.children.child import ChildEvent, ManagedChild
from metasup_mcp.children.events import EventHub
from metasup_mcp.evolution.content_check import ContentCheck
from metasup_mcp.evolution.proposals import new_proposal_id
from metasup_mcp.evolution.watched import code_by_server, differing_from, new_code_filter, watches_code
from metasup_mcp.safety.audit import AuditLog
from metasup_mcp.safety.history import LastGoodHistory, move_last_good
from metasup_mcp.safety.rules import ChangePolicy, is_protected
from metasup_mcp.safety.workspace import Workspace, WorkspaceError

logger = logging.getLogger(__name__)

Recorder = Callable[..., None]
Screen = Callable[[Sequence[str]], Awaitable[tuple[str, str] | None]]
# A candidate made last good (id, commit, the last good it replaced, server -> incarnation that
# verified it): it goes on probation exactly as an accepted proposal does.
OnAccepted = Callable[[str, str, str, dict[str, int]], None]


@dataclass
class Trial:
    id: str
    candidate: str
    last_good: str
    paths: list[str]
    made_commit: bool  # False: the candidate is a commit someone else made (HEAD as it was)
    saved_ref: str | None
    generations: dict[str, int] = field(default_factory=dict)  # server → incarnation on trial
    untracked: frozenset[str] = frozenset()  # of `paths`, those git did not track when it began
    verified: dict[str, int] = field(default_factory=dict)  # server → incarnation that held min_runtime
    stopped: set[str] = field(default_factory=set)  # stopped on purpose before judging: must start again
    # Other running servers whose code the candidate changes, asked to restart onto it: each must
    # start on it (and hold min_runtime) before it is judged.
    awaited: set[str] = field(default_factory=set)

    def concerns(self, child: ManagedChild) -> bool:
        """Does `child` run code on trial (by watched.py's rule: an untracked file only under an
        explicit `watch`)? Only such a child's death is evidence against the edits."""
        return any(watches_code(child.config, p, p in self.untracked) for p in self.paths)


class DiskGuard:
    def __init__(
        self,
        workspace: Workspace,
        policy: ChangePolicy,
        lock: anyio.Lock,
        in_transaction: Callable[[], bool],
        events: EventHub,
        audit: AuditLog,
        history: LastGoodHistory,
        screen: Screen,
        record: Recorder,
        poll_interval: float = 2.0,
        paused: Callable[[], str | None] = lambda: None,
        on_accepted: OnAccepted = lambda change_id, commit, previous, generations: None,
        children: Callable[[], Sequence[ManagedChild]] = lambda: (),
    ) -> None:
        self.workspace = workspace
        self.policy = policy
        self.lock = lock  # the pipeline's: one owner of the workspace at a time
        self._in_transaction = in_transaction
        self._events = events
        self.audit = audit
        self.history = history
        self._screen = screen
        self._record = record
        self.poll_interval = poll_interval
        # Why changes are refused now (the evolution breaker open, an emergency stop), or None:
        # while it says so, no candidate goes on trial or becomes last good.
        self._paused = paused
        self._on_accepted = on_accepted
        self._children = children
        self.trial: Trial | None = None
        self._content = ContentCheck(workspace)  # edits git's stat cache cannot see (same second, same size)

    def _code_for(
        self, child: ManagedChild, tracked: Sequence[str], untracked: Sequence[str], last_good: str | None
    ) -> list[str]:
        """Changed files that are this server's code (watched.py's rule, judging untracked files
        by last good's ignore rules; None: as listed), less protected paths (put back, never
        screened)."""
        ws = self.workspace
        code = code_by_server(ws, [child], tracked, untracked, last_good)[child.name]
        return [p for p in code if not is_protected(p, self.policy, ws.root)]

    def _explicitly_watched(self, child: ManagedChild) -> Callable[[str], bool] | None:
        """Whether a path is named by the explicit `watch` of `child` or another server (whose
        code may join the candidate); None when no server has one."""
        return new_code_filter([child, *self._children()])

    def _nothing_to_screen(self, child: ManagedChild) -> bool:
        """One `git status` (`Workspace.glance`) instead of the full look, when it proves there is
        nothing to do: HEAD is last good (read from the ref file) and no path that may differ
        from it is code `child` watches or a protected path to put back. Anything else, or a
        doubt, is False: `before_start` then takes the full look. Sound because the glance is a
        superset of `changes_since`, and `_hidden_edits` finds what git's stat cache cannot."""
        ws = self.workspace
        _, last_good = ws.peek()
        seen = ws.glance(ignored=bool(child.config.watch))  # what git's rules hide: new code only under a watch
        if last_good is None or seen.head != last_good:
            return False
        if any(self._is_protected(p) for p in seen.changed):
            return False
        if self._code_for(child, seen.changed, seen.untracked, None):
            return False
        if child.config.watch:  # a watched file that a rule on disk hides, judged by last good's rules
            visible = set(seen.untracked)
            new = ws.new_files(last_good, lambda p: p not in visible and child.config.watches(p), seen)
            if self._code_for(child, [], new, None):
                return False
        return not self._hidden_edits(child, last_good)

    def _hidden_edits(self, child: ManagedChild, last_good: str) -> list[str]:
        """Tracked files `child` watches, or protected ones, whose content differs from last good
        where git's stat cache may say it does not (see content_check.py)."""
        never_code = self.workspace.ownership.never_code
        return self._content.differing(
            last_good, lambda p: self._is_protected(p) or (child.config.watches(p) and not never_code(p))
        )

    async def before_start(self, child: ManagedChild) -> None:
        """Screen the on-disk state and put it on trial with this incarnation, if it differs
        from last good in code this server watches."""
        if self._in_transaction():
            return  # a proposal or a rollback owns the workspace and verifies it itself
        async with self.lock:
            if self.trial is None and await _io(self._nothing_to_screen, child):
                return  # the restart path's usual case: one git call, not five
            ws = self.workspace
            last_good = await _io(ws.last_good) or await _io(ws.head)
            wanted = lambda p: self._is_protected(p) or child.config.watches(p)  # noqa: E731
            # New files count only under an explicit `watch`, judged by last good's committed
            # `.gitignore` files alone: no rule a child can write on disk hides one.
            new = self._explicitly_watched(child)
            tracked, untracked = await _io(differing_from, ws, self._content, last_good, wanted, new)
            await self._revert_protected(last_good, tracked)
            if self.trial is not None and not await self._intact(self.trial, last_good):
                self.trial = None  # last good moved under it, or its candidate left the tree: start afresh
            paths = await _io(self._code_for, child, tracked, untracked, last_good)
            busy: str | None = None
            if self.trial is not None:
                if self.trial.concerns(child):  # it runs the candidate: it judges too
                    self.trial.generations[child.name] = child.generation
                    self.trial.stopped.discard(child.name)
                    self.trial.awaited.discard(child.name)
                paths = [p for p in paths if p not in self.trial.paths]
                # One candidate at a time: this server's own edits wait, saved, until that one is judged.
                busy = (f"candidate {self.trial.id} is on trial: one at a time; these edits are saved (saved_ref) "
                        "and put back as last good has them: restore or propose them once it is judged")
            if not paths:
                return
            joining: list[ManagedChild] = []
            if busy is None:
                joining, paths = await self._also_on_trial(child, paths, tracked, untracked, last_good)
            trial_id = new_proposal_id(prefix="c")
            saved = await _io(ws.save, paths, f"on-disk edits before candidate {trial_id}")
            paused = self._paused()
            refusal = ("paused", paused) if paused else ("busy", busy) if busy else await self._screen(paths)
            if refusal is not None:
                await self._refuse(trial_id, paths, last_good, saved.ref, child.name, *refusal)
                return
            head = await _io(ws.head)
            try:
                candidate = await _io(ws.commit_paths, paths, "metasup: on-disk edits (candidate)", {"Metasup-Candidate": trial_id})
                made = True
            except WorkspaceError as exc:
                if not str(exc).startswith("nothing to commit"):
                    raise
                candidate, made = head, False  # the edits are already committed (by the user)
            self.trial = Trial(trial_id, candidate, last_good, paths, made, saved.ref, {child.name: child.generation},
                               frozenset(paths) & frozenset(untracked), awaited={c.name for c in joining})
            await _io(self.audit.append, "candidate", id=trial_id, commit=candidate, last_good=last_good,
                      server=child.name, paths=paths, saved_ref=saved.ref, servers=[child.name, *sorted(self.trial.awaited)])
            for other in joining:  # they run code the candidate changes: onto it, and judged with it
                other.request_restart()
            logger.info("on-disk edits committed as candidate %s (%s), on trial with %s", trial_id, candidate[:12], child.name)

    async def _also_on_trial(
        self, child: ManagedChild, paths: list[str], tracked: list[str], untracked: list[str], last_good: str
    ) -> tuple[list[ManagedChild], list[str]]:
        """The other running servers whose code the candidate changes, and the paths with theirs.

        The candidate is HEAD plus `paths`: a user's own commit past last good may hold code
        another server watches, and watches may overlap. Each such server runs the candidate
        before it is judged (else last good could hold code it never ran), and all the code it
        watches that differs from last good is in the candidate, so it runs exactly the commit."""
        ws = self.workspace
        others = [c for c in self._children() if c is not child and c.wanted]
        if not others:
            return [], paths
        committed: set[str] = set()
        if await _io(ws.head) != last_good:
            committed = set(await _io(ws.changed_paths, last_good, untracked=False, worktree=False))
        theirs = {c.name: set(await _io(self._code_for, c, tracked, untracked, last_good)) for c in others}
        in_candidate, joining = committed | set(paths), []
        while grown := [c for c in others if c not in joining and theirs[c.name] & in_candidate]:
            joining += grown
            in_candidate |= set().union(*(theirs[c.name] for c in grown))
        return joining, sorted(set(paths).union(*(theirs[c.name] for c in joining)))

    async def _refuse(self, trial_id: str, paths: list[str], last_good: str, saved_ref: str | None,
                      server: str, trigger: str, evidence: str) -> None:
        await _io(self.workspace.put_back, last_good, paths)
        await _io(self.audit.append, "candidate_refused", id=trial_id, trigger=trigger, paths=paths,
                  to=last_good, saved_ref=saved_ref, server=server, evidence=evidence[-2000:])
        self._record("rollback", id=trial_id, source="on-disk", trigger=trigger, reason=evidence.splitlines()[0][:300] if evidence else "",
                     saved_ref=saved_ref, to=last_good)
        logger.warning("on-disk edits to %s refused (%s); saved under %s, %s starts on last good",
                       ", ".join(paths), trigger, saved_ref, server)

    async def run(self) -> None:
        """Judge trials from child events, and put back protected edits on a poll."""
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
            trial.verified[event.server] = trial.generations.pop(event.server)
            if not trial.generations and not trial.stopped and not trial.awaited:
                await self._accept(trial)
        elif event.kind == "exited" and event.data.get("requested"):
            # Stopped on purpose (an operator): it judges nothing, and the trial stays open (its
            # candidate unjudged, never last good) until that server starts again or a change
            # withdraws it (see `withdraw`).
            del trial.generations[event.server]
            trial.stopped.add(event.server)
        elif event.kind == "exited" and str(event.data.get("reason", "")).startswith("spawn failed"):
            return  # the program never ran (not on PATH...): no evidence about the code
        elif event.kind == "exited" and event.data.get("early"):
            await self._reject(trial, "early_exit", f"{event.server}: {event.data.get('reason')}")
        elif event.kind == "health":
            await self._reject(trial, f"health:{event.data.get('reason')}", f"{event.server}: {event.data.get('detail')}")

    async def _intact(self, trial: Trial, last_good: str) -> bool:
        """Whether the trial still stands: last good unmoved, its candidate at HEAD and on disk."""
        ws = self.workspace
        if trial.last_good != last_good or await _io(ws.head) != trial.candidate:
            return False
        if await _io(self._content.differing, trial.candidate, set(trial.paths).__contains__):
            return False  # rewritten since, maybe where git's stat cache cannot see it
        return not set(trial.paths) & set(await _io(ws.changed_paths, trial.candidate))

    def _budget(self, trial: Trial) -> float:
        """How long the incarnations on trial may take to be judged (handshake, min_runtime, slack)."""
        live = [c for c in self._children() if c.name in trial.generations or c.name in trial.awaited]
        return max((c.handshake_allowance + c.machine.policy.min_runtime for c in live), default=0.0) + 5.0

    async def wait_judged(self) -> None:
        """Before a change takes the workspace: give the trial in flight, if any, the time its live
        incarnations need to be judged (none live: no wait)."""
        trial = self.trial
        if trial is None:
            return
        with anyio.move_on_after(self._budget(trial)):
            # Nothing live but none stopped: the verdict is being recorded (it needs the lock too).
            while self.trial is trial and (trial.generations or trial.awaited or not trial.stopped):
                await anyio.sleep(0.05)

    async def withdraw(self, why: str) -> None:
        """With the lock held, before a change or rollback: a trial still in flight is undone (its
        edits saved and put back as last good has them), so no change carries its unjudged
        candidate into last good. Its servers restart afterwards on what the change leaves."""
        trial = self.trial
        if trial is None:
            return
        self.trial = None
        if await _io(self.workspace.last_good) != trial.last_good or await _io(self.workspace.head) != trial.candidate:
            return  # already left the tree (a rollback or a restore took it off)
        self.trial = trial
        await self._undo(trial, "interrupted", f"withdrawn unjudged: {why}")
        if self._paused():
            return  # an emergency stop: nothing starts again until `recover`
        for child in self._children():
            if trial.generations.get(child.name) == child.generation or trial.verified.get(child.name) == child.generation:
                child.request_restart()

    async def _still_current(self, trial: Trial) -> bool:
        """False when a change or rollback moved last good, or took the candidate off the tree,
        since the trial began (it is stale)."""
        if self.trial is trial and await self._intact(trial, await _io(self.workspace.last_good) or ""):
            return True
        self.trial = None if self.trial is trial else self.trial
        return False

    async def _accept(self, trial: Trial) -> None:
        async with self.lock:
            if not await self._still_current(trial):
                return
            paused = self._paused()
            if paused:  # the breaker opened (or an emergency) while it was on trial: never last good
                await self._undo(trial, "paused", paused)
                for child in self._children():  # they run the candidate: back onto last good
                    if trial.verified.get(child.name) == child.generation:
                        child.request_restart()
                return
            # Recorded before last good moves: the audit never lags what last good says.
            await _io(self.audit.append, "candidate_accepted", id=trial.id, commit=trial.candidate)
            await _io(move_last_good, self.workspace, self.history, trial.candidate, f"candidate {trial.id}")
            self.trial = None
            self._record("candidate_accepted", id=trial.id, commit=trial.candidate)
            self._on_accepted(trial.id, trial.candidate, trial.last_good, trial.verified)

    async def _reject(self, trial: Trial, trigger: str, evidence: str) -> None:
        async with self.lock:
            if not await self._still_current(trial):
                return
            await self._undo(trial, trigger, evidence)

    async def _undo(self, trial: Trial, trigger: str, evidence: str) -> None:
        """With the lock held: the candidate under a rejected ref, its paths back as last good has
        them (what was written there meanwhile saved first), its commit off the branch."""
        ws = self.workspace
        ref = await _io(ws.keep_rejected, trial.id, trial.candidate)
        during = await _io(ws.save, trial.paths, f"before rolling back candidate {trial.id}")
        await _io(ws.put_back, trial.last_good, trial.paths)
        if trial.made_commit:
            await _io(ws.move_head, trial.candidate, await _io(ws.resolve, f"{trial.candidate}^"))
        await _io(
            self.audit.append,
            "rollback", id=trial.id, source="on-disk", trigger=trigger, bad_commit=trial.candidate,
            to=trial.last_good, rejected_ref=ref, saved_ref=trial.saved_ref, during_ref=during.ref, evidence=evidence,
        )
        self._record(
            "rollback", id=trial.id, source="on-disk", trigger=trigger, reason=evidence, saved_ref=trial.saved_ref,
            **{"from": trial.candidate, "to": trial.last_good},
        )
        self.trial = None
        logger.warning("on-disk candidate undone (%s: %s): put back as last good %s; the edits are saved under %s",
                       trigger, evidence, trial.last_good[:12], trial.saved_ref)

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

    def _is_protected(self, path: str) -> bool:
        ws = self.workspace
        return not ws.ownership.never_code(path) and is_protected(path, self.policy, ws.root)

    def _protected_untouched(self) -> bool:
        """True when a glance and the content check prove no protected path differs from last
        good (HEAD at last good); False when one may, or it cannot tell so cheaply."""
        ws = self.workspace
        _, last_good = ws.peek()
        seen = ws.glance()
        if last_good is None or seen.head != last_good or any(self._is_protected(p) for p in seen.changed):
            return False
        return not self._content.differing(last_good, self._is_protected)

    async def _revert_protected(self, last_good: str | None = None, changed: list[str] | None = None) -> None:
        """Declared protected paths git tracks, edited on disk: saved, then put back from last good.
        Operator-owned files are never touched, and untracked files are data."""
        ws = self.workspace
        if changed is None and last_good is None and await _io(self._protected_untouched):
            return  # the poll's usual case: one git call
        last_good = last_good or await _io(ws.last_good)
        if last_good is None:
            return
        if changed is None:
            changed = await _io(ws.changed_paths, last_good, untracked=False)
            changed = sorted({*changed, *await _io(self._content.differing, last_good, self._is_protected)})
        touched = [p for p in changed if not ws.ownership.never_code(p) and is_protected(p, self.policy, ws.root)]
        if not touched:
            return
        saved = await _io(ws.save, touched, "protected paths edited on disk")
        await _io(ws.put_back, last_good, touched)
        await _io(self.audit.append, "revert", paths=touched, restored_from=last_good, saved_ref=saved.ref)
        self._record("protected_revert", paths=touched, saved_ref=saved.ref)
        logger.warning("put back protected paths from last good (edits saved under %s): %s", saved.ref, ", ".join(touched))
