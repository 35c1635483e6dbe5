"""Remote children (`url:`): a real MCP server over streamable HTTP, supervised like a local
one: routed through the gateway with its headers, probed, and, when it is killed, failed fast
by an open circuit until it is back, then reconnected with the circuit closed again."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from metasup_mcp.children.breaker import CircuitBreaker
from metasup_mcp.metrics import render_metrics
from tests.test_gateway_support import START, connected, eventually, running, structured_error

pytestmark = pytest.mark.anyio
HTTP_CHILD = Path(__file__).resolve().parent / "fixtures" / "http_child.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def http_server(port: int) -> AsyncIterator[Process]:
    """The fixture server on `port`, listening before the block starts, killed after it."""
    process = await anyio.open_process([sys.executable, "-u", str(HTTP_CHILD), str(port)])
    try:
        deadline = time.monotonic() + START
        while True:
            try:
                await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                break
            except OSError:
                assert time.monotonic() < deadline and process.returncode is None, "the HTTP fixture never listened"
                await anyio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


FAST = {"health_checks": {"interval": "0.2s", "probe_timeout": "1s", "failure_threshold": 2}}


async def test_a_remote_server_is_routed_with_its_headers_and_shown_like_a_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_TOKEN", "s3cret")
    port = free_port()
    remote = {"name": "far", "url": f"http://127.0.0.1:{port}/mcp", "headers": {"Authorization": "Bearer ${REMOTE_TOKEN}"}}
    async with http_server(port), connected(tmp_path, [remote], **FAST) as up:
        await running(up.sup, "far")
        await up.until_tools(lambda names: {"far__echo", "far__whoami"} <= names)
        echoed = await up.session.call_tool("far__echo", {"text": "over http"})
        assert echoed.content[0].text == "over http"
        assert (await up.session.call_tool("far__whoami", {})).content[0].text == "Bearer s3cret"
        status = up.sup.status("far")["servers"]["far"]
        assert status["url"] == remote["url"] and status["pid"] is None and status["circuit"]["state"] == "closed"
        assert status["gateway"]["calls"] == 2
        await eventually(lambda: up.sup.status("far")["servers"]["far"]["health"]["probe_ms"] is not None, START)
        metrics = render_metrics(up.sup).decode()
        assert 'metasup_child_up{server="far"} 1.0' in metrics
        assert 'metasup_child_circuit_open{server="far"} 0.0' in metrics


async def test_a_killed_remote_opens_the_circuit_calls_fail_fast_and_a_restart_closes_it(tmp_path: Path) -> None:
    port = free_port()
    remote = {"name": "far", "url": f"http://127.0.0.1:{port}/mcp", "call_wait": "5s"}
    async with connected(tmp_path, [remote], **FAST) as up:
        def circuit() -> dict:
            return up.sup.status("far")["servers"]["far"]["circuit"]

        async with http_server(port) as server:  # the supervisor may have tried before it listened
            await running(up.sup, "far")
            await up.until_tools(lambda names: "far__echo" in names)
            assert circuit()["state"] == "closed"
            opened_before = circuit()["times_opened"]
            server.kill()
            await server.wait()

        await eventually(lambda: circuit()["state"] == "open", START)
        started = time.monotonic()
        failed = await up.session.call_tool("far__echo", {"text": "anyone?"})
        assert time.monotonic() - started < 1.0  # not the 5 s call_wait
        error = structured_error(failed)
        assert error["reason"] == "circuit_open" and error["retry"] is True
        assert "unreachable (circuit open" in error["error"]
        assert 'metasup_child_circuit_open{server="far"} 1.0' in render_metrics(up.sup).decode()
        assert up.sup.child("far").state.value in ("backoff", "starting")  # reconnecting, never fatal

        async with http_server(port):
            await eventually(lambda: circuit()["state"] == "closed", START)
            await running(up.sup, "far")
            echoed = await up.session.call_tool("far__echo", {"text": "back"})
            assert not echoed.is_error and echoed.content[0].text == "back"
            assert circuit()["times_opened"] == opened_before + 1
            assert any("connected to" in line for line in up.sup.server_logs("far", 50))


def test_the_circuit_opens_at_the_threshold_and_closes_on_success() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, clock=lambda: now[0])
    assert not breaker.record_failure("refused") and not breaker.record_failure("refused")
    assert breaker.state == "closed"
    now[0] = 10.0
    assert breaker.record_failure("refused") and breaker.is_open
    assert not breaker.record_failure("refused")  # already open: opened once
    now[0] = 12.5
    assert breaker.snapshot()["open_for_s"] == 2.5 and breaker.snapshot()["consecutive_failures"] == 4
    assert breaker.record_success() and breaker.state == "closed" and breaker.opened == 1
    assert not breaker.record_success()


async def test_a_key_in_a_remote_servers_url_is_never_shown_in_status_or_logs(tmp_path: Path) -> None:
    """Hosted MCP servers often take their API key in the URL (`?api_key=`, `user:key@`): status,
    server_logs and the dashboard show the address with the key hidden."""
    port = free_port()
    remote = {"name": "far", "url": f"http://agent:pa55word@127.0.0.1:{port}/mcp?api_key=SEKRET123&profile=p"}
    async with http_server(port), connected(tmp_path, [remote], **FAST) as up:
        await running(up.sup, "far")
        shown = (await up.session.call_tool("server_status", {"name": "far"})).structured_content
        logs = (await up.session.call_tool("server_logs", {"name": "far"})).content[0].text
    text = repr(shown) + logs
    assert "SEKRET123" not in text and "pa55word" not in text, text
    assert f"127.0.0.1:{port}/mcp?api_key=" in text
