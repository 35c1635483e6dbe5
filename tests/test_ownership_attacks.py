"""Attacks on the ownership model by a hostile child and by odd user repositories (docs/safety-model.md)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.supervisor import Supervisor
from tests.ownership_support import APP, config_for, every_committed_path, user_git, user_repo
from tests.safety_support import with_version, served_version

pytestmark = pytest.mark.anyio

PY_APP = {**APP, "watch": ["*.py"]}


async def propose(sup: Supervisor, title: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
    return (await sup.propose_change(ChangeRequest(title=title, changes=changes))).result()


async def settled(sup: Supervisor) -> None:
    with anyio.fail_after(15):
        while sup.changes.guard is not None and sup.changes.guard.trial is not None:
            await anyio.sleep(0.05)


async def test_an_on_disk_edit_deleting_gitignore_commits_no_file_it_ignored(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [PY_APP])) as sup:
        assert await served_version(sup) == "1"
        (repo / ".gitignore").unlink()  # a child un-ignores everything, then edits its code
        (repo / "server.py").write_text(with_version("2"))
        await sup.restart_server("app")
        assert await served_version(sup) == "2"
        await settled(sup)
    assert "venv/site.py" not in every_committed_path(repo)
    assert (repo / "venv" / "site.py").read_text() == "# a virtualenv\n"
