"""The per-child state machine and restart policy.

Pure: no processes, no I/O, no asyncio. Time comes from an injected clock (monotonic
seconds) and jitter from an injected `random.Random`, so every decision is reproducible
in tests. `ManagedChild` drives it with events and acts on what it answers.

    stopped/exited/fatal/backoff --begin_start--> starting --handshake_ok--> running
    starting/running --process_exited--> backoff | exited | fatal
                                          (backoff of 0 s after a run past stable_after)
    starting/running --health_restart--> stopping --process_exited--> backoff | fatal
    starting/running --begin_stop--> stopping --process_exited/stopped--> stopped
    backoff --begin_stop--> stopped            (no process to wait for)

Any exit the supervisor did not ask for counts as a failure, whatever the return code:
an MCP server over stdio is meant to live until its stdin closes.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ChildState",
    "ChildStateMachine",
    "ExitDecision",
    "ExitInfo",
    "InvalidTransition",
    "RestartPolicy",
]


class ChildState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


class InvalidTransition(RuntimeError):
    """An event arrived in a state that does not accept it: a bug in the caller."""

    def __init__(self, name: str, state: ChildState, event: str, allowed: frozenset[ChildState]):
        self.state = state
        self.event = event
        expected = ", ".join(sorted(allowed))
        super().__init__(
            f"child {name!r}: cannot {event} while {state} (allowed from: {expected})"
        )


@dataclass(frozen=True)
class RestartPolicy:
    restart_on_failure: bool = True
    min_runtime: float = 10.0  # a death sooner than this after a start is a failed start
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_jitter: float = 0.2  # fraction, applied as ±
    max_restarts: int = 5  # more than this many within restart_window -> fatal
    restart_window: float = 60.0
    stable_after: float = 120.0  # running this long forgives past failures

    def __post_init__(self) -> None:
        if not 0.0 <= self.backoff_jitter < 1.0:
            raise ValueError(f"backoff_jitter must be in [0, 1), got {self.backoff_jitter}")
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")


@dataclass(frozen=True)
class ExitInfo:
    returncode: int | None  # None: never spawned, or the code is unknown
    reason: str
    at: float  # clock time of the exit
    uptime: float  # seconds since begin_start
    early: bool  # a failed start: died before the handshake or within min_runtime


@dataclass(frozen=True)
class ExitDecision:
    state: ChildState
    restart_in: float | None  # seconds until the manager should call begin_start
    early: bool


_S = ChildState
_CAN_START = frozenset({_S.STOPPED, _S.EXITED, _S.FATAL, _S.BACKOFF})
_LIVE = frozenset({_S.STARTING, _S.RUNNING})
_CAN_EXIT = frozenset({_S.STARTING, _S.RUNNING, _S.STOPPING})
_CAN_STOP = frozenset({_S.STARTING, _S.RUNNING, _S.BACKOFF, _S.STOPPING})


class ChildStateMachine:
    def __init__(
        self,
        policy: RestartPolicy,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        *,
        name: str = "child",
    ) -> None:
        self.policy = policy
        self.name = name
        self._clock = clock
        self._rng = rng or random.Random()
        self._state = ChildState.STOPPED  # read-only outside: it moves only by events
        self.restarts = 0  # starts that followed a failure; never reset
        self.started_at: float | None = None
        self.running_since: float | None = None
        self.next_start_at: float | None = None
        self.last_exit: ExitInfo | None = None
        self._failed_starts = 0
        self._consecutive = 0  # restarts since the last stable run: the backoff exponent
        self._window: deque[float] = deque()  # exit times that scheduled a restart
        self._health_reason: str | None = None  # set while a health kill is in flight

    @property
    def state(self) -> ChildState:
        return self._state

    # -- counters, settled lazily so status reads are as fresh as transitions --------

    @property
    def failed_starts_in_a_row(self) -> int:
        self._settle(self._clock())
        return self._failed_starts

    @property
    def consecutive_restarts(self) -> int:
        self._settle(self._clock())
        return self._consecutive

    @property
    def pending_health_reason(self) -> str | None:
        """The health reason of a kill in flight, if the exit should lead to a restart."""
        return self._health_reason

    def uptime(self) -> float | None:
        if self.started_at is None or self._state not in _CAN_EXIT:
            return None
        return self._clock() - self.started_at

    def _settle(self, now: float) -> None:
        if self._state is not ChildState.RUNNING or self.running_since is None:
            return
        assert self.started_at is not None
        if now - self.started_at >= self.policy.min_runtime:
            self._failed_starts = 0  # this start has succeeded
        if now - self.running_since >= self.policy.stable_after:
            self._consecutive = 0
            self._window.clear()

    def _check(self, event: str, allowed: frozenset[ChildState]) -> None:
        if self._state not in allowed:
            raise InvalidTransition(self.name, self._state, event, allowed)
        self._settle(self._clock())  # a stable run must be credited before it ends

    # -- transitions -------------------------------------------------------------------

    def begin_start(self) -> None:
        self._check("begin_start", _CAN_START)
        if self._state is ChildState.BACKOFF:
            self.restarts += 1
        elif self._state is ChildState.FATAL:
            # An operator's start after fatal is a deliberate second chance.
            self._window.clear()
            self._consecutive = 0
            self._failed_starts = 0
        self._state = ChildState.STARTING
        self.started_at = self._clock()
        self.running_since = None
        self.next_start_at = None

    def handshake_ok(self) -> None:
        self._check("handshake_ok", frozenset({ChildState.STARTING}))
        self._state = ChildState.RUNNING
        self.running_since = self._clock()

    def health_restart(self, reason: str) -> None:
        """The supervisor is killing a live child for health; its exit will restart it.

        The restart happens even with restart_on_failure off (it is the supervisor's own
        decision, not an unexpected death) but still counts in the window, so a child
        that keeps breaching ends fatal. Whether the exit is early follows the usual rule.
        """
        self._check("health_restart", _LIVE)
        self._health_reason = reason
        self._state = ChildState.STOPPING

    def begin_stop(self) -> ChildState:
        """Ask for a stop. Returns STOPPING (wait for the exit) or STOPPED (nothing ran).

        Repeating it while stopping is harmless and cancels a pending health restart.
        """
        self._check("begin_stop", _CAN_STOP)
        self._health_reason = None
        if self._state is ChildState.BACKOFF:
            self._state = ChildState.STOPPED
            self.next_start_at = None
        else:
            self._state = ChildState.STOPPING
        return self._state

    def stopped(self) -> None:
        """The stop finished without an exit to report (e.g. the spawn never happened)."""
        self._check("stopped", frozenset({ChildState.STOPPING}))
        self._health_reason = None
        self._state = ChildState.STOPPED

    def process_exited(self, returncode: int | None, reason: str) -> ExitDecision:
        self._check("process_exited", _CAN_EXIT)
        now = self._clock()
        assert self.started_at is not None
        uptime = now - self.started_at
        health_reason, self._health_reason = self._health_reason, None
        requested = self._state is ChildState.STOPPING and health_reason is None
        early = not requested and (
            self.running_since is None or uptime < self.policy.min_runtime
        )
        self.last_exit = ExitInfo(returncode, health_reason or reason, now, uptime, early)
        stable = self.running_since is not None and now - self.running_since >= self.policy.stable_after
        self.running_since = None
        if requested:
            return self._decide(ChildState.STOPPED, None, early)

        self._failed_starts = self._failed_starts + 1 if early else 0
        if health_reason is None and not self.policy.restart_on_failure:
            return self._decide(ChildState.EXITED, None, early)
        self._window.append(now)
        while self._window and self._window[0] <= now - self.policy.restart_window:
            self._window.popleft()
        if len(self._window) > self.policy.max_restarts:
            return self._decide(ChildState.FATAL, None, early)
        if stable and self._consecutive == 0:
            # The first failure after a stable run restarts at once (supervisord/OTP do the
            # same): a crash after hours of service is an incident, not a loop to slow down.
            # Later failures back off from backoff_initial as usual.
            self.next_start_at = now
            return self._decide(ChildState.BACKOFF, 0.0, early)
        self._consecutive += 1
        delay = self._backoff(self._consecutive)
        self.next_start_at = now + delay
        return self._decide(ChildState.BACKOFF, delay, early)

    def _decide(self, state: ChildState, restart_in: float | None, early: bool) -> ExitDecision:
        self._state = state
        return ExitDecision(state, restart_in, early)

    def _backoff(self, n: int) -> float:
        p = self.policy
        # The exponent is capped only to keep the float finite; backoff_max rules anyway.
        base = min(p.backoff_initial * 2.0 ** min(n - 1, 64), p.backoff_max)
        return base * (1 + self._rng.uniform(-p.backoff_jitter, p.backoff_jitter))
