"""The `metasup-mcp serve` process, driven over its stdio by a real MCP client session.

However the supervisor ends (stdin closed, SIGTERM, SIGKILL), no process of its tree may
outlive it; after a SIGKILL the next `serve` on the same state_dir sweeps the survivors.
The autouse guard in conftest checks, after each test, that nothing carrying its mark is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession
from mcp.shared.message import SessionMessage

from metasup_mcp.children.process import INSTANCE_ENV_VAR
from metasup_mcp.children.sweep import claim_instance

from tests.conftest import (
    TEST_MARK,
    ConfigMaker,
    alive,
    is_wrapper,
    example_server,
    fixture_server,
    marked_processes,
    record_timing,
    wait_until,
)

pytestmark = pytest.mark.anyio

METASUP = Path(sys.executable).parent / "metasup-mcp"
SUPERVISOR_TOOLS = {
    "server_status", "start_server", "stop_server", "restart_server", "server_logs", "emergency_stop", "recover"
}
# The nastiest tree a fixture can grow: one that outlives stdin EOF and ignores SIGTERM, and
# one that forks a grandchild which ignores SIGTERM too.
HARD_TREE = [
    fixture_server("plain"),
    fixture_server("stubborn", "--ignore-sigterm", stop_timeout="0.5s"),
    fixture_server("parent", "--spawn-grandchild", "--grandchild-ignores-sigterm", stop_timeout="0.5s"),
]
# stubborn: 1 s stdin grace + 0.5 s stop_timeout; the rest is interpreter start-up and slack.
STOP_BOUND = 5.0


@dataclass
class Served:
    process: Process
    session: ClientSession
    stderr: Path

    async def call(self, tool: str, **arguments: Any) -> types.CallToolResult:
        with anyio.fail_after(30):
            return await self.session.call_tool(tool, arguments)

    async def status(self) -> dict[str, Any]:
        result = await self.call("server_status")
        assert not result.is_error and result.structured_content is not None
        return result.structured_content

    async def wait_all_running(self, timeout: float = 15.0) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                status = await self.status()
                servers = status["servers"].values()
                if all(s["state"] == "running" and s["health"]["probe_ms"] is not None for s in servers):
                    return status
                await anyio.sleep(0.05)

    async def exit_code(self, timeout: float = STOP_BOUND) -> int:
        try:
            with anyio.fail_after(timeout):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(f"serve did not exit within {timeout}s:\n{self.stderr.read_text()[-3000:]}") from None


@asynccontextmanager
async def serve(config: Path, token: str) -> AsyncIterator[Served]:
    """Start `metasup-mcp serve` and open an MCP session over its stdin/stdout."""
    stderr = config.parent / f"serve-{os.urandom(3).hex()}.log"
    with open(stderr, "wb") as errlog:
        process = await anyio.open_process(
            [str(METASUP), "serve", "--config", str(config)],
            env={**os.environ, TEST_MARK: token},
            stderr=errlog,
            start_new_session=True,
        )
    to_session, session_read = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    session_write, from_session = anyio.create_memory_object_stream[SessionMessage](64)

    async def pump_out() -> None:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        async with to_session:
            while True:
                try:
                    line = await lines.receive_until(b"\n", 1 << 24)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                    return
                message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                await to_session.send(SessionMessage(message))

    async def pump_in() -> None:
        assert process.stdin is not None
        async with from_session:
            async for message in from_session:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                try:
                    await process.stdin.send(data.encode())
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_out)
            tg.start_soon(pump_in)
            async with ClientSession(session_read, session_write) as session:
                with anyio.fail_after(15):
                    await session.initialize()
                yield Served(process, session, stderr)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                await process.stdin.aclose()  # type: ignore[union-attr]
                with anyio.move_on_after(STOP_BOUND):
                    await process.wait()
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            await process.aclose()


async def test_a_client_session_lists_the_supervisor_tools_and_sees_the_examples_running(
    tmp_path: Path, make_config: ConfigMaker, test_token: str
) -> None:
    config = make_config(tmp_path, [example_server("notes"), example_server("textkit")])
    async with serve(config, test_token) as served:
        tools = await served.session.list_tools()
        assert SUPERVISOR_TOOLS <= {tool.name for tool in tools.tools}
        status = await served.wait_all_running()
        assert status["supervisor"]["mode"] == "normal"
        for name, tool_count in (("notes", 4), ("textkit", 5)):
            server = status["servers"][name]
            assert alive(server["pid"]) and server["tools"] == tool_count
            assert server["health"]["rss_mb"] > 0 and server["health"]["cpu_percent"] is not None
        summary = (await served.call("server_status", name="notes")).content[0].text
        assert summary.startswith("supervisor running") and "notes: running pid" in summary

        unknown = await served.call("restart_server", name="nope")
        assert unknown.is_error
        assert unknown.content[0].text == "restart_server: no server named 'nope'; known servers: notes, textkit"


async def test_start_server_is_a_tool_error_in_emergency_mode_until_recover(
    tmp_path: Path, make_config: ConfigMaker, test_token: str
) -> None:
    config = make_config(tmp_path, [fixture_server("one"), fixture_server("two")])
    async with serve(config, test_token) as served:
        await served.wait_all_running()
        stopped = await served.call("emergency_stop", reason="operator says so")
        assert stopped.structured_content["mode"] == "emergency"
        status = await served.status()
        assert {s["state"] for s in status["servers"].values()} == {"stopped"}

        refused = await served.call("start_server", name="one")
        assert refused.is_error
        assert "emergency mode (operator says so)" in refused.content[0].text
        assert "call `recover`" in refused.content[0].text
        # A stopped server's tool is not "unknown": the answer says it is stopped, why, and the way back.
        tool = await served.call("one__echo", text="hello")
        assert tool.is_error and tool.structured_content["state"] == "stopped"
        assert "server 'one' is stopped (emergency stop: operator says so)" in tool.content[0].text
        assert "call `recover`" in tool.content[0].text

        recovered = await served.call("recover")
        assert not recovered.is_error and recovered.structured_content["mode"] == "normal"
        status = await served.status()
        assert {s["state"] for s in status["servers"].values()} == {"running"}


async def test_a_stopped_servers_tool_says_it_is_stopped_and_its_status_shows_no_stale_figures(
    tmp_path: Path, make_config: ConfigMaker, test_token: str
) -> None:
    config = make_config(tmp_path, [fixture_server("one"), fixture_server("two")])
    async with serve(config, test_token) as served:
        await served.wait_all_running()
        assert not (await served.call("two__echo", text="hi")).is_error
        await served.call("stop_server", name="two")
        answer = await served.call("two__echo", text="hi")
        assert answer.is_error
        assert answer.content[0].text == (
            "tool 'two__echo': server 'two' is stopped (stopped on request); call start_server with name 'two'"
        )
        two = (await served.status())["servers"]["two"]
        assert two["health"] == {"rss_mb": None, "cpu_percent": None, "probe_ms": None} and two["pid"] is None
        unknown = await served.call("three__echo", text="hi")
        assert unknown.is_error and "unknown tool" in unknown.content[0].text


async def tree_of(served: Served, token: str) -> list[int]:
    """Every pid of the supervised tree (children and grandchildren), the supervisor excluded."""
    await served.wait_all_running()
    procs = [p for p in marked_processes(token) if p.pid != served.process.pid]
    assert len([p for p in procs if not is_wrapper(p)]) == 4, procs  # three children and one grandchild
    return [p.pid for p in procs]


async def test_closing_stdin_stops_the_supervisor_and_leaves_no_process_of_its_tree(
    tmp_path: Path, make_config: ConfigMaker, test_token: str
) -> None:
    async with serve(make_config(tmp_path, HARD_TREE), test_token) as served:
        tree = await tree_of(served, test_token)
        closed_at = anyio.current_time()
        await served.process.stdin.aclose()  # type: ignore[union-attr]
        assert await served.exit_code() == 0
        record_timing("serve: stdin closed -> exited", anyio.current_time() - closed_at, STOP_BOUND)
    assert not [pid for pid in tree if alive(pid)]


async def test_sigterm_ends_the_supervisor_and_its_tree_while_the_client_still_holds_stdin(
    tmp_path: Path, make_config: ConfigMaker, test_token: str
) -> None:
    async with serve(make_config(tmp_path, HARD_TREE), test_token) as served:
        tree = await tree_of(served, test_token)
        signalled_at = anyio.current_time()
        served.process.send_signal(signal.SIGTERM)  # stdin stays open: no EOF to help
        assert await served.exit_code() == 0
        record_timing("serve: SIGTERM -> exited", anyio.current_time() - signalled_at, STOP_BOUND)
        assert not [pid for pid in tree if alive(pid)]


async def test_after_a_sigkill_the_next_serve_on_the_same_state_dir_sweeps_the_survivors(
    tmp_path: Path, make_config: ConfigMaker, test_token: str
) -> None:
    config = make_config(tmp_path, HARD_TREE)
    async with serve(config, test_token) as served:
        tree = await tree_of(served, test_token)
        served.process.kill()
        assert await served.exit_code() == -signal.SIGKILL
    # The sandbox's PID namespace (or the reaper) ends the tree with its supervisor; whatever a
    # weaker isolation let through is swept by the successor.
    survivors = [pid for pid in tree if alive(pid)]
    recorded = json.loads((tmp_path / "state" / "instances.json").read_text())
    assert len(recorded) == 1  # the dead instance's mark, left for its successor

    started_at = anyio.current_time()
    async with serve(config, test_token) as successor:
        assert not [pid for pid in survivors if alive(pid)]  # swept before it answered initialize
        record_timing("serve after SIGKILL: survivors gone by initialize", anyio.current_time() - started_at, 15.0)
        fresh = await tree_of(successor, test_token)
        assert not set(fresh) & set(tree)


def test_a_predecessor_killed_but_not_yet_reaped_counts_as_dead_and_is_swept(
    tmp_path: Path, test_token: str
) -> None:
    # A client that SIGKILLs its server and starts the next one before reaping the first.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: psutil.Process(dead.pid).status() == psutil.STATUS_ZOMBIE, timeout=5)
    survivor = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, INSTANCE_ENV_VAR: "old", TEST_MARK: test_token}
    )
    try:
        state = tmp_path / "state"
        state.mkdir()
        record = [{"id": "old", "pid": dead.pid, "create_time": psutil.Process(dead.pid).create_time()}]
        (state / "instances.json").write_text(json.dumps(record))
        # Until exec, /proc shows the parent's environment, without the mark.
        assert wait_until(lambda: psutil.Process(survivor.pid).environ().get(INSTANCE_ENV_VAR) == "old", timeout=5)
        assert claim_instance(state, "new") == [survivor.pid]
        assert survivor.wait(timeout=5) == -signal.SIGKILL
        assert [entry["id"] for entry in json.loads((state / "instances.json").read_text())] == ["new"]
    finally:
        survivor.kill()
        survivor.wait()
        dead.wait()
