"""A supervisor SIGKILLed at any pipeline step: the next start leaves a consistent workspace,
a last good that serves, and the proposal's final state recorded."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from metasup_mcp.evolution.pipeline import FAULT_ENV
from metasup_mcp.safety.audit import verify_audit_log
from tests.safety_support import app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio

GOOD = [{"path": "server.py", "content": with_version("2")}]
BROKEN = [{"path": "server.py", "content": "raise SystemExit('broken at import')\n"}]

# step → (change proposed, verdict recorded after recovery, version served after recovery)
CASES: dict[str, tuple[list[dict[str, str]], str, str]] = {
    "begin": (GOOD, "rolled_back", "1"),
    "snapshot": (GOOD, "rolled_back", "1"),
    "written": (GOOD, "rolled_back", "1"),
    "committed": (GOOD, "rolled_back", "1"),
    "checked": (GOOD, "rolled_back", "1"),
    "restarting": (GOOD, "rolled_back", "1"),
    "accepted": (GOOD, "applied", "2"),
    "rolled_back": (BROKEN, "rolled_back", "1"),
}


async def propose_until_killed(config: Path, step: str, changes: list[dict[str, Any]]) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "metasup_mcp.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
        env={**os.environ, FAULT_ENV: step},
    )
    with anyio.fail_after(60):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            with pytest.raises(Exception):  # the supervisor dies mid-call: the connection closes
                result = await session.call_tool("propose_change", {"title": f"die at {step}", "changes": changes})
                raise AssertionError(f"the supervisor answered instead of dying at {step!r}: {result}")


@pytest.mark.parametrize("step", list(CASES))
async def test_a_supervisor_killed_at_a_pipeline_step_recovers_consistently(
    step, tmp_path, make_config, supervisor_factory
):
    changes, verdict, version = CASES[step]
    config = app_config(make_config, tmp_path)
    workspace = tmp_path / "workspace"
    await propose_until_killed(config, step, changes)

    async with supervisor_factory(config) as sup:
        assert git(workspace, "status", "--porcelain") == "", "the tree must be clean after recovery"
        block = sup.supervisor_block()
        assert block["current_commit"] == block["last_good_commit"]
        assert await served_version(sup) == version
        [proposal] = sup.list_changes()
        assert proposal["verdict"] == verdict, proposal
        if verdict == "rolled_back" and step != "rolled_back":
            assert proposal["trigger"] == "supervisor_restart"
    assert verify_audit_log(tmp_path / "state" / "audit.jsonl").ok
