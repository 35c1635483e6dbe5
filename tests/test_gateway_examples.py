"""The gateway against real SDK servers — the notes and textkit examples and `mcp-server-time`
from PyPI — in memory, and once end to end over stdio through `metasup-mcp serve`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from tests.test_gateway_support import START, connected, example, fixture, running, write_config

pytestmark = pytest.mark.anyio

TIME = {"name": "time", "command": "python", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_sdk_servers_tools_resources_templates_and_prompts_pass_through_namespaced(tmp_path: Path) -> None:
    notes = example("notes", env={"NOTES_FILE": str(tmp_path / "notes.json")})
    async with connected(tmp_path, [notes, example("textkit"), TIME]) as up:
        for name in ("notes", "textkit", "time"):
            await running(up.sup, name)
        await up.settled()
        listed = {t.name: t for t in (await up.session.list_tools()).tools}
        for server in ("notes", "textkit", "time"):
            for original in up.sup.child(server).tools:
                exposed = f"{server}__{original.name}"
                assert listed[exposed] == original.model_copy(update={"name": exposed})
        assert listed["time__get_current_time"].annotations.read_only_hint is True
        assert listed["time__get_current_time"].output_schema is not None

        resources = (await up.session.list_resources()).resources
        templates = (await up.session.list_resource_templates()).resource_templates
        prompts = {p.name for p in (await up.session.list_prompts()).prompts}
        children = "metasup://ns/"  # the supervisor's own resources are listed beside them
        assert [r.uri for r in resources if r.uri.startswith(children)] == ["metasup://ns/notes/notes://all"]
        assert [t.uri_template for t in templates if t.uri_template.startswith(children)] == [
            "metasup://ns/notes/notes://{id}"
        ]
        assert {"notes__summarize_notes", "textkit__rewrite"} <= prompts

        added = await up.session.call_tool("notes__add_note", {"title": "Gateway", "body": "routes", "tags": ["Ops"]})
        note_id = added.structured_content["id"]
        one = await up.session.read_resource(f"metasup://ns/notes/notes://{note_id}")
        assert one.contents[0].uri == f"metasup://ns/notes/notes://{note_id}"
        assert json.loads(one.contents[0].text)["title"] == "Gateway"
        everything = await up.session.read_resource("metasup://ns/notes/notes://all")
        assert [n["id"] for n in json.loads(everything.contents[0].text)] == [note_id]
        prompt = await up.session.get_prompt("notes__summarize_notes", {"tag": "ops"})
        assert "Gateway" in prompt.messages[0].content.text

        now = await up.session.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert now.structured_content["timezone"] == "UTC" and not now.is_error
        digest = await up.session.call_tool("textkit__hash_text", {"text": "abc", "algorithm": "md5"})
        assert "900150983cd24fb0d6963f7d28e17f72" in json.dumps(digest.structured_content)

        with pytest.raises(MCPError, match="unknown resource"):
            await up.session.read_resource("notes://all")
        with pytest.raises(MCPError, match="no server addresses its resources as 'nobody'"):
            await up.session.read_resource("metasup://ns/nobody/x://y")
        with pytest.raises(MCPError, match="unknown prompt"):
            await up.session.get_prompt("summarize_notes")


async def test_a_resource_read_while_its_server_is_stopped_fails_with_a_structured_error(tmp_path: Path) -> None:
    notes = example("notes", env={"NOTES_FILE": str(tmp_path / "notes.json")}, call_wait="0.2s")
    async with connected(tmp_path, [notes]) as up:
        await running(up.sup, "notes")
        await up.sup.stop_server("notes")
        with pytest.raises(MCPError) as raised:
            await up.session.read_resource("metasup://ns/notes/notes://all")
        assert "is stopped" in raised.value.error.message
        assert raised.value.error.data["server"] == "notes" and raised.value.error.data["retry"] is False


async def test_over_stdio_metasup_serve_routes_calls_and_announces_list_changes(tmp_path: Path) -> None:
    config = write_config(tmp_path, [fixture("fx"), example("notes", env={"NOTES_FILE": str(tmp_path / "n.json")})])
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "metasup_mcp.cli", "serve", "--config", str(config)], cwd=str(tmp_path)
    )
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    with open(tmp_path / "serve.stderr", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write, message_handler=on_message) as session:
                with anyio.fail_after(START):
                    init = await session.initialize()
                    assert init.capabilities.tools.list_changed and init.capabilities.resources.list_changed
                    while not {"fx__echo", "notes__add_note"} <= {t.name for t in (await session.list_tools()).tools}:
                        await changed.wait()
                        changed = anyio.Event()
                echoed = await session.call_tool("fx__echo", {"text": "over stdio"})
                assert echoed.content[0].text == "over stdio"
                resources = (await session.list_resources()).resources
                assert [r.uri for r in resources if r.uri.startswith("metasup://ns/")] == ["metasup://ns/notes/notes://all"]
                status = await session.call_tool("server_status", {"name": "fx"})
                pid = status.structured_content["servers"]["fx"]["pid"]
                assert status.structured_content["servers"]["fx"]["gateway"]["calls"] == 1
                changed = anyio.Event()
                await session.call_tool("stop_server", {"name": "fx"})
                with anyio.fail_after(5):
                    await changed.wait()
                assert not any(t.name.startswith("fx__") for t in (await session.list_tools()).tools)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
