"""Attacks on the restart fast path, rollback restore and the unscreened-edits refusal, as a
hostile child (same user: any file it reaches, links, fifos, git itself) and as a new user on
their own repository would make them. A case marked xfail is a hole still open: the reason
names it; the test passes once it is closed (and then the mark must go)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.evolution.recovery import undo_change
from metasup_mcp.safety.rules import FileChange
from metasup_mcp.safety.workspace import Workspace
from tests.conftest import eventually
from tests.ownership_support import APP, config_for, user_git, user_repo
from tests.safety_support import SERVER_SOURCE, app_config, git, served_version, with_version
from tests.test_restart_glance import hide_from_git

pytestmark = pytest.mark.anyio


def subprocess_ok(repo: Path, *args: str) -> bool:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True).returncode == 0


def audited(sup, event: str) -> list[dict]:
    return [e for e in sup.audit_tail(200) if e["event"] == event]


async def settled(sup, name: str = "app") -> None:
    """Up on last good, past its first start: an edit made now is not part of that start."""
    child = sup.child(name)
    await eventually(lambda: child.state is ChildState.RUNNING and child.connection is not None, timeout=15)


async def crash_and_restart(sup, name: str = "app", timeout: float = 10) -> None:
    """Kill the child as a crash would: the supervisor restarts it on its own (the guard's road)."""
    child = sup.child(name)
    old = child.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: child.pid not in (None, old) and child.connection is not None, timeout=timeout)


def _template(tmp_path: Path) -> Path:
    """The safety tests' workspace template, with a `lib.py` that `app` watches but never imports."""
    template = tmp_path / "template"
    (template / "config").mkdir(parents=True, exist_ok=True)
    (template / "server.py").write_text(SERVER_SOURCE)
    (template / "lib.py").write_text("X = 1\n")
    (template / "config" / "safety_rules.yaml").write_text("[]\n")
    return template


# --- 1. the restart fast path and the content check ----------------------------------------


async def test_a_new_watched_file_hidden_by_an_info_exclude_rule_written_on_disk_is_screened(
    tmp_path, make_config, supervisor_factory
):
    repo = user_repo(tmp_path)
    app = {**APP, "watch": ["*.py"]}
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [app])) as sup:
        await settled(sup)
        with (repo / ".git" / "info" / "exclude").open("a") as rules:
            rules.write("evil.py\n")  # not a worktree file: no `.gitignore` in the glance to notice
        (repo / "evil.py").write_text("import os  # loaded by a plugin scan\n")
        await crash_and_restart(sup)
        assert [c["data"]["paths"] for c in audited(sup, "candidate")] == [["evil.py"]]


async def test_a_new_watched_file_hidden_by_a_new_gitignore_that_ignores_itself_is_screened(
    tmp_path, make_config, supervisor_factory
):
    repo = user_repo(tmp_path)
    app = {**APP, "watch": ["*.py"]}
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [app])) as sup:
        await settled(sup)
        (repo / "plugins").mkdir()
        (repo / "plugins" / ".gitignore").write_text("*\n")  # hides itself too: no ignore file in the glance
        (repo / "plugins" / "evil.py").write_text("import os  # loaded by a plugin scan\n")
        await crash_and_restart(sup)
        assert [c["data"]["paths"] for c in audited(sup, "candidate")] == [["plugins/evil.py"]]


async def test_a_new_watched_file_hidden_by_the_users_global_git_ignore_is_screened(
    tmp_path, make_config, supervisor_factory, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    repo = user_repo(tmp_path)
    app = {**APP, "watch": ["*.py"]}
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [app])) as sup:
        await settled(sup)
        (home / ".config" / "git").mkdir(parents=True)
        (home / ".config" / "git" / "ignore").write_text("evil.py\n")  # outside the workspace, the user's
        (repo / "evil.py").write_text("import os  # loaded by a plugin scan\n")
        await crash_and_restart(sup)
        assert [c["data"]["paths"] for c in audited(sup, "candidate")] == [["evil.py"]]


