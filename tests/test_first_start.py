"""First starts: a slow child that is alive and progressing (an npx or uvx download writing to
stderr) gets `startup_timeout`; a silent one still fails at `handshake_timeout`; and whatever a
first start does, it is that server's own problem, never the fleet's."""

from __future__ import annotations

import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.supervisor import Supervisor
from tests.conftest import eventually, fixture_server

pytestmark = pytest.mark.anyio

DOWNLOADING = [
    fixture_server(f"npx{n}", "--progress-start", "1.5", handshake_timeout="0.5s", startup_timeout="20s")
    for n in range(6)
]


@pytest.mark.servers(*DOWNLOADING, max_failures=1)
async def test_six_slow_first_starts_that_write_progress_all_come_up_without_a_restart(supervisor: Supervisor) -> None:
    await eventually(lambda: all(c.state is ChildState.RUNNING for c in supervisor.manager), timeout=30)
    assert [c.machine.restarts for c in supervisor.manager] == [0] * 6
    assert supervisor.mode == "normal"
    # Once up, a server gets handshake_timeout only: the allowance is for first starts.
    assert {c.handshake_allowance for c in supervisor.manager} == {0.5}


@pytest.mark.servers(
    fixture_server("silent", "--slow-start", "3", handshake_timeout="0.5s", startup_timeout="20s",
                   restart_on_failure=False),
)
async def test_a_silent_first_start_still_fails_at_handshake_timeout(supervisor: Supervisor) -> None:
    child = supervisor.child("silent")
    await eventually(lambda: child.state is ChildState.EXITED, timeout=10)
    assert child.machine.last_exit is not None and child.machine.last_exit.uptime < 2.5
    assert child.last_error.startswith("handshake: no answer to initialize/tools/list within 0.5s")


@pytest.mark.servers(fixture_server("needs-key", "--require-env", "MY_API_KEY"), fixture_server("fine"))
async def test_a_crash_looping_servers_last_error_quotes_its_stderr_and_the_fleet_keeps_running(
    supervisor: Supervisor,
) -> None:
    child = supervisor.child("needs-key")
    await eventually(lambda: child.state is ChildState.FATAL, timeout=15)
    status = supervisor.status("needs-key")["servers"]["needs-key"]
    assert "MY_API_KEY is required" in status["last_error"]
    assert status["last_error"].startswith("crash loop:")
    assert supervisor.child("fine").state is ChildState.RUNNING and supervisor.mode == "normal"
