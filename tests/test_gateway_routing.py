"""The gateway against real fixture children: namespaced tools, filters, collisions, and calls
that never hang — through deaths, timeouts, restarts and stops.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.subscriptions import ToolsListChanged

from metasup_mcp.children.state import ChildState
from metasup_mcp.config import ConfigError, load_config
from metasup_mcp.mcp_server import SupervisorSurface
from metasup_mcp.supervisor import Supervisor
from tests.test_gateway_support import (
    connected,
    eventually,
    fixture,
    running,
    structured_error,
    write_config,
)

pytestmark = pytest.mark.anyio

FIXTURE_TOOLS = {"echo", "add", "slow", "hang", "crash"}
TOOLS_CHANGED = "notifications/tools/list_changed"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_child_tools_are_listed_under_their_namespace_unchanged_and_called_by_it(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx"), fixture("my box", namespace="")]) as up:
        names = await up.until_tools(lambda n: "fx__add" in n and "add" in n)
        assert {f"fx__{t}" for t in FIXTURE_TOOLS} | FIXTURE_TOOLS <= names
        assert "server_status" in names  # the supervisor's own tools stay
        listed = {t.name: t for t in (await up.session.list_tools()).tools}
        child = up.sup.child("fx").tools
        original = next(t for t in child if t.name == "add")
        assert listed["fx__add"].model_copy(update={"name": "add"}) == original  # schemas, description as they were
        result = await up.session.call_tool("fx__add", {"a": 2, "b": 3})
        assert result.structured_content == {"result": 5} and not result.is_error
        assert (await up.session.call_tool("echo", {"text": "bare"})).content[0].text == "bare"
        gateway = up.sup.status("fx")["servers"]["fx"]["gateway"]
        assert gateway["exposed_tools"] == 5 and gateway["calls"] == 1 and gateway["errors"] == 0
        assert gateway["latency"]["count"] == 1 and gateway["latency"]["p99_ms"] > 0


async def test_allow_and_deny_filters_hide_tools_and_refuse_their_calls(tmp_path: Path) -> None:
    servers = [fixture("fx", tools={"allow": ["e*", "add", "slow"], "deny": ["slow"]})]
    async with connected(tmp_path, servers) as up:
        await up.until_tools(lambda n: "fx__echo" in n)
        await up.settled()
        assert {n for n in await up.tool_names() if n.startswith("fx__")} == {"fx__echo", "fx__add"}
        refused = await up.session.call_tool("fx__slow", {"seconds": 0})
        assert refused.is_error and "unknown tool 'fx__slow'" in refused.content[0].text


async def test_a_tool_name_collision_keeps_the_first_owner_and_says_so_in_status(tmp_path: Path) -> None:
    # "second" comes up after "first" has listed: the first to offer a name keeps it.
    servers = [fixture("second", namespace="", enabled=False), fixture("first", namespace="")]
    async with connected(tmp_path, servers) as up:
        first = await running(up.sup, "first")
        await up.until_tools(lambda n: "echo" in n)
        await up.session.call_tool("start_server", {"name": "second"})
        await up.settled()
        await up.session.call_tool("echo", {"text": "x"})
        assert up.sup.gateway.recent_latencies("first") and not up.sup.gateway.recent_latencies("second")
        status = up.sup.status()["servers"]
        problem = status["second"]["last_error"]
        assert "'echo'" in problem and "'first' already offers" in problem and "`namespace`" in problem
        assert status["second"]["gateway"]["exposed_tools"] == 0 and status["first"]["last_error"] is None
        assert first.state is ChildState.RUNNING  # refusing names never touches the child


async def test_a_child_tool_named_like_a_supervisor_tool_is_refused(tmp_path: Path) -> None:
    # The fixture has no tool named like one of the supervisor's, so reserve one of its names
    # the way the MCP surface reserves its own (SupervisorSurface calls reserve() at start).
    async with connected(tmp_path, [fixture("fx", namespace="")]) as up:
        await running(up.sup, "fx")
        up.sup.gateway.reserve(tools=["echo", "server_status"])
        await up.settled()
        assert "echo" not in {t.name for t in up.sup.gateway.tools()}
        assert "the name of a tool of the supervisor itself" in up.sup.status("fx")["servers"]["fx"]["last_error"]
        assert "add" in {t.name for t in up.sup.gateway.tools()}  # its other tools stay


async def test_names_over_64_characters_are_refused_per_tool_and_per_namespace_at_start(tmp_path: Path) -> None:
    namespace = "n" * 59  # 59 + 2 + len("add") = 64 fits; "echo", "slow", "hang", "crash" do not
    async with connected(tmp_path, [fixture("long", namespace=namespace)]) as up:
        await up.until_tools(lambda n: f"{namespace}__add" in n)
        assert not any(n.startswith(namespace) and len(n) > 64 for n in await up.tool_names())
        assert "over the 64 that clients accept" in up.sup.status("long")["servers"]["long"]["last_error"]
    with pytest.raises(ConfigError, match="every tool name would exceed 64"):
        Supervisor(load_config(write_config(tmp_path, [fixture("huge", namespace="n" * 62)])))


async def test_a_call_in_flight_when_the_child_is_killed_fails_structured_within_a_second(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx")]) as up:
        child = await running(up.sup, "fx")
        await up.until_tools(lambda n: "fx__slow" in n)
        outcome: dict[str, object] = {}

        async def slow_call() -> None:
            outcome["result"] = await up.session.call_tool("fx__slow", {"seconds": 30})
            outcome["at"] = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            await eventually(lambda: up.sup.gateway._inflight["fx"], timeout=5)
            os.kill(child.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        error = structured_error(outcome["result"])  # type: ignore[arg-type]
        assert error["server"] == "fx" and error["reason"] == "child_died" and error["retry"] is True
        assert outcome["at"] - killed_at < 1.0  # type: ignore[operator]


async def test_call_timeout_ends_a_slow_call_and_leaves_the_child_usable(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", call_timeout="0.5s")]) as up:
        child = await running(up.sup, "fx")
        await up.until_tools(lambda n: "fx__slow" in n)
        started = time.monotonic()
        error = structured_error(await up.session.call_tool("fx__slow", {"seconds": 20}))
        assert error["reason"] == "timeout" and "call_timeout" in error["error"]
        assert 0.4 < time.monotonic() - started < 3
        generation = child.generation
        assert (await up.session.call_tool("fx__echo", {"text": "still here"})).content[0].text == "still here"
        assert child.generation == generation and child.state is ChildState.RUNNING


async def test_a_call_during_a_restart_waits_for_the_child_and_succeeds(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", "--slow-start", "0.5")]) as up:
        child = await running(up.sup, "fx")
        await up.until_tools(lambda n: "fx__echo" in n)
        await up.settled()
        before = up.count(TOOLS_CHANGED)
        generation = child.generation
        child.request_restart()
        await eventually(lambda: child.generation > generation, timeout=5)
        assert "fx__echo" in await up.tool_names()  # still listed while restarting
        result = await up.session.call_tool("fx__echo", {"text": "after"})
        assert result.content[0].text == "after" and child.state is ChildState.RUNNING
        await up.settled()
        assert up.count(TOOLS_CHANGED) == before  # same tools after the restart: nothing to announce


async def test_a_child_not_back_within_call_wait_gives_a_structured_retry_hint(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", "--slow-start", "3", call_wait="0.3s")]) as up:
        child = await running(up.sup, "fx")
        await up.until_tools(lambda n: "fx__echo" in n)
        child.request_restart()
        await child.wait_for(lambda c: c.state is ChildState.STARTING, 5)
        started = time.monotonic()
        error = structured_error(await up.session.call_tool("fx__echo", {"text": "x"}))
        assert time.monotonic() - started < 2
        assert error["server"] == "fx" and error["state"] == "starting" and error["reason"] == "unavailable"
        assert error["retry"] is True and error["retry_after_s"] >= 1


async def test_a_stopped_or_fatal_child_drops_its_tools_and_the_client_hears_of_it(tmp_path: Path) -> None:
    servers = [fixture("fx"), fixture("doomed", restart={"max_restarts": 1, "backoff_initial": "0.1s"})]
    async with connected(tmp_path, servers) as up:
        await up.until_tools(lambda n: {"fx__echo", "doomed__crash"} <= n)
        await up.settled()
        before = up.count(TOOLS_CHANGED)
        await up.session.call_tool("server_status", {})
        stopped = await up.session.call_tool("stop_server", {"name": "fx"})
        assert stopped.structured_content["state"] == "stopped"
        await up.until_tools(lambda n: not any(t.startswith("fx__") for t in n))
        await eventually(lambda: up.count(TOOLS_CHANGED) > before, timeout=5)
        error = structured_error(await up.session.call_tool("fx__echo", {"text": "x"}))  # unlisted, not unknown
        assert "server 'fx' is stopped" in error["error"] and "start_server" in error["error"]
        assert (error["server"], error["state"], error["reason"]) == ("fx", "stopped", "unavailable")
        doomed = up.sup.child("doomed")
        while doomed.state is not ChildState.FATAL:  # crash it into a crash loop (2 crashes)
            generation = doomed.generation
            await running(up.sup, "doomed")
            await up.session.call_tool("doomed__crash", {})
            await doomed.wait_for(lambda c: c.generation > generation or c.state is ChildState.FATAL, 10)
        await up.until_tools(lambda n: not any(t.startswith("doomed__") for t in n))
        await up.session.call_tool("start_server", {"name": "fx"})
        await up.until_tools(lambda n: "fx__echo" in n)


async def test_a_modern_era_client_calls_through_and_hears_of_list_changes_by_listening(tmp_path: Path) -> None:
    sup = Supervisor(load_config(write_config(tmp_path, [fixture("fx")])))
    async with sup.running():
        async with Client(SupervisorSurface(sup).build(), cache=None) as client:  # 2026-07-28, in process
            assert client.protocol_version == "2026-07-28"
            await running(sup, "fx")
            await eventually(lambda: any(t.name == "fx__echo" for t in sup.gateway.tools()), timeout=5)
            assert (await client.call_tool("fx__echo", {"text": "modern"})).content[0].text == "modern"
            async with client.listen(tools_list_changed=True) as events:
                await sup.stop_server("fx")
                with anyio.fail_after(5):
                    assert isinstance(await events.__anext__(), ToolsListChanged)
            assert not any(t.name.startswith("fx__") for t in (await client.list_tools()).tools)


async def test_a_client_that_lists_once_on_connecting_already_sees_the_childrens_tools(tmp_path: Path) -> None:
    # Many clients list tools once, right after connecting; the children are still starting then.
    async with connected(tmp_path, [fixture("fx", "--slow-start", "0.5")]) as up:
        assert up.sup.child("fx").state is ChildState.STARTING
        assert {"fx__echo", "fx__add"} <= await up.tool_names()