async def test_a_new_watched_file_in_a_folder_made_a_nested_repository_is_screened(
    tmp_path, make_config, supervisor_factory
):
    repo = user_repo(tmp_path)
    app = {**APP, "watch": ["*.py"]}
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [app])) as sup:
        await settled(sup)
        user_git(repo, "init", "-q", "plugins")  # git status now lists `plugins/`, never what is in it
        (repo / "plugins" / "evil.py").write_text("import os  # loaded by a plugin scan\n")
        await crash_and_restart(sup)
        assert [c["data"]["paths"] for c in audited(sup, "candidate")] == [["plugins/evil.py"]]


async def test_an_edit_hidden_from_gits_stat_cache_refuses_a_proposal_that_would_restart_onto_it(
    tmp_path, make_config, supervisor_factory
):
    lib = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py", "lib.py"]}
    config = make_config(tmp_path, [lib], workspace_template=str(_template(tmp_path)))
    async with supervisor_factory(config) as sup:
        await settled(sup)
        workspace = sup.settings.workspace
        initial = sup.supervisor_block()["last_good_commit"]
        hide_from_git(workspace, "server.py", SERVER_SOURCE.replace('VERSION = "1"', 'VERSION = "H"'))
        result = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        assert result.verdict == "rejected" and result.reasons[0].startswith("unscreened_edits:"), (
            result.verdict, result.reasons, await served_version(sup), sup.supervisor_block()["last_good_commit"] != initial)


# --- 2. rollback restore ---------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path: Path, pinned_git: None) -> Workspace:
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / ".gitignore").write_text(".env\n")
    workspace = Workspace.open_or_init(root, [])
    (root / "pkg" / "mod.py").write_text("VALUE = 'mine'\n")  # the user's uncommitted edit
    return workspace


def _change_then(ws: Workspace, tamper) -> tuple[Path, list[str]]:
    """Save, apply and commit a change to pkg/mod.py and a new newdir/new.py; let `tamper` play the
    child while it runs; roll it back. Returns the outside file the child aimed at."""
    outside = ws.root.parent / "outside.txt"
    outside.write_text("precious\n")
    touched = ["pkg/mod.py", "newdir/new.py"]
    saved = ws.save(touched, "before p1")
    ws.apply([FileChange("pkg/mod.py", "BAD = 1\n"), FileChange("newdir/new.py", "BAD = 2\n")])
    bad = ws.commit_paths(touched, "p1")
    tamper(ws.root, outside)
    undo_change(ws, saved, touched, bad, "test")
    return outside, touched


def _as_saved(ws: Workspace, outside: Path) -> None:
    assert outside.read_text() == "precious\n"
    assert not (ws.root / "pkg" / "mod.py").is_symlink() and (ws.root / "pkg" / "mod.py").read_text() == "VALUE = 'mine'\n"
    assert not os.path.lexists(ws.root / "newdir" / "new.py") and not (ws.root / "newdir").is_symlink()


@pytest.mark.parametrize("plant", ["symlink_out", "fifo"])
def test_a_rollback_puts_the_users_file_back_where_a_child_left_a_symlink_or_a_fifo(ws: Workspace, plant: str) -> None:
    def tamper(root: Path, outside: Path) -> None:
        (root / "pkg" / "mod.py").unlink()
        if plant == "symlink_out":
            (root / "pkg" / "mod.py").symlink_to(outside)
        else:
            os.mkfifo(root / "pkg" / "mod.py")

    outside, _ = _change_then(ws, tamper)
    _as_saved(ws, outside)


def test_a_rollback_puts_things_back_where_a_child_made_a_new_folder_a_symlink_out(ws: Workspace) -> None:
    def tamper(root: Path, outside: Path) -> None:
        shutil.rmtree(root / "newdir")
        (root / "newdir").symlink_to(outside.parent)

    outside, _ = _change_then(ws, tamper)
    _as_saved(ws, outside)
    assert not (outside.parent / "new.py").exists()


