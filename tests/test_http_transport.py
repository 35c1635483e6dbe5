"""`metasup-mcp serve --transport http`: the same MCP surface over streamable HTTP at /mcp,
stopped by SIGTERM with every child gone."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import anyio
import httpx2
import psutil
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import fixture_server

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_the_supervisor_serves_streamable_http_and_ends_on_sigterm_without_a_traceback(tmp_path, make_config):
    config = make_config(tmp_path, [fixture_server("fx")])
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "metasup_mcp.cli", "serve", "--config", str(config),
         "--transport", "http", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        children: list[psutil.Process] = []
        with anyio.fail_after(30):
            while True:
                try:
                    async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write):
                        async with ClientSession(read, write) as session:
                            await session.initialize()
                            names = {tool.name for tool in (await session.list_tools()).tools}
                            status = await session.call_tool("server_status", {"name": "fx"})
                    break
                except Exception:  # not listening yet
                    await anyio.sleep(0.2)
                    if process.poll() is not None:
                        raise AssertionError(process.stderr.read().decode()) from None
        assert {"server_status", "propose_change", "rollback"} <= names
        assert status.structured_content is not None
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "the fixture child should be running under the supervisor"
        # DNS rebinding: a request naming another host is refused before it reaches MCP.
        async with httpx2.AsyncClient(timeout=5) as client:
            rebound = await client.post(
                f"http://127.0.0.1:{port}/mcp", headers={"Host": f"evil.example:{port}", "Content-Type": "application/json"},
                content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            )
        assert rebound.status_code in (400, 403, 421), rebound.status_code

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert process.stdout is not None and process.stdout.read() == b"", "nothing may reach stdout"
        stderr = process.stderr.read().decode()
        assert "Traceback" not in stderr and "CancelledError" not in stderr, stderr
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left behind: {alive}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _post(url: str, body: dict, headers: dict[str, str]) -> int:
    """The status of a JSON POST (any HTTP status; a connection error raises OSError)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("host", ["127.0.0.2", "127.0.0.1"])
async def test_a_dns_rebinding_host_header_is_refused_on_any_loopback_address(tmp_path, make_config, host):
    """A web page that re-points its own name at the supervisor's address is not served: the
    Host header must be the address bound (or localhost), whichever loopback address that is."""
    config = make_config(tmp_path, [])
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "metasup_mcp.cli", "serve", "--config", str(config),
         "--transport", "http", "--host", host, "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    url = f"http://{host}:{port}/mcp"
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "page", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    try:
        with anyio.fail_after(30):
            while True:
                try:
                    own = await anyio.to_thread.run_sync(_post, url, initialize, accept)
                    break
                except OSError:
                    await anyio.sleep(0.2)
                    if process.poll() is not None:
                        raise AssertionError(process.stderr.read().decode()) from None
        rebound = await anyio.to_thread.run_sync(_post, url, initialize, {**accept, "Host": f"attacker.example:{port}"})
        foreign = await anyio.to_thread.run_sync(_post, url, initialize, {**accept, "Origin": "http://attacker.example"})
        assert own == 200
        assert rebound in (403, 421) and foreign == 403, (rebound, foreign)
    finally:
        process.terminate()
        process.wait(timeout=20)
