"""The safety loop through the MCP surface: a real client session calls the change tools."""

from __future__ import annotations

import pytest

from tests.safety_support import with_version, workspace_template
from tests.test_gateway_support import connected, running, structured_error

pytestmark = pytest.mark.anyio

APP = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py"]}


async def test_propose_change_over_mcp_reports_its_stages_as_progress_and_is_listed(tmp_path):
    template = str(workspace_template(tmp_path))
    async with connected(tmp_path, [APP], workspace_template=template, min_runtime="1s") as up:
        await running(up.sup, "app")
        stages: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            stages.append(message or "")

        result = await up.session.call_tool(
            "propose_change",
            {"title": "v2", "steps": ["bump VERSION"], "changes": [{"path": "server.py", "content": with_version("2")}]},
            progress_callback=on_progress,
        )
        applied = result.structured_content
        assert not result.is_error and applied is not None and applied["verdict"] == "applied", result
        assert applied["id"] in result.content[0].text  # type: ignore[union-attr]
        assert "running checks" in stages and any(s.startswith("restarting app") for s in stages), stages

        listed = (await up.session.call_tool("list_changes", {"limit": 5})).structured_content
        assert listed is not None and listed["changes"][0]["id"] == applied["id"]
        one = (await up.session.call_tool("get_change", {"id": applied["id"]})).structured_content
        assert one is not None and one["steps"] == ["bump VERSION"]
        assert [s["stage"] for s in one["stages"]] == ["queued", "validating", "approving", "applying", "verifying", "applied"]
        evolution = (await up.session.call_tool("evolution_status", {})).structured_content
        assert evolution is not None and evolution["applied"] == 1 and evolution["success_rate"] == 1.0


async def test_change_tools_answer_misuse_with_errors_a_person_can_act_on(tmp_path):
    template = str(workspace_template(tmp_path))
    async with connected(tmp_path, [APP], workspace_template=template) as up:
        missing = structured_error(await up.session.call_tool("propose_change", {"title": "no edit"}))
        assert "changes" in missing["error"]
        unknown = structured_error(await up.session.call_tool("get_change", {"id": "p-nope"}))
        assert "no change with id 'p-nope'" in unknown["error"]
        never = structured_error(await up.session.call_tool("rollback", {"target": "not-a-commit"}))
        assert "not a commit" in never["error"]
        hostile = await up.session.call_tool(
            "propose_change", {"title": "escape", "changes": [{"file": "/etc/passwd", "content": "x"}]}
        )
        refused = hostile.structured_content
        assert not hostile.is_error and refused is not None and refused["verdict"] == "rejected"
        assert refused["reasons"][0].startswith("absolute_path: /etc/passwd")