def test_a_rollback_never_writes_through_a_hardlink_to_a_file_outside(ws: Workspace) -> None:
    def tamper(root: Path, outside: Path) -> None:
        (root / "pkg" / "mod.py").unlink()
        os.link(outside, root / "pkg" / "mod.py")

    outside, _ = _change_then(ws, tamper)
    _as_saved(ws, outside)


async def test_a_change_whose_server_swaps_its_file_for_a_symlink_out_is_still_rolled_back_to_last_good(
    tmp_path, make_config, supervisor_factory
):
    outside = tmp_path / "outside.py"
    outside.write_text("raise SystemExit('the outside file ran')\n")
    swap = f"import os, sys\nos.unlink('server.py')\nos.symlink({str(outside)!r}, 'server.py')\nsys.exit(3)\n"
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        await settled(sup)
        workspace = sup.settings.workspace
        initial = sup.supervisor_block()["last_good_commit"]
        try:
            result = await sup.propose_change(ChangeRequest("swap", changes=[{"path": "server.py", "content": swap}]))
            outcome = (result.verdict, result.trigger, result.reasons[-1][:200])
        except Exception as exc:  # noqa: BLE001 - what the caller meets is the finding
            outcome = ("raised", type(exc).__name__, str(exc)[:300])
        state = (outcome, (workspace / "server.py").is_symlink(), git(workspace, "rev-parse", "HEAD") == initial)
        assert outcome[0] == "rolled_back" and not (workspace / "server.py").is_symlink(), state
        assert outside.read_text() == "raise SystemExit('the outside file ran')\n"
        assert await served_version(sup) == "1"


@pytest.mark.parametrize("flag", ["--skip-worktree", "--assume-unchanged"])
async def test_an_edit_to_a_watched_file_git_is_told_to_ignore_is_screened_before_the_restart(
    tmp_path, make_config, supervisor_factory, flag
):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        await settled(sup)
        workspace = sup.settings.workspace
        git(workspace, "update-index", flag, "server.py")  # a sparse checkout, or a user's own trick
        (workspace / "server.py").write_text(with_version("2"))
        assert git(workspace, "status", "--porcelain") == ""  # git itself sees nothing
        await crash_and_restart(sup)
        assert [c["data"]["paths"] for c in audited(sup, "candidate")] == [["server.py"]]
        assert await served_version(sup) == "2"


