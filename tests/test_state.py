"""ChildStateMachine: every transition, the backoff sequence, the window, the resets."""

from __future__ import annotations

import random
from typing import Any

import pytest

from metasup_mcp.children.state import (
    ChildState,
    ChildStateMachine,
    ExitDecision,
    InvalidTransition,
    RestartPolicy,
)

S = ChildState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def machine(clock: FakeClock, **policy: Any) -> ChildStateMachine:
    return ChildStateMachine(RestartPolicy(**policy), clock, random.Random(7))


def run_for(sm: ChildStateMachine, clock: FakeClock, seconds: float) -> None:
    sm.begin_start()
    sm.handshake_ok()
    clock.advance(seconds)


def crash_after(sm: ChildStateMachine, clock: FakeClock, seconds: float) -> ExitDecision:
    run_for(sm, clock, seconds)
    return sm.process_exited(1, "crashed")


def test_a_new_child_is_stopped_with_no_history(clock: FakeClock) -> None:
    sm = machine(clock)
    assert sm.state is S.STOPPED
    assert (sm.restarts, sm.failed_starts_in_a_row, sm.last_exit) == (0, 0, None)
    assert sm.started_at is None and sm.uptime() is None


def test_a_start_waits_in_starting_for_the_handshake(clock: FakeClock) -> None:
    sm = machine(clock)
    sm.begin_start()
    assert sm.state is S.STARTING and sm.started_at == 1000.0 and sm.running_since is None


def test_the_handshake_makes_it_running_and_uptime_counts_from_the_start(
    clock: FakeClock,
) -> None:
    sm = machine(clock)
    sm.begin_start()
    clock.advance(2)
    sm.handshake_ok()
    assert sm.state is S.RUNNING and sm.running_since == 1002.0
    clock.advance(3)
    assert sm.uptime() == 5.0


def test_a_requested_stop_ends_stopped_without_a_restart(clock: FakeClock) -> None:
    sm = machine(clock)
    run_for(sm, clock, 30)
    assert sm.begin_stop() is S.STOPPING
    decision = sm.process_exited(0, "stopped by operator")
    assert decision == ExitDecision(S.STOPPED, None, early=False)
    assert sm.state is S.STOPPED and sm.restarts == 0
    assert sm.last_exit is not None and sm.last_exit.reason == "stopped by operator"


def test_a_stop_during_the_handshake_also_waits_for_the_exit(clock: FakeClock) -> None:
    sm = machine(clock)
    sm.begin_start()
    assert sm.begin_stop() is S.STOPPING
    assert sm.process_exited(None, "stopped").state is S.STOPPED


def test_stopped_completes_a_stop_that_has_no_exit_to_report(clock: FakeClock) -> None:
    sm = machine(clock)
    sm.begin_start()
    sm.begin_stop()
    sm.stopped()
    assert sm.state is S.STOPPED


def test_stopping_from_backoff_goes_straight_to_stopped(clock: FakeClock) -> None:
    sm = machine(clock)
    crash_after(sm, clock, 1)
    assert sm.state is S.BACKOFF and sm.next_start_at is not None
    assert sm.begin_stop() is S.STOPPED
    assert sm.next_start_at is None


def test_a_death_within_min_runtime_is_a_failed_start(clock: FakeClock) -> None:
    sm = machine(clock)
    decision = crash_after(sm, clock, 9.5)
    assert decision.early and decision.state is S.BACKOFF
    assert sm.failed_starts_in_a_row == 1
    assert sm.last_exit is not None
    assert (sm.last_exit.returncode, sm.last_exit.uptime, sm.last_exit.early) == (1, 9.5, True)


def test_a_death_before_the_handshake_is_a_failed_start_however_late(clock: FakeClock) -> None:
    sm = machine(clock)
    sm.begin_start()
    clock.advance(50)
    assert sm.process_exited(None, "spawn failed").early


def test_a_death_after_min_runtime_is_a_plain_failure_and_breaks_the_streak(
    clock: FakeClock,
) -> None:
    sm = machine(clock)
    crash_after(sm, clock, 1)
    clock.advance(5)
    decision = crash_after(sm, clock, 10)
    assert not decision.early and decision.state is S.BACKOFF
    assert sm.failed_starts_in_a_row == 0


def test_a_clean_exit_nobody_asked_for_still_counts_as_a_failure(clock: FakeClock) -> None:
    sm = machine(clock)
    run_for(sm, clock, 30)
    assert sm.process_exited(0, "exited").state is S.BACKOFF


