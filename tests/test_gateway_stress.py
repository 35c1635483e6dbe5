"""1,000 concurrent calls from one client while the child is restarted every 2 s: none hangs.
Each call returns its result or a structured error within its bound."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from metasup_mcp.children.state import ChildState
from tests.test_gateway_support import connected, fixture, running

pytestmark = pytest.mark.anyio

CALLS = 1000
SPREAD = 6.0  # seconds over which the calls start, so that they straddle the restarts
RESTART_EVERY = 2.0
CALL_WAIT = 3.0
SLOW = 0.2  # seconds the child takes over every other call
BOUND = CALL_WAIT + SLOW + 2.0  # waiting for a restart, the call itself, a busy 2-core machine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_thousand_concurrent_calls_through_restarts_every_two_seconds_never_hang(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", call_wait=f"{CALL_WAIT}s", call_timeout="10s")]) as up:
        child = await running(up.sup, "fx")
        await up.until_tools(lambda n: {"fx__echo", "fx__slow"} <= n)
        outcomes: Counter[str] = Counter()
        slowest = 0.0
        restarts = 0

        async def one_call(i: int) -> None:
            nonlocal slowest
            await anyio.sleep(i * SPREAD / CALLS)  # the call's start time in the schedule
            started = time.monotonic()
            if i % 2:
                result = await up.session.call_tool("fx__slow", {"seconds": SLOW})
                expected = f"slept {SLOW} s"
            else:
                result = await up.session.call_tool("fx__echo", {"text": f"call {i}"})
                expected = f"call {i}"
            slowest = max(slowest, time.monotonic() - started)
            if not result.is_error:
                assert result.content[0].text == expected
                outcomes["ok"] += 1
                return
            error = result.structured_content
            assert isinstance(error, dict) and error["server"] == "fx", result
            assert error["reason"] in ("child_died", "unavailable") and error["retry"] is True, error
            outcomes[error["reason"]] += 1

        async def restart_every_two_seconds() -> None:
            nonlocal restarts
            while True:
                await anyio.sleep(RESTART_EVERY)  # the cadence under test, not a wait for a condition
                child.request_restart()
                restarts += 1

        with anyio.fail_after(SPREAD + BOUND + 5):
            async with anyio.create_task_group() as calls:
                async with anyio.create_task_group() as restarter:
                    restarter.start_soon(restart_every_two_seconds)
                    async with anyio.create_task_group() as callers:
                        for i in range(CALLS):
                            callers.start_soon(one_call, i)
                    restarter.cancel_scope.cancel()
                calls.cancel_scope.cancel()

        assert sum(outcomes.values()) == CALLS, outcomes
        assert restarts >= 2 and outcomes["ok"] > CALLS / 2, (restarts, outcomes)
        assert slowest < BOUND, f"slowest call took {slowest:.2f}s (bound {BOUND:g}s); outcomes {outcomes}"
        await child.wait_for(lambda c: c.state is ChildState.RUNNING, 5)
        gateway = up.sup.status("fx")["servers"]["fx"]["gateway"]
        assert gateway["calls"] == CALLS and gateway["errors"] == CALLS - outcomes["ok"]
        print(f"\n{CALLS} calls, {restarts} restarts: {dict(outcomes)}; slowest {slowest:.2f}s")