async def test_a_last_good_ref_moved_by_a_child_onto_its_own_commit_does_not_let_that_commit_start_unscreened(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(app_config(make_config, tmp_path, sandbox="off")) as sup:
        await settled(sup)
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(with_version("forged"))
        user_git(workspace, "commit", "-qam", "mine")
        user_git(workspace, "update-ref", "refs/metasup/last-good", "HEAD")  # .git is writable without the sandbox
        await crash_and_restart(sup)
        version = await served_version(sup)
        assert version != "forged" or audited(sup, "candidate") or sup.integrity.tamper is not None, version
        # Put back, reported as tamper, and the forged commit screened as it would have been (refused meanwhile).
        assert version == "1" and sup.integrity.tamper is not None, (version, sup.integrity.tamper)
        assert user_git(workspace, "rev-parse", "refs/metasup/last-good") == sup.supervisor_block()["last_good_commit"]
        assert sup.supervisor_block()["last_good_commit"] != user_git(workspace, "rev-parse", "HEAD")


# --- 3. the unscreened-edits refusal ---------------------------------------------------------


def two_servers(make_config, tmp_path: Path) -> Path:
    """`app` runs server.py and watches lib.py too; `other` runs other.py."""
    template = _template(tmp_path)
    (template / "other.py").write_text(with_version("1"))
    servers = [
        {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py", "lib.py"]},
        {"name": "other", "command": "python", "args": ["-u", "other.py"], "watch": ["other.py"]},
    ]
    return make_config(tmp_path, servers, workspace_template=str(template))


async def test_a_staged_but_uncommitted_edit_refuses_a_proposal_that_would_restart_onto_it(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await settled(sup)
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(with_version("staged"))
        user_git(workspace, "add", "server.py")  # a new user's habit: staged, never committed
        result = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        assert result.verdict == "rejected" and result.reasons[0].startswith("unscreened_edits:"), result.reasons
        assert "server.py" in result.reasons[0] and "restart_server app" in result.reasons[0]
        assert user_git(workspace, "diff", "--cached", "--name-only") == "server.py", "the user's staging was touched"


async def test_a_users_commit_to_a_stopped_servers_code_never_rides_into_last_good_on_another_change(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(two_servers(make_config, tmp_path)) as sup:
        await settled(sup)
        await settled(sup, "other")
        workspace = sup.settings.workspace
        await sup.stop_server("other")
        (workspace / "other.py").write_text("raise SystemExit('broken at import')\n")
        user_git(workspace, "commit", "-qam", "other, never run")
        mine = user_git(workspace, "rev-parse", "HEAD")
        result = await sup.propose_change(ChangeRequest("lib v2", changes=[{"path": "lib.py", "content": "X = 2\n"}]))
        last_good = sup.supervisor_block()["last_good_commit"]
        ancestor = subprocess_ok(workspace, "merge-base", "--is-ancestor", mine, last_good)
        assert not (result.verdict == "applied" and ancestor), "the user's unrun commit became part of last good"
        assert result.verdict == "rejected" and "start_server other" in result.reasons[0], result.reasons


async def test_a_watched_file_a_child_swaps_for_a_symlink_out_is_put_back_before_the_restart(
    tmp_path, make_config, supervisor_factory
):
    outside = tmp_path / "evil.py"
    outside.write_text(with_version("evil"))
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        await settled(sup)
        workspace = sup.settings.workspace
        (workspace / "server.py").unlink()
        (workspace / "server.py").symlink_to(outside)  # resolves outside: protected, put back from last good
        await crash_and_restart(sup)
        assert [e["data"]["paths"] for e in audited(sup, "revert")] == [["server.py"]]
        assert not (workspace / "server.py").is_symlink() and await served_version(sup) == "1"
        assert outside.read_text() == with_version("evil")


async def test_a_user_in_the_middle_of_a_merge_can_still_have_their_edits_screened(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        await settled(sup)
        workspace = sup.settings.workspace
        (workspace / "notes.md").write_text("base\n")
        user_git(workspace, "add", "notes.md")
        user_git(workspace, "commit", "-qm", "notes")
        user_git(workspace, "checkout", "-qb", "side")
        (workspace / "notes.md").write_text("side\n")
        user_git(workspace, "commit", "-qam", "side")
        user_git(workspace, "checkout", "-q", "-")
        (workspace / "notes.md").write_text("main\n")
        user_git(workspace, "commit", "-qam", "main")
        user_git(workspace, "merge", "side", check=False)  # a conflict in notes.md, not code
        (workspace / "server.py").write_text(with_version("2"))
        await crash_and_restart(sup, timeout=3)
        assert await served_version(sup) == "2"
        assert [c["data"]["paths"] for c in audited(sup, "candidate")][-1:] == [["server.py"]]


@pytest.mark.parametrize("flag", [("add", "-N", "pkg/new.py"), ("update-index", "--skip-worktree", "pkg/mod.py")])
def test_a_rollback_keeps_the_users_index_flags_on_a_touched_path(ws: Workspace, flag: tuple[str, ...]) -> None:
    root = ws.root
    (root / "pkg" / "new.py").write_text("mine\n")
    user_git(root, *flag)
    before = user_git(root, "ls-files", "-v")  # tags: H plain, S skip-worktree; an i-t-a entry is listed
    touched = ["pkg/mod.py", "pkg/new.py"]
    saved = ws.save(touched, "before p1")
    ws.apply([FileChange(p, "BAD = 1\n") for p in touched])
    undo_change(ws, saved, touched, ws.commit_paths(touched, "p1"), "test")
    assert user_git(root, "ls-files", "-v") == before