def test_restart_on_failure_false_leaves_the_child_exited(clock: FakeClock) -> None:
    sm = machine(clock, restart_on_failure=False)
    decision = crash_after(sm, clock, 1)
    assert decision == ExitDecision(S.EXITED, None, early=True)
    assert sm.failed_starts_in_a_row == 1
    sm.begin_start()  # an exited child can be started by hand
    assert sm.state is S.STARTING


def test_backoff_doubles_from_one_second_and_is_capped(clock: FakeClock) -> None:
    sm = machine(clock, backoff_jitter=0.0, backoff_max=10.0, max_restarts=100)
    delays = []
    for _ in range(6):
        sm.begin_start()
        delays.append(sm.process_exited(1, "crashed").restart_in)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert sm.restarts == 5  # the sixth restart has not happened yet


def test_jitter_keeps_every_delay_within_twenty_percent(clock: FakeClock) -> None:
    sm = machine(clock, max_restarts=1000, restart_window=1.0)
    seen = []
    for n in range(1, 200):
        sm.begin_start()
        clock.advance(2)  # outside the window, so it never turns fatal
        delay = sm.process_exited(1, "crashed").restart_in
        assert delay is not None
        base = min(2.0 ** (n - 1), 60.0)
        assert 0.8 * base <= delay <= 1.2 * base
        seen.append(delay / base)
    assert max(seen) - min(seen) > 0.2  # the jitter is really applied


def test_next_start_at_is_the_exit_time_plus_the_delay(clock: FakeClock) -> None:
    sm = machine(clock)
    decision = crash_after(sm, clock, 1)
    assert decision.restart_in is not None
    assert sm.next_start_at == pytest.approx(clock.now + decision.restart_in)


def test_more_than_max_restarts_inside_the_window_is_fatal(clock: FakeClock) -> None:
    sm = machine(clock, max_restarts=3, restart_window=60.0)
    states = []
    for _ in range(4):
        sm.begin_start()
        clock.advance(5)
        states.append(sm.process_exited(1, "crashed").state)
    assert states == [S.BACKOFF, S.BACKOFF, S.BACKOFF, S.FATAL]
    assert sm.next_start_at is None


def test_the_window_slides_so_old_restarts_stop_counting(clock: FakeClock) -> None:
    sm = machine(clock, max_restarts=2, restart_window=60.0)
    for _ in range(2):
        sm.begin_start()
        clock.advance(35)
        assert sm.process_exited(1, "crashed").state is S.BACKOFF
    sm.begin_start()
    clock.advance(35)  # exits at +35, +70, +105: the first has left the window
    assert sm.process_exited(1, "crashed").state is S.BACKOFF
    sm.begin_start()
    clock.advance(5)  # exits at +70, +105, +110: three inside 60 s
    assert sm.process_exited(1, "crashed").state is S.FATAL


def test_a_manual_start_from_fatal_resets_the_window_and_the_backoff(clock: FakeClock) -> None:
    sm = machine(clock, max_restarts=1, backoff_jitter=0.0)
    crash_after(sm, clock, 1)
    assert crash_after(sm, clock, 1).state is S.FATAL
    decision = crash_after(sm, clock, 1)
    assert decision.state is S.BACKOFF and decision.restart_in == 1.0
    assert sm.failed_starts_in_a_row == 1


def test_a_stable_run_resets_the_backoff_and_the_window(clock: FakeClock) -> None:
    sm = machine(clock, max_restarts=2, backoff_jitter=0.0)
    crash_after(sm, clock, 1)
    crash_after(sm, clock, 1)
    assert sm.consecutive_restarts == 2
    run_for(sm, clock, 120)
    assert sm.consecutive_restarts == 0  # applied lazily, while still running
    decision = sm.process_exited(1, "crashed")
    assert decision.state is S.BACKOFF and decision.restart_in == 0.0  # see the next test


def test_the_first_failure_after_a_stable_run_restarts_at_once_and_the_next_backs_off(clock: FakeClock) -> None:
    sm = machine(clock, backoff_jitter=0.0, stable_after=30)
    run_for(sm, clock, 31)
    decision = sm.process_exited(1, "crashed")
    assert decision.state is S.BACKOFF and decision.restart_in == 0.0 and sm.next_start_at == clock.now
    assert crash_after(sm, clock, 2).restart_in == 1.0  # not stable: the usual backoff from backoff_initial
    assert crash_after(sm, clock, 2).restart_in == 2.0
    assert crash_after(sm, clock, 29).restart_in == 4.0  # under stable_after


