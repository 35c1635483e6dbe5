"""The raw relay of tools/call (gateway/fastpath.py) over the real stdio wire: `metasup-mcp serve`
as a subprocess, a real SDK client, real fixture children. What a caller gets must be what the
SDK path gives: results, structured content, errors, progress, cancellation, `_meta`, timeouts
and deaths.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.test_gateway_support import START, fixture, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def served(tmp_path: Path, servers: list[dict[str, Any]]) -> AsyncIterator[ClientSession]:
    config = write_config(tmp_path, servers)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "metasup_mcp.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
        env=dict(os.environ),
    )
    with open(tmp_path / "serve.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            wanted = {f"{s['name']}__echo" for s in servers}
            with anyio.fail_after(START):
                while not wanted <= {t.name for t in (await session.list_tools()).tools}:
                    await anyio.sleep(0.05)
            yield session


async def gateway_figures(session: ClientSession, name: str) -> dict[str, Any]:
    status = await session.call_tool("server_status", {"name": name})
    assert status.structured_content is not None
    return status.structured_content["servers"][name]["gateway"]


async def test_a_relayed_call_passes_results_meta_and_errors_as_the_sdk_path_does(tmp_path: Path) -> None:
    servers = [fixture("fx", "--meta-tool"), fixture("bad", "--unusable-answer", "envelope", call_timeout="60s")]
    async with served(tmp_path, servers) as session:
        echo = await session.call_tool("fx__echo", {"text": "hé"})
        assert echo.content[0].text == "hé" and not echo.is_error  # type: ignore[union-attr]
        add = await session.call_tool("fx__add", {"a": 2, "b": 3})
        assert add.structured_content == {"result": 5}
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        meta = await session.call_tool("fx__meta", {}, meta={"traceparent": trace})
        assert json.loads(meta.content[0].text) == {"traceparent": trace}  # type: ignore[union-attr]
        failed = await session.call_tool("fx__meta", {"fail": True})
        assert failed.is_error and failed.structured_content is not None
        assert failed.structured_content["reason"] == "child_error" and failed.structured_content["code"] == -32000
        assert "server 'fx' answered with an error: meta failed" in failed.structured_content["error"]
        started = time.monotonic()
        unusable = await session.call_tool("bad__echo", {"text": "x"})
        assert time.monotonic() - started < 5 and unusable.is_error and unusable.structured_content is not None
        assert unusable.structured_content["server"] == "bad" and unusable.structured_content["reason"] == "child_error"
        figures = await gateway_figures(session, "fx")
        assert figures["calls"] == figures["relayed"] == 4 and figures["errors"] == 1


async def test_relayed_progress_reaches_the_caller_and_a_cancelled_call_is_cancelled_in_the_child(
    tmp_path: Path,
) -> None:
    async with served(tmp_path, [fixture("fx")]) as session:
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        done = await session.call_tool("fx__slow", {"seconds": 0.5}, progress_callback=on_progress)
        assert done.content[0].text == "slept 0.5 s" and len(progress) >= 3  # type: ignore[union-attr]
        with anyio.move_on_after(0.5):
            await session.call_tool("fx__slow", {"seconds": 30})
        with anyio.fail_after(5):
            while not any("cancelled" in line for line in await logs(session, "fx")):
                await anyio.sleep(0.05)
        figures = await gateway_figures(session, "fx")
        assert figures["relayed"] == 2 and figures["cancelled"] == 1
        assert (await session.call_tool("fx__echo", {"text": "still here"})).content[0].text == "still here"  # type: ignore[union-attr]


async def test_a_relayed_call_ends_at_call_timeout_and_at_once_when_the_child_dies(tmp_path: Path) -> None:
    async with served(tmp_path, [fixture("fx", call_timeout="1s")]) as session:
        started = time.monotonic()
        slow = await session.call_tool("fx__slow", {"seconds": 20})
        assert slow.structured_content is not None and slow.structured_content["reason"] == "timeout"
        assert 0.9 < time.monotonic() - started < 5
        started = time.monotonic()
        crashed = await session.call_tool("fx__crash", {})
        assert crashed.structured_content is not None and crashed.structured_content["reason"] == "child_died"
        assert time.monotonic() - started < 1.0


async def logs(session: ClientSession, name: str) -> list[str]:
    result = await session.call_tool("server_logs", {"name": name, "lines": 50})
    assert result.structured_content is not None
    return result.structured_content["lines"]


async def test_a_child_cannot_answer_or_report_progress_on_another_servers_relayed_call(tmp_path: Path) -> None:
    async with served(tmp_path, [fixture("fx"), fixture("evil", "--spoof-ids", "50")]) as session:
        messages: list[str | None] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            messages.append(message)

        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def slow() -> None:
                results.append(await session.call_tool("fx__slow", {"seconds": 1}, progress_callback=on_progress))

            tg.start_soon(slow)
            with anyio.fail_after(5):
                while not messages:  # the slow call is in flight (its first progress arrived)
                    await anyio.sleep(0.01)
            assert (await session.call_tool("evil__echo", {"text": "mine"})).content[0].text == "mine"  # type: ignore[union-attr]
        assert results[0].content[0].text == "slept 1.0 s" and "spoofed" not in messages


async def test_client_lines_the_relay_cannot_take_reach_the_sdk_and_leave_it_working(tmp_path: Path) -> None:
    config = write_config(tmp_path, [fixture("fx")])
    argv = [sys.executable, "-m", "metasup_mcp.cli", "--log-level", "WARNING", "serve", "--config", str(config)]
    process = await anyio.open_process(argv, stderr=-3)
    assert process.stdin is not None and process.stdout is not None
    lines: list[dict[str, Any]] = []
    buffer = b""

    async def answer(rid: int) -> dict[str, Any]:
        nonlocal buffer
        while not (found := [m for m in lines if m.get("id") == rid]):
            buffer += await process.stdout.receive()  # type: ignore[union-attr]
            *complete, buffer = buffer.split(b"\n")
            lines.extend(json.loads(line) for line in complete if line.strip())
        return found[0]

    async def send(message: Any) -> None:
        await process.stdin.send(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]

    call = {"name": "fx__echo", "arguments": {"text": "x"}}
    try:
        with anyio.fail_after(START):
            await send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            await answer(1)
            await send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            for rid in range(100, 1000):  # until the child is listed and answers
                await send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": call})
                if not (await answer(rid))["result"].get("isError"):
                    break
                await anyio.sleep(0.05)
            await send({"jsonrpc": "2.0", "id": [1], "method": "tools/call", "params": call})  # unhashable id
            await send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"a": 1}}})
            await send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {**call, "arguments": [1]}})
            await send({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": call})
            assert (await answer(8))["result"]["content"][0]["text"] == "x"
            assert "error" in (bad := await answer(7)) or bad["result"].get("isError")
    finally:
        await process.stdin.aclose()
        with anyio.move_on_after(10):
            await process.wait()
