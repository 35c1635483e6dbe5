"""Helpers for the safety-loop tests: a workspace whose one server (`app`) serves `VERSION`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from metasup_mcp.children.state import ChildState
from metasup_mcp.supervisor import Supervisor
from tests.conftest import ROOT

SERVER_SOURCE = (ROOT / "tests" / "fixtures" / "versioned.py").read_text()


def workspace_template(tmp_path: Path) -> Path:
    template = tmp_path / "template"
    (template / "config").mkdir(parents=True)
    (template / "server.py").write_text(SERVER_SOURCE)
    (template / "config" / "safety_rules.yaml").write_text("[]\n")
    return template


def app_config(make_config: Any, tmp_path: Path, extra_servers: Sequence[dict[str, Any]] = (), **overrides: Any) -> Path:
    server = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py"]}
    template = str(workspace_template(tmp_path))
    return make_config(tmp_path, [server, *extra_servers], workspace_template=template, **overrides)


def with_version(version: str, extra: str = "") -> str:
    return SERVER_SOURCE.replace('VERSION = "1"', f'VERSION = "{version}"\n{extra}')


async def served_version(sup: Supervisor) -> str:
    child = sup.child("app")
    assert await child.wait_for(lambda c: c.state is ChildState.RUNNING and c.connection is not None, 15)
    assert child.connection is not None
    result = await child.connection.session.call_tool("version", {})
    return result.content[0].text  # type: ignore[union-attr]


def git(workspace: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, check=check).stdout.strip()


