"""Nothing a user has is ever lost: the safety loop on a user's own repository (docs/safety-model.md).

Each test is one small input of a kind of loss, on a real git repository with real children.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.supervisor import Supervisor
from tests.conftest import EXAMPLES
from tests.ownership_support import APP, config_for, every_committed_path, user_git, user_repo
from tests.safety_support import SERVER_SOURCE, served_version, with_version

pytestmark = pytest.mark.anyio


async def propose(sup: Supervisor, title: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
    return (await sup.propose_change(ChangeRequest(title=title, changes=changes))).result()


async def test_a_config_inside_the_workspace_is_never_deleted_reverted_or_committed(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    config = make_config(repo, [APP], workspace=".", state_dir=str(tmp_path / "state"))  # repo/servers.yaml, untracked
    original = config.read_text()
    async with supervisor_factory(config) as sup:
        assert (await propose(sup, "v2", [{"path": "server.py", "content": with_version("2")}]))["verdict"] == "applied"
        config.write_text(original + "# an operator's edit, not yet running\n")
        assert sup.changes.guard is not None
        async with sup.changes.guard.lock:
            await sup.changes.guard._revert_protected()  # the poll, now
        assert config.read_text().endswith("not yet running\n")
        assert sup.supervisor_block()["config"]["changed_on_disk"] is True
        assert sup.supervisor_block()["config"]["inside_workspace"] is True
    config.write_text(original + "# edited while the supervisor was stopped\n")
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "2"
        assert config.read_text().endswith("while the supervisor was stopped\n")
        assert sup.supervisor_block()["config"]["changed_on_disk"] is False
    assert "servers.yaml" not in every_committed_path(repo)
    assert user_git(repo, "diff", "--cached", "--name-only") == "", "nothing left staged"


async def test_an_untracked_file_is_never_committed_nor_removed_when_an_unrelated_server_fails(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    ghost = {"name": "ghost", "command": "metasup-test-no-such-command"}  # no watch: it watches everything
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP, ghost])) as sup:
        assert await served_version(sup) == "1"
        await sup.child("ghost").wait_for(lambda c: c.state in (ChildState.FATAL, ChildState.BACKOFF), 15)
        (repo / "README.md").write_text("# my project\n\nan edit in progress\n")
        await sup.restart_server("ghost")
    assert (repo / "TODO.txt").read_text() == "my untracked list\n"
    assert (repo / "README.md").read_text().endswith("an edit in progress\n")
    assert "TODO.txt" not in every_committed_path(repo)


async def test_a_change_that_deletes_gitignore_commits_no_ignored_file(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        result = await propose(sup, "drop .gitignore", [{"path": ".gitignore", "delete": True},
                                                       {"path": "server.py", "content": with_version("2")}])
        assert result["verdict"] == "applied", result
    assert every_committed_path(repo) == {".gitignore", "README.md", "server.py"}
    assert (repo / ".env").read_text() == "SECRET=old\n" and (repo / "venv" / "site.py").exists()


async def test_a_rolled_back_change_restores_an_overwritten_ignored_file_and_a_deleted_one(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        result = await propose(sup, "breaks", [
            {"path": ".env", "content": "SECRET=overwritten\n"},
            {"path": "data/local.db", "delete": True},
            {"path": "server.py", "content": with_version("2", "raise SystemExit('broken at import')")},
        ])
        assert result["verdict"] == "rolled_back", result
        assert await served_version(sup) == "1"
    assert (repo / ".env").read_text() == "SECRET=old\n"
    assert (repo / "data" / "local.db").read_bytes() == b"\x00my precious rows"
    assert ".env" not in every_committed_path(repo) and "data/local.db" not in every_committed_path(repo)


async def test_the_users_edits_and_new_files_are_on_disk_after_a_rollback_and_survive_pruning(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    config = config_for(make_config, tmp_path, repo, [APP], rollback={"keep_commits": 1})
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "1"  # started: the edits below are not part of its first start
        (repo / "README.md").write_text("# my project\n\nhalf-written section\n")
        (repo / "notes-for-me.md").write_text("new, untracked\n")
        (repo / "server.py").write_text(SERVER_SOURCE + "# my own uncommitted comment\n")
        broken = await propose(sup, "break", [{"path": "server.py", "content": "raise SystemExit(3)\n"}])
        assert broken["verdict"] == "rolled_back"
        assert (repo / "README.md").read_text().endswith("half-written section\n")
        assert (repo / "notes-for-me.md").read_text() == "new, untracked\n"
        assert (repo / "server.py").read_text().endswith("# my own uncommitted comment\n"), "the overwritten edit is back"
        saved = sup.get_change(broken["id"]).snapshot_ref
        assert saved and saved.startswith("refs/metasup/saved/"), sup.get_change(broken["id"])
        for version in ("2", "3", "4"):  # keep_commits=1 prunes rejected and verified refs
            assert (await propose(sup, version, [{"path": "server.py", "content": with_version(version)}]))["verdict"] == "applied"
    assert user_git(repo, "show", f"{saved}:server.py").endswith("# my own uncommitted comment")


async def test_runtime_data_of_the_shipped_example_survives_a_change_and_a_rollback(tmp_path, make_config, supervisor_factory):
    servers = [{"name": n, "command": "python", "args": ["-u", f"{n}.py"], "watch": [f"{n}.py"]} for n in ("notes", "textkit")]
    config = make_config(tmp_path, servers, workspace_template=str(EXAMPLES), data_paths=["notes.json"])
    async with supervisor_factory(config) as sup:
        notes = sup.child("notes")
        assert await notes.wait_for(lambda c: c.state is ChildState.RUNNING and c.connection is not None, 20)
        assert notes.connection is not None
        await notes.connection.session.call_tool("add_note", {"title": "keep me", "body": "runtime data"})
        workspace = sup.settings.workspace
        textkit = (workspace / "textkit.py").read_text()
        applied = await propose(sup, "textkit comment", [{"path": "textkit.py", "content": textkit + "# better\n"}])
        assert applied["verdict"] == "applied", applied
        back = await sup.rollback("previous", reason="undo the textkit change")
        assert back["to"] != applied["commit"] and not back["noop"]
        assert "keep me" in (workspace / "notes.json").read_text()
        assert "notes.json" not in every_committed_path(workspace)


async def test_rollback_previous_follows_the_history_of_last_good_moves_and_a_noop_says_so(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        start = sup.supervisor_block()["last_good_commit"]
        a = await propose(sup, "A", [{"path": "server.py", "content": with_version("A")}])
        first = await sup.rollback("previous", reason="undo A")
        assert first["to"] == start
        b = await propose(sup, "B", [{"path": "server.py", "content": with_version("B")}])
        assert a["verdict"] == b["verdict"] == "applied"
        second = await sup.rollback("previous", reason="undo B")
        assert second["to"] == start, "previous is what came before B, not A (which was rolled back)"
        assert await served_version(sup) == "1"
        again = await sup.rollback("last_good", reason="already there")
        assert again["noop"] is True and "nothing to roll back" in again["message"]
        assert user_git(repo, "log", "-1", "--format=%an") == "Dana User", "the user's branch is back where it was"


async def test_evidence_carries_only_what_the_trials_own_incarnations_printed(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        first = await propose(sup, "one", [{"path": "server.py", "content": "import sys\nsys.exit('FIRST-FAILURE')\n"}])
        second = await propose(sup, "two", [{"path": "server.py", "content": "import sys\nsys.exit('SECOND-FAILURE')\n"}])
    assert first["verdict"] == second["verdict"] == "rolled_back"
    assert "FIRST-FAILURE" in " ".join(first["reasons"])
    assert "SECOND-FAILURE" in " ".join(second["reasons"]) and "FIRST-FAILURE" not in " ".join(second["reasons"])


@pytest.mark.parametrize("gate", ["approval_deny", "failing_check"])
async def test_an_on_disk_edit_plus_a_restart_goes_through_approval_and_checks(tmp_path, make_config, supervisor_factory, gate):
    repo = user_repo(tmp_path)
    overrides: dict[str, Any] = (
        {"approval": {"mode": "deny"}} if gate == "approval_deny"
        else {"checks": [{"name": "tests", "run": ["python", "-c", "raise SystemExit('1 failed')"], "timeout": "30s"}]}
    )
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP], **overrides)) as sup:
        good = sup.supervisor_block()["last_good_commit"]
        (repo / "server.py").write_text(with_version("written by a child"))
        await sup.restart_server("app")
        assert await served_version(sup) == "1"
        with anyio.fail_after(5):
            while sup.changes.guard is not None and sup.changes.guard.trial is not None:
                await anyio.sleep(0.05)
        block = sup.supervisor_block()
        assert block["last_good_commit"] == good and block["current_commit"] == good
        refusal = [e for e in sup.events if e["event"] == "rollback" and e.get("source") == "on-disk"][-1]
        assert refusal["trigger"] == ("approval:deny" if gate == "approval_deny" else "check:tests")
        assert "written by a child" in user_git(repo, "show", f"{refusal['saved_ref']}:server.py")


async def test_a_change_unignoring_the_state_folder_cannot_reach_it(tmp_path, make_config, supervisor_factory, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    repo = user_repo(tmp_path)
    config = make_config(repo, [APP], workspace=".", state_dir=None)  # the default: outside the workspace
    async with supervisor_factory(config) as sup:
        state = sup.settings.state_dir
        assert state is not None and repo not in state.parents
        hostile = await propose(sup, "unignore the state", [{"path": ".gitignore", "content": "!/.metasup/\n!*\n"},
                                                              {"path": "server.py", "content": with_version("2")}])
        assert hostile["verdict"] == "applied"
        after = await propose(sup, "next", [{"path": "server.py", "content": with_version("3")}])
        assert after["verdict"] == "applied", "the state folder (journal, proposals) still works"
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "3"
    assert (state / "audit.jsonl").exists() and (state / "proposals").is_dir()
    assert not any(p.startswith((".metasup", "state")) for p in every_committed_path(repo))


async def test_a_users_untracked_server_file_is_not_blamed_for_a_server_that_does_not_watch_it(
    tmp_path, make_config, supervisor_factory
):
    """First start on a user's repo: their new, uncommitted tool.py goes on trial with the server
    that runs it. Another server that is broken on its own (and watches no untracked file) must not
    join that trial: its crash would roll tool.py back, off the disk, on the user's first run."""
    repo = user_repo(tmp_path)
    (repo / "tool.py").write_text(SERVER_SOURCE)  # untracked
    tool = {"name": "tool", "command": "python", "args": ["-u", "tool.py"], "watch": ["tool.py"]}
    broken = {"name": "broken", "command": "python", "args": ["-c", "raise SystemExit(3)"]}  # watches everything
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [tool, broken], min_runtime="1s")) as sup:
        assert await sup.child("tool").wait_for(lambda c: c.state is ChildState.RUNNING, 15)
        await sup.child("broken").wait_for(lambda c: c.generation >= 2 or c.state is ChildState.FATAL, 15)
        with anyio.fail_after(15):
            while sup.changes.guard is not None and sup.changes.guard.trial is not None:
                await anyio.sleep(0.1)
        rollbacks = [e for e in sup.audit_tail(50) if e["event"] == "rollback"]
    assert rollbacks == [], rollbacks
    assert (repo / "tool.py").read_text() == SERVER_SOURCE
