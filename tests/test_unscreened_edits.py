"""A user's repository as they work in it: uncommitted edits in code a server runs, and their own
commits past last good. A proposal is never verified on top of code nobody screened (it is
refused before anything is approved or committed, naming what to do), and an on-disk candidate
is judged by every running server whose code it changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metasup_mcp.evolution.pipeline import ChangeRequest
from tests.conftest import eventually
from tests.ownership_support import user_git
from tests.safety_support import served_version, with_version, workspace_template

pytestmark = pytest.mark.anyio

MINE = with_version("mine")  # the user's work in progress


def two_servers(make_config: Any, tmp_path: Path, **overrides: Any) -> Path:
    """`app` runs server.py and imports nothing, but watches lib.py too; `other` runs other.py."""
    template = workspace_template(tmp_path)
    (template / "lib.py").write_text("X = 1\n")
    (template / "other.py").write_text(with_version("1"))
    servers = [
        {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py", "lib.py"]},
        {"name": "other", "command": "python", "args": ["-u", "other.py"], "watch": ["other.py"]},
    ]
    return make_config(tmp_path, servers, workspace_template=str(template), **overrides)


async def serving(sup: Any) -> None:
    """Both servers up on last good: an edit made now is the user's, not part of a first start."""
    for name in ("app", "other"):
        assert await sup.child(name).wait_for(lambda c: c.connection is not None, 15)


def audited(sup: Any, event: str, **match: Any) -> list[dict]:
    return [e for e in sup.audit_tail(200) if e["event"] == event and all(e["data"].get(k) == v for k, v in match.items())]


async def version_of(sup: Any, name: str) -> str:
    child = sup.child(name)
    assert await child.wait_for(lambda c: c.connection is not None, 15)
    return (await child.connection.session.call_tool("version", {})).content[0].text


