"""`metasup-mcp serve --transport http`: the same MCP surface over streamable HTTP at /mcp,
stopped by SIGTERM with every child gone."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

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