def test_a_child_that_never_ran_stable_gets_the_usual_backoff_on_its_first_failure(clock: FakeClock) -> None:
    sm = machine(clock, backoff_jitter=0.0, stable_after=30)
    assert crash_after(sm, clock, 29).restart_in == 1.0


def test_a_run_shorter_than_stable_after_keeps_the_backoff_growing(clock: FakeClock) -> None:
    sm = machine(clock, backoff_jitter=0.0)
    crash_after(sm, clock, 1)
    assert crash_after(sm, clock, 119).restart_in == 2.0


def test_the_failed_start_streak_ends_once_a_start_survives_min_runtime(
    clock: FakeClock,
) -> None:
    sm = machine(clock)
    crash_after(sm, clock, 1)
    crash_after(sm, clock, 1)
    run_for(sm, clock, 9)
    assert sm.failed_starts_in_a_row == 2
    clock.advance(1)
    assert sm.failed_starts_in_a_row == 0


def test_the_total_restart_count_survives_a_stable_run(clock: FakeClock) -> None:
    sm = machine(clock)
    crash_after(sm, clock, 1)
    run_for(sm, clock, 500)
    assert sm.restarts == 1


def test_a_health_restart_carries_its_reason_and_restarts(clock: FakeClock) -> None:
    sm = machine(clock, backoff_jitter=0.0)
    run_for(sm, clock, 30)
    sm.health_restart("memory")
    assert sm.state is S.STOPPING and sm.pending_health_reason == "memory"
    decision = sm.process_exited(-9, "killed")
    assert decision == ExitDecision(S.BACKOFF, 1.0, early=False)
    assert sm.last_exit is not None and sm.last_exit.reason == "memory"
    assert sm.pending_health_reason is None
    sm.begin_start()
    assert sm.restarts == 1


def test_a_health_restart_within_min_runtime_is_a_failed_start(clock: FakeClock) -> None:
    sm = machine(clock)
    run_for(sm, clock, 3)
    sm.health_restart("cpu")
    assert sm.process_exited(-9, "killed").early
    assert sm.failed_starts_in_a_row == 1


def test_a_health_restart_happens_even_with_restart_on_failure_off(clock: FakeClock) -> None:
    sm = machine(clock, restart_on_failure=False)
    run_for(sm, clock, 30)
    sm.health_restart("hung")
    assert sm.process_exited(-9, "killed").state is S.BACKOFF


def test_health_restarts_count_in_the_window_and_can_turn_fatal(clock: FakeClock) -> None:
    sm = machine(clock, max_restarts=1)
    for expected in (S.BACKOFF, S.FATAL):
        run_for(sm, clock, 11)
        sm.health_restart("memory")
        assert sm.process_exited(-9, "killed").state is expected


def test_a_stop_during_a_health_restart_cancels_the_restart(clock: FakeClock) -> None:
    sm = machine(clock)
    run_for(sm, clock, 30)
    sm.health_restart("hung")
    assert sm.begin_stop() is S.STOPPING
    assert sm.process_exited(-9, "killed").state is S.STOPPED


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        ([], "handshake_ok"),
        ([], "begin_stop"),
        ([], "stopped"),
        ([], "health_restart"),
        ([], "process_exited"),
        (["begin_start"], "begin_start"),
        (["begin_start", "handshake_ok"], "handshake_ok"),
        (["begin_start", "handshake_ok"], "begin_start"),
        (["begin_start", "begin_stop"], "health_restart"),
        (["begin_start", "begin_stop"], "begin_start"),
    ],
)
def test_an_event_in_the_wrong_state_raises_invalid_transition(
    clock: FakeClock, setup: list[str], event: str
) -> None:
    sm = machine(clock)
    for step in setup:
        getattr(sm, step)()
    before = sm.state
    args: dict[str, tuple[object, ...]] = {"health_restart": ("hung",), "process_exited": (1, "x")}
    with pytest.raises(InvalidTransition) as info:
        getattr(sm, event)(*args.get(event, ()))
    assert info.value.state is before and info.value.event == event
    assert sm.state is before


def test_the_invalid_transition_message_names_child_state_and_event(clock: FakeClock) -> None:
    sm = ChildStateMachine(RestartPolicy(), clock, name="echo")
    expected = r"child 'echo': cannot handshake_ok while stopped \(allowed from: starting\)"
    with pytest.raises(InvalidTransition, match=expected):
        sm.handshake_ok()


def test_a_policy_with_impossible_values_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff_jitter"):
        RestartPolicy(backoff_jitter=1.5)
    with pytest.raises(ValueError, match="backoff_initial"):
        RestartPolicy(backoff_initial=5, backoff_max=1)
