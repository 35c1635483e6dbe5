"""The supervisor's own resources and prompts, through a real MCP client session."""

from __future__ import annotations

import json

import pytest
from mcp.shared.exceptions import MCPError

from metasup_mcp.supervisor import ChangeRequest
from tests.test_gateway_support import connected, example, fixture, running

pytestmark = pytest.mark.anyio


async def test_status_logs_changes_and_audit_are_resources_beside_the_childrens(tmp_path):
    async with connected(tmp_path, [fixture("fx", "--stderr-lines", "3"), example("notes")]) as up:
        await running(up.sup, "fx")
        await running(up.sup, "notes")
        listed = {str(r.uri) for r in (await up.session.list_resources()).resources}
        assert {"metasup://status", "metasup://audit", "metasup://ns/notes/notes://all"} <= listed
        templates = {t.uri_template for t in (await up.session.list_resource_templates()).resource_templates}
        assert {"metasup://servers/{name}/log", "metasup://changes/{id}", "metasup://ns/notes/notes://{id}"} <= templates

        status = json.loads((await up.session.read_resource("metasup://status")).contents[0].text)  # type: ignore[union-attr]
        assert status["servers"]["fx"]["state"] == "running"
        log = (await up.session.read_resource("metasup://servers/fx/log")).contents[0].text  # type: ignore[union-attr]
        assert "stderr line 2" in log
        audit = json.loads((await up.session.read_resource("metasup://audit")).contents[0].text)  # type: ignore[union-attr]
        assert audit["entries"][0]["event"] == "start"
        with pytest.raises(MCPError, match="no server named 'nope'; known servers: fx, notes"):
            await up.session.read_resource("metasup://servers/nope/log")
        with pytest.raises(MCPError, match="no change with id 'p-x'"):
            await up.session.read_resource("metasup://changes/p-x")


async def test_the_three_stage_prompts_lead_to_propose_change(tmp_path):
    async with connected(tmp_path, [example("textkit")]) as up:
        await running(up.sup, "textkit")
        names = {p.name for p in (await up.session.list_prompts()).prompts}
        assert {"propose", "expand", "edit", "textkit__rewrite"} <= names
        stage1 = await up.session.get_prompt("propose", {"goal": "count sentences too"})
        assert "count sentences too" in stage1.messages[0].content.text  # type: ignore[union-attr]
        stage3 = await up.session.get_prompt("edit", {"proposal": "add sentence_count", "steps": "1. add the tool"})
        text = stage3.messages[0].content.text  # type: ignore[union-attr]
        assert "propose_change" in text and "Give whole files" in text
        stage2 = await up.session.get_prompt("expand", {"proposal": "add sentence_count"})
        assert "servers.yaml" in stage2.messages[0].content.text  # type: ignore[union-attr]  # protected paths named
        with pytest.raises(MCPError, match="needs the argument"):
            await up.session.get_prompt("expand", {})


async def test_the_prompts_carry_the_strategy_its_limits_the_protected_paths_and_the_files(tmp_path):
    async with connected(tmp_path, [example("textkit")], strategy={"limits": {"hybrid": {"max_files": 3}}}) as up:
        (tmp_path / "workspace" / "tool.py").write_text("X = 1\n")
        await up.sup.propose_change(ChangeRequest("add tool.py", changes=[{"path": "tool.py", "content": "X = 2\n"}]))
        edit = await up.session.get_prompt("edit", {"proposal": "p", "steps": "1. s"})
        text = edit.messages[0].content.text  # type: ignore[union-attr]
        assert "Current strategy: hybrid" in text and "at most 3 files" in text
        assert "servers.yaml" in text and "\n  tool.py" in text
        assert '"verify": [' in text and '"delete": true' in text
        propose = await up.session.get_prompt("propose", {"goal": "g"})
        assert "Workspace files:" in propose.messages[0].content.text  # type: ignore[union-attr]
