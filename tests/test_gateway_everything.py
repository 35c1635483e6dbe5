"""The gateway against `@modelcontextprotocol/server-everything` from npm: progress, logging,
elicitation and sampling relayed through the supervisor, and the tools that server registers
only once it sees the supervisor's client capabilities.

Installed once into the pytest cache with `npm install --prefix`; skipped, with the reason,
where Node or npm is missing or the install fails.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from metasup_mcp.config import load_config
from metasup_mcp.mcp_server import SupervisorSurface
from metasup_mcp.supervisor import Supervisor
from tests.test_gateway_support import START, connected, running, write_config

pytestmark = pytest.mark.anyio

PACKAGE = "@modelcontextprotocol/server-everything@2026.8.31"
ENTRY = Path("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
TOOLS_CHANGED = "notifications/tools/list_changed"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def everything(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A servers.yaml entry for server-everything over stdio (installed on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("server-everything needs node and npm on PATH")
    cache = getattr(request.config, "cache", None)
    prefix = Path(cache.mkdir("server-everything")) if cache else tmp_path_factory.mktemp("server-everything")
    if not (prefix / ENTRY).exists():
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
                capture_output=True, text=True, timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install {PACKAGE} took over 300 s")
        if done.returncode != 0 or not (prefix / ENTRY).exists():
            pytest.skip(f"npm install {PACKAGE} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return {"name": "everything", "command": node, "args": [str(prefix / ENTRY), "stdio"]}


async def sampled(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    asked = params.messages[0].content.text  # type: ignore[union-attr]
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=f"sampled: {asked}"), model="test-model"
    )


async def elicited(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    assert "Please provide inputs" in params.message
    return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})


CLIENT = {"sampling_callback": sampled, "elicitation_callback": elicited}


async def test_progress_logging_and_capability_gated_tools_reach_the_client(
    tmp_path: Path, everything: dict[str, Any]
) -> None:
    async with connected(tmp_path, [everything], client=CLIENT) as up:
        await running(up.sup, "everything")
        # Registered by the child only after it saw the supervisor advertise sampling and
        # elicitation, announced with list_changed, re-listed, and announced upstream.
        names = await up.until_tools(lambda n: {"everything__trigger-elicitation-request",
                                                "everything__trigger-sampling-request"} <= n)
        assert {"everything__echo", "everything__get-sum", "everything__trigger-long-running-operation"} <= names
        assert up.count(TOOLS_CHANGED) >= 1

        steps: list[tuple[float, float | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            steps.append((progress, total))

        done = await up.session.call_tool(
            "everything__trigger-long-running-operation", {"duration": 0.4, "steps": 4}, progress_callback=on_progress
        )
        assert "completed" in done.content[0].text
        assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]

        await up.session.call_tool("everything__toggle-simulated-logging", {})
        with anyio.fail_after(10):
            while not up.logs:
                await anyio.sleep(0.05)
        assert up.logs[0].logger is not None and up.logs[0].logger.startswith("everything")
        await up.session.call_tool("everything__toggle-simulated-logging", {})

        resources = [r for r in (await up.session.list_resources()).resources if r.uri.startswith("metasup://ns/")]
        assert resources and all(r.uri.startswith("metasup://ns/everything/") for r in resources)
        read = await up.session.read_resource(resources[0].uri)
        assert read.contents[0].uri == resources[0].uri
        prompts = {p.name for p in (await up.session.list_prompts()).prompts}
        assert "everything__simple-prompt" in prompts


async def test_elicitation_and_sampling_from_the_child_are_answered_by_the_client(
    tmp_path: Path, everything: dict[str, Any]
) -> None:
    async with connected(tmp_path, [everything], client=CLIENT) as up:
        await up.until_tools(lambda n: "everything__trigger-sampling-request" in n)
        answer = await up.session.call_tool("everything__trigger-elicitation-request", {})
        text = "\n".join(block.text for block in answer.content)  # type: ignore[union-attr]
        assert not answer.is_error and "Name: Ada Lovelace" in text and "Agreed to terms: true" in text
        sample = await up.session.call_tool("everything__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
        assert not sample.is_error and "sampled: " in sample.content[0].text and "test-model" in sample.content[0].text


async def test_a_modern_era_client_gets_a_clear_error_instead_of_an_elicitation(
    tmp_path: Path, everything: dict[str, Any]
) -> None:
    sup = Supervisor(load_config(write_config(tmp_path, [everything])))
    async with sup.running():
        surface = SupervisorSurface(sup)
        async with Client(surface.build(), cache=None) as client:  # 2026-07-28, in process
            assert client.protocol_version == "2026-07-28"
            tool = "everything__trigger-elicitation-request"
            with anyio.fail_after(START):
                while tool not in {t.name for t in (await client.list_tools()).tools}:
                    await anyio.sleep(0.05)
            answer = await client.call_tool("everything__trigger-elicitation-request", {})
            text = "\n".join(getattr(block, "text", "") for block in answer.content)
            assert answer.is_error and "2026-07-28" in text and "initialize handshake" in text