async def test_a_proposal_to_a_server_running_unscreened_edits_is_refused_before_anything_is_approved_or_committed(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await serving(sup)
        workspace = sup.settings.workspace
        initial = sup.supervisor_block()["last_good_commit"]
        (workspace / "server.py").write_text(MINE)
        generation = sup.child("app").generation
        result = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        assert result.verdict == "rejected" and result.trigger is None, (result.verdict, result.trigger, result.reasons)
        [reason] = result.reasons
        assert reason.startswith("unscreened_edits:") and "app" in reason and "server.py" in reason, reason
        assert "restart_server app" in reason and "propose" in reason, reason
        assert result.commit is None and not audited(sup, "decision") and not audited(sup, "rollback")
        assert git_head(workspace) == initial == sup.supervisor_block()["last_good_commit"]
        assert (workspace / "server.py").read_text() == MINE and (workspace / "lib.py").read_text() == "X = 1\n"
        assert sup.child("app").generation == generation, "restarted for a proposal that was refused"
        # What the reason says to do works: the edits go on trial, are judged, and the proposal passes.
        await sup.restart_server("app")
        await eventually(lambda: sup.supervisor_block()["probation"], timeout=10)  # the candidate is last good
        again = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        assert again.verdict == "applied", again.reasons
        assert await served_version(sup) == "mine"


async def test_unscreened_edits_of_one_server_do_not_hold_up_a_proposal_no_running_server_of_theirs_restarts_for(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await serving(sup)
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(MINE)
        result = await sup.propose_change(ChangeRequest("other v2", changes=[{"path": "other.py", "content": with_version("2")}]))
        assert result.verdict == "applied" and result.restarted == ["other"], result.reasons
        notes = await sup.propose_change(ChangeRequest("notes", changes=[{"path": "NOTES.md", "content": "hi\n"}]))
        assert notes.verdict == "applied" and notes.restarted == [], notes.reasons
        assert (workspace / "server.py").read_text() == MINE, "the user's work in progress was touched"
        assert "mine" not in user_git(workspace, "show", "HEAD:server.py")
        assert await version_of(sup, "other") == "2"


async def test_a_stopped_servers_unscreened_edits_do_not_refuse_a_proposal_to_its_code(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await serving(sup)
        workspace = sup.settings.workspace
        await sup.stop_server("app")
        (workspace / "server.py").write_text(MINE)
        result = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        assert result.verdict == "applied" and result.restarted == [], result.reasons
        assert (workspace / "server.py").read_text() == MINE
        assert "mine" not in user_git(workspace, "show", "HEAD:server.py"), "unscreened edits were committed"


async def test_edits_made_while_a_proposal_waits_for_approval_refuse_it_when_it_is_approved(
    tmp_path, make_config, supervisor_factory
):
    config = two_servers(make_config, tmp_path, approval={"mode": "human", "timeout": "60s"})
    async with supervisor_factory(config) as sup:
        await serving(sup)
        workspace = sup.settings.workspace
        initial = sup.supervisor_block()["last_good_commit"]
        held = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        assert held.status == "pending_approval", held.reasons
        (workspace / "server.py").write_text(MINE)
        result = await sup.changes.pipeline.decide_pending(sup.get_change(held.id), True, "operator (test)")
        assert result.verdict == "rejected" and result.reasons[-1].startswith("unscreened_edits:"), result.reasons
        assert git_head(workspace) == initial and (workspace / "server.py").read_text() == MINE


async def test_a_users_commit_touching_two_servers_code_puts_both_on_the_trial(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await serving(sup)
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(with_version("2"))
        (workspace / "other.py").write_text(with_version("2"))
        user_git(workspace, "commit", "-qam", "both servers at v2")
        mine = git_head(workspace)
        other_before = sup.child("other").generation
        await sup.restart_server("app")
        await eventually(lambda: sup.supervisor_block()["probation"], timeout=15)  # accepted, on probation
        assert sup.supervisor_block()["last_good_commit"] == mine
        assert sup.child("other").generation > other_before, "other never ran the code that became last good"
        assert await version_of(sup, "other") == "2" and await served_version(sup) == "2"
        assert sup.supervisor_block()["probation"]["servers"] == ["app", "other"]


async def test_a_users_commit_that_breaks_another_servers_code_never_becomes_last_good(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await serving(sup)
        workspace = sup.settings.workspace
        initial = sup.supervisor_block()["last_good_commit"]
        (workspace / "server.py").write_text(with_version("2"))
        (workspace / "other.py").write_text("raise SystemExit('broken at import')\n")
        user_git(workspace, "commit", "-qam", "v2, and other broken")
        mine = git_head(workspace)
        await sup.restart_server("app")
        await eventually(lambda: audited(sup, "rollback", source="on-disk"), timeout=15)
        [rollback] = audited(sup, "rollback", source="on-disk")[:1]
        assert rollback["data"]["bad_commit"] == mine and rollback["data"]["trigger"] == "early_exit"
        assert "other" in rollback["data"]["evidence"]
        assert not audited(sup, "candidate_accepted", commit=mine)
        assert sup.supervisor_block()["last_good_commit"] != mine
        assert user_git(workspace, "cat-file", "-t", mine) == "commit"  # the user's commit is not lost


def git_head(workspace: Path) -> str:
    return user_git(workspace, "rev-parse", "HEAD")



async def test_a_proposal_arriving_as_a_server_starts_on_the_users_edits_leaves_their_trial_to_its_verdict(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(MINE)  # as app first starts: its trial begins while the change waits
        result = await sup.propose_change(ChangeRequest("other v2", changes=[{"path": "other.py", "content": with_version("2")}]))
        assert result.verdict == "applied", result.reasons
        assert not audited(sup, "rollback", source="on-disk"), "the user's edits were withdrawn from disk unjudged"
        assert audited(sup, "candidate_accepted") and (workspace / "server.py").read_text() == MINE
        assert "mine" in user_git(workspace, "show", f"{sup.supervisor_block()['last_good_commit']}:server.py")


async def test_a_users_commit_to_another_running_servers_code_refuses_a_change_that_would_carry_it_into_last_good(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await serving(sup)
        workspace = sup.settings.workspace
        initial = sup.supervisor_block()["last_good_commit"]
        (workspace / "other.py").write_text("raise SystemExit('broken at import')\n")
        user_git(workspace, "commit", "-qam", "other, not run yet")
        result = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        assert result.verdict == "rejected", (result.verdict, result.reasons)
        assert "other: other.py" in result.reasons[0] and "restart_server other" in result.reasons[0], result.reasons
        assert sup.supervisor_block()["last_good_commit"] == initial
        assert git_head(workspace) != initial and "broken" in (workspace / "other.py").read_text()  # theirs, untouched
