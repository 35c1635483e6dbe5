"""`Supervisor` driven directly against real fixture children that misbehave for real.

Detection bounds come from the config: a hung or breaching child is due after
`interval × failure_threshold + probe_timeout`; SLACK covers a loaded 2-core machine.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from metasup_mcp.children.child import HANDSHAKE_EXIT_GRACE, ManagedChild
from metasup_mcp.children.process import STDIN_CLOSE_GRACE
from metasup_mcp.children.state import ChildState
from metasup_mcp.supervisor import Supervisor, SupervisorError, UnknownServer
from tests.conftest import (
    BACKOFF_INITIAL,
    INTERVAL,
    PROBE_TIMEOUT,
    SLACK,
    THRESHOLD,
    ConfigMaker,
    alive,
    host_pid,
    eventually,
    fixture_server,
    record_timing,
)

pytestmark = pytest.mark.anyio

S = ChildState
JITTER = 0.2  # RestartPolicy.backoff_jitter
DUE = INTERVAL * THRESHOLD + PROBE_TIMEOUT


def status(sup: Supervisor, name: str) -> dict[str, Any]:
    return sup.status(name)["servers"][name]


async def running(sup: Supervisor, name: str, timeout: float = 5.0) -> ManagedChild:
    child = sup.child(name)
    assert await child.wait_for(lambda c: c.state is S.RUNNING, timeout), status(sup, name)
    return child


async def next_exit(child: ManagedChild, timeout: float) -> float:
    """Wait for the current incarnation to end; return when it did (the supervisor's clock)."""
    generation = child.generation
    assert await child.wait_for(
        lambda c: c.generation > generation or c.state not in (S.STARTING, S.RUNNING, S.STOPPING), timeout
    ), f"{child.name} still {child.state}"
    assert child.machine.last_exit is not None
    return child.machine.last_exit.at


async def breach_times(child: ManagedChild, ramp: float = 0.0) -> tuple[float, float]:
    """Seconds from now until a health restart is decided, and until the process is gone.

    A breaching child is still asked to stop gently (stdin closed, a grace, then SIGTERM).
    """
    started = anyio.current_time()
    assert await child.wait_for(lambda c: c.state is not S.RUNNING, timeout=ramp + DUE + SLACK + 3)
    decided = anyio.current_time() - started
    exited_at = await next_exit(child, timeout=STDIN_CLOSE_GRACE + SLACK + 5)
    return decided, exited_at - started


async def call(child: ManagedChild, tool: str, **arguments: Any) -> Any:
    assert child.connection is not None
    with anyio.fail_after(5):
        return await child.connection.session.call_tool(tool, arguments)


@pytest.mark.servers(fixture_server("good"))
async def test_a_well_behaved_child_runs_with_a_pid_tools_and_health_figures(supervisor: Supervisor) -> None:
    child = await running(supervisor, "good")
    await eventually(lambda: child.health.probe_ms is not None, timeout=5)
    s = status(supervisor, "good")
    assert s["state"] == "running" and alive(s["pid"]) and s["tools"] == 5
    assert s["health"]["rss_mb"] > 0 and s["health"]["probe_ms"] >= 0
    assert s["last_exit"] is None and s["last_error"] is None


@pytest.mark.servers(fixture_server("modern", "--modern-only"))
async def test_a_child_that_refuses_initialize_is_reached_through_server_discover(supervisor: Supervisor) -> None:
    child = await running(supervisor, "modern")
    assert child.connection is not None and child.connection.session.protocol_version == "2026-07-28"
    assert len(child.tools) == 5
    await eventually(lambda: child.health.probe_ms is not None, timeout=5)  # "method not found" is alive


@pytest.mark.servers(fixture_server("liar", "--malformed-listing"), fixture_server("good"))
async def test_a_child_that_answers_malformed_results_fails_its_start_and_nothing_else(supervisor: Supervisor) -> None:
    liar = supervisor.child("liar")
    await eventually(lambda: liar.machine.last_exit is not None, timeout=5)
    assert liar.machine.last_exit is not None and "malformed answer" in liar.machine.last_exit.reason
    assert (await running(supervisor, "good")).state is S.RUNNING  # the supervisor and its other children go on


@pytest.mark.servers(fixture_server("crashy", "--crash-on-start", "7"))
async def test_a_child_that_crashes_on_start_ends_fatal_after_the_configured_restarts(supervisor: Supervisor) -> None:
    child = supervisor.child("crashy")
    started = anyio.current_time()
    assert await child.wait_for(lambda c: c.state is S.FATAL, timeout=10), status(supervisor, "crashy")
    # Four starts, three backoffs: 0.2 s, 0.4 s, then 0.8 s (each at most +20 %).
    record_timing("crash loop: fatal after 4 starts", anyio.current_time() - started, 1.68 + 2 * SLACK)
    s = status(supervisor, "crashy")
    assert s["restarts"] == 3 and s["pid"] is None
    assert s["last_exit"]["returncode"] == 7 and s["last_exit"]["early"]
    assert "before completing the MCP handshake" in s["last_exit"]["reason"]
    assert "crash loop" in s["last_error"] and "start_server" in s["last_error"]


@pytest.mark.servers(fixture_server("brittle", "--crash-after-calls", "2"))
async def test_a_child_that_crashes_after_n_calls_is_noticed_at_once_and_restarted(supervisor: Supervisor) -> None:
    child = await running(supervisor, "brittle")
    first_pid = child.pid
    await call(child, "echo", text="one")
    started = anyio.current_time()
    with pytest.raises(MCPError, match="Connection closed"):
        await call(child, "echo", text="two")  # fails at once, never hangs
    exited_at = await next_exit(child, timeout=SLACK)
    s = status(supervisor, "brittle")
    record_timing("crash after N calls: exit noticed", exited_at - started, SLACK)
    assert s["last_exit"] == {"returncode": 3, "reason": "exited with code 3", "early": True}
    assert s["last_error"] == "exited with code 3; stderr: " + next(l for l in child.stderr.tail(5) if "crashing at call 2" in l)
    assert s["state"] == "backoff"
    await running(supervisor, "brittle")
    assert child.pid != first_pid


@pytest.mark.servers(fixture_server("sleepy"))
async def test_a_hung_child_is_restarted_within_interval_times_threshold_plus_probe_timeout(
    supervisor: Supervisor,
) -> None:
    child = await running(supervisor, "sleepy")
    first_pid = child.pid
    started = anyio.current_time()

    async def unanswered() -> None:
        with pytest.raises(MCPError, match="Connection closed"):
            await child.connection.session.call_tool("hang", {})

    async with anyio.create_task_group() as tg:
        tg.start_soon(unanswered)
        assert await child.wait_for(lambda c: c.state is not S.RUNNING, timeout=DUE + SLACK)
        detected = anyio.current_time() - started
        exited_at = await next_exit(child, timeout=10)
        s = status(supervisor, "sleepy")  # before the restart clears last_error
    record_timing("hang: restart decided", detected, DUE + SLACK)
    record_timing("hang: process gone", exited_at - started, DUE + SLACK)
    assert s["last_exit"]["reason"] == "hung"
    assert "no answer to ping" in s["last_error"]
    await running(supervisor, "sleepy")
    assert child.pid != first_pid and not alive(first_pid)


@pytest.mark.servers(fixture_server("mute", "--hang-on-start", handshake_timeout="1s"))
async def test_a_child_that_never_answers_initialize_fails_its_start_after_the_handshake_timeout(
    supervisor: Supervisor,
) -> None:
    child = supervisor.child("mute")
    started = anyio.current_time()
    # The timeout, a look for a crash (HANDSHAKE_EXIT_GRACE), then the stdin-close grace of a stop.
    bound = 1.0 + HANDSHAKE_EXIT_GRACE + STDIN_CLOSE_GRACE + SLACK
    exited_at = await next_exit(child, timeout=bound + 2)
    record_timing("hang on start: handshake timeout", exited_at - started, bound)
    s = status(supervisor, "mute")
    assert "handshake: no answer to initialize" in s["last_exit"]["reason"] and s["last_exit"]["early"]


@pytest.mark.servers(
    fixture_server("leaky", "--leak-mb-per-s", "200"), health_checks={"max_memory_mb": 60}
)
async def test_a_child_leaking_memory_is_restarted_for_memory(supervisor: Supervisor) -> None:
    child = await running(supervisor, "leaky")
    # 200 MB/s crosses 60 MB within about 0.3 s of the handshake.
    decided, gone = await breach_times(child, ramp=0.3)
    record_timing("memory leak: restart decided", decided, 0.3 + DUE + SLACK)
    record_timing("memory leak: process gone", gone, 0.3 + DUE + STDIN_CLOSE_GRACE + SLACK)
    s = status(supervisor, "leaky")
    assert s["last_exit"]["reason"] == "memory"
    assert s["last_error"].startswith("unhealthy: memory:") and "over 60 MB" in s["last_error"]


@pytest.mark.servers(fixture_server("spinner", "--spin"), health_checks={"max_cpu_percent": 20})
async def test_a_child_spinning_the_cpu_is_restarted_for_cpu(supervisor: Supervisor) -> None:
    child = await running(supervisor, "spinner")
    decided, gone = await breach_times(child)
    record_timing("cpu spin: restart decided", decided, DUE + SLACK)
    record_timing("cpu spin: process gone", gone, DUE + STDIN_CLOSE_GRACE + SLACK)
    s = status(supervisor, "spinner")
    assert s["last_exit"]["reason"] == "cpu"
    assert s["last_error"].startswith("unhealthy: cpu:")


@pytest.mark.servers(fixture_server("noisy", "--garbage"))
async def test_a_child_writing_garbage_on_stdout_stays_usable_and_the_garbage_is_counted(
    supervisor: Supervisor,
) -> None:
    child = await running(supervisor, "noisy")
    result = await call(child, "add", a=2, b=3)
    assert result.structured_content == {"result": 5}
    s = status(supervisor, "noisy")
    assert s["state"] == "running" and s["last_exit"] is None
    # Two lines before the handshake, then one before each of its answers.
    assert s["stdout_garbage"]["lines"] >= 5
    assert s["stdout_garbage"]["last"] == "garbage: this line is not JSON"


@pytest.mark.servers(fixture_server("stubborn", "--ignore-sigterm", stop_timeout="0.5s"))
async def test_a_child_that_ignores_sigterm_is_killed_after_its_stop_timeout(supervisor: Supervisor) -> None:
    child = await running(supervisor, "stubborn")
    pid = child.pid
    started = anyio.current_time()
    s = await supervisor.stop_server("stubborn")
    # stdin close, its grace, SIGTERM (ignored), the 0.5 s stop_timeout, SIGKILL.
    record_timing("ignores SIGTERM: stopped", anyio.current_time() - started, STDIN_CLOSE_GRACE + 0.5 + SLACK)
    assert s["state"] == "stopped" and s["pid"] is None and not alive(pid)
    assert s["last_error"] is None


@pytest.mark.servers(fixture_server("parent", "--spawn-grandchild", "--grandchild-ignores-sigterm"))
async def test_stopping_a_child_also_kills_the_grandchild_it_spawned(supervisor: Supervisor) -> None:
    child = await running(supervisor, "parent")
    grandchild = host_pid(child.pid, int((await call(child, "grandchild_pid")).content[0].text))
    assert alive(grandchild)
    await supervisor.stop_server("parent")
    await eventually(lambda: not alive(grandchild), timeout=1)


@pytest.mark.servers(fixture_server("parent", "--spawn-grandchild"))
async def test_a_grandchild_does_not_outlive_a_kill_9_of_its_parent(supervisor: Supervisor) -> None:
    child = await running(supervisor, "parent")
    grandchild = host_pid(child.pid, int((await call(child, "grandchild_pid")).content[0].text))
    os.kill(child.pid, signal.SIGKILL)
    await next_exit(child, timeout=SLACK)
    await eventually(lambda: not alive(grandchild), timeout=SLACK)


@pytest.mark.servers(fixture_server("victim"))
async def test_a_kill_9_brings_a_new_pid_no_earlier_than_the_backoff_allows(supervisor: Supervisor) -> None:
    child = await running(supervisor, "victim")
    # Starting a running server is a no-op, and must not waive the backoff of its next crash.
    assert (await supervisor.start_server("victim"))["pid"] == child.pid
    for attempt in range(2):  # the second delay doubles
        pid = child.pid
        os.kill(pid, signal.SIGKILL)
        exited_at = await next_exit(child, timeout=SLACK)
        assert child.machine.last_exit.reason == "killed by signal 9"
        await running(supervisor, "victim")
        assert child.pid != pid and not alive(pid)
        waited = child.machine.started_at - exited_at
        assert waited >= BACKOFF_INITIAL * 2**attempt * (1 - JITTER), f"restarted after {waited:.3f}s"
        record_timing(f"kill -9: restart #{attempt + 1} after", waited, BACKOFF_INITIAL * 2**attempt * (1 + JITTER) + SLACK)
    assert status(supervisor, "victim")["restarts"] == 2


@pytest.mark.servers(
    fixture_server("steady"), min_runtime="0.2s", restart={"backoff_initial": "30s", "backoff_max": "60s", "stable_after": "0.5s"}
)
async def test_a_child_killed_after_a_stable_run_restarts_at_once_and_its_next_crash_backs_off(
    supervisor: Supervisor,
) -> None:
    child = await running(supervisor, "steady")
    await anyio.sleep(0.6)  # past stable_after (what is measured is a run's length, nothing to poll for)
    pid = child.pid
    os.kill(pid, signal.SIGKILL)
    exited_at = await next_exit(child, timeout=SLACK)
    await running(supervisor, "steady")  # a 30 s backoff would fail this
    assert child.pid != pid and child.machine.started_at - exited_at < 1.0
    os.kill(child.pid, signal.SIGKILL)  # at once again: not a stable run, so the 30 s backoff applies
    await next_exit(child, timeout=SLACK)
    assert child.state is ChildState.BACKOFF and child.machine.next_start_at - anyio.current_time() > 20


@pytest.mark.servers(
    fixture_server("looping", "--crash-on-start"), fixture_server("b"), fixture_server("c"), max_failures=1,
)
async def test_a_server_crash_looping_at_last_good_goes_fatal_alone_and_the_others_keep_serving(
    supervisor: Supervisor,
) -> None:
    innocent = await running(supervisor, "b")
    pid = innocent.pid
    await eventually(lambda: supervisor.child("looping").state is S.FATAL, timeout=SLACK * 4)
    assert supervisor.mode == "normal" and supervisor.emergency_reason is None
    assert innocent.state is S.RUNNING and innocent.pid == pid
    assert (await call(innocent, "echo", text="still here")).content[0].text == "still here"
    assert supervisor.child("c").state is S.RUNNING
    assert "crashing on start with code 1" in status(supervisor, "looping")["last_error"]


@pytest.mark.servers(fixture_server("alpha"), fixture_server("beta"))
async def test_an_unknown_server_name_is_refused_with_the_names_that_exist(supervisor: Supervisor) -> None:
    message = "no server named 'gamma'; known servers: alpha, beta"
    for action in (supervisor.start_server, supervisor.stop_server, supervisor.restart_server):
        with pytest.raises(UnknownServer, match=message):
            await action("gamma")
    with pytest.raises(UnknownServer, match=message):
        supervisor.status("gamma")
    with pytest.raises(UnknownServer, match=message):
        supervisor.server_logs("gamma")


@pytest.mark.servers(fixture_server("plain", "--stderr-lines", "3"))
async def test_stop_start_and_restart_on_request_and_the_stderr_tail(supervisor: Supervisor) -> None:
    child = await running(supervisor, "plain")
    first_pid = child.pid
    await eventually(lambda: len(supervisor.server_logs("plain")) >= 3, timeout=SLACK)
    # The pid a child sees of itself is its sandbox's (PID namespace), not the host's.
    assert [line.split("]: ", 1)[1] for line in supervisor.server_logs("plain", 1)] == ["stderr line 3"]

    stopped = await supervisor.stop_server("plain")
    assert stopped["state"] == "stopped" and stopped["last_error"] is None and not alive(first_pid)
    started = await supervisor.start_server("plain")
    assert started["state"] == "running" and started["pid"] != first_pid
    restarted = await supervisor.restart_server("plain")
    assert restarted["state"] == "running" and restarted["pid"] not in (first_pid, started["pid"])
    assert restarted["restarts"] == 0  # requested restarts are not failures


@pytest.mark.servers(fixture_server("crashy", "--crash-on-start", "7"), {"name": "ghost", "command": "/nonexistent/ghost"})
async def test_a_fatal_child_gets_a_second_chance_from_start_server(supervisor: Supervisor) -> None:
    ghost = supervisor.child("ghost")
    assert await ghost.wait_for(lambda c: c.state is S.FATAL, timeout=10)
    assert status(supervisor, "ghost")["last_exit"]["reason"].startswith("spawn failed: No such file")
    crashy = supervisor.child("crashy")
    assert await crashy.wait_for(lambda c: c.state is S.FATAL, timeout=10)
    generation = crashy.generation
    again = await supervisor.start_server("crashy")
    assert crashy.generation > generation and again["state"] == "backoff"  # not fatal: a fresh window


async def test_cancelling_the_supervisor_stops_its_children_without_waiting_out_the_timeouts(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any
) -> None:
    config = make_config(tmp_path, [fixture_server("one"), fixture_server("two", "--spawn-grandchild")])
    with anyio.CancelScope() as scope:
        async with supervisor_factory(config) as sup:
            children = [await running(sup, name) for name in ("one", "two")]
            pids = [child.pid for child in children]
            cancelled_at = anyio.current_time()
            scope.cancel()
            await anyio.sleep_forever()
    # Each exits on stdin EOF at once; the 1 s grace, SIGTERM and stop_timeout are for the stubborn.
    record_timing("cancelled supervisor: children stopped", anyio.current_time() - cancelled_at, 1.0)
    assert not [pid for pid in pids if alive(pid)]


async def test_a_supervisor_stopped_the_moment_it_started_stops_at_once(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any
) -> None:
    config = make_config(tmp_path, [fixture_server("one"), fixture_server("two")])
    async with supervisor_factory(config):
        started = anyio.current_time()  # leaving now: the stops meet the children mid-start
    record_timing("stop during start: supervisor gone", anyio.current_time() - started, SLACK)

