"""Attacks on the ownership model by a hostile child and by odd user repositories (docs/safety-model.md)."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.safety.workspace import Workspace
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


def saved_copies(repo, path: str) -> list[str]:
    """The contents of `path` in every saved ref (the documented way to get user work back)."""
    refs = user_git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/saved/").split()
    return [user_git(repo, "show", f"{ref}:{path}") for ref in refs if user_git(repo, "cat-file", "-e", f"{ref}:{path}", check=False) == ""
            and user_git(repo, "ls-tree", ref, "--", path)]


async def test_a_rollback_that_turns_a_folder_back_into_a_file_saves_the_users_files_inside_it(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    (repo / "lib").write_text("a file at first\n")
    user_git(repo, "add", "lib")
    user_git(repo, "commit", "-qm", "lib is a file")
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        start = sup.supervisor_block()["last_good_commit"]
        dropped = await propose(sup, "drop lib", [{"path": "lib", "delete": True}])
        package = await propose(sup, "lib becomes a package", [{"path": "lib/x.py", "content": "X = 1\n"}])
        assert dropped["verdict"] == package["verdict"] == "applied", (dropped, package)
        (repo / "lib" / "notes.txt").write_text("my notes, untracked\n")
        back = await sup.rollback(start, reason="back to before the package")
        assert not back["noop"]
    assert (repo / "lib").read_text() == "a file at first\n"
    assert "my notes, untracked" in saved_copies(repo, "lib/notes.txt")


async def test_a_child_writing_thousands_of_watched_files_is_still_put_back(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [PY_APP])) as sup:
        assert await served_version(sup) == "1"
        gen = repo / "generated"
        deep = gen.joinpath(*["d" * 250] * 14)
        deep.mkdir(parents=True)
        for i in range(700):  # 3.5 kB paths: together over ARG_MAX (2 MiB)
            (deep / f"{i}.py").write_text("")
        (repo / "server.py").write_text(with_version("written by a child"))
        await sup.restart_server("app")
        assert await served_version(sup) == "1"
        await settled(sup)
    assert not any(deep.iterdir())
    assert sup.supervisor_block()["current_commit"] == sup.supervisor_block()["last_good_commit"]


async def test_a_fifo_among_a_childs_edits_does_not_let_them_run_unscreened(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    config = config_for(make_config, tmp_path, repo, [PY_APP], approval={"mode": "deny"})
    (repo / "helper.py").write_text("HELP = 1\n")
    user_git(repo, "add", "helper.py")
    user_git(repo, "commit", "-qm", "a helper")
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "1"
        os.mkfifo(repo / "evil.py")
        (repo / "helper.py").unlink()
        os.mkfifo(repo / "helper.py")  # a tracked file replaced by a fifo
        (repo / "server.py").write_text(with_version("written by a child"))
        await sup.restart_server("app")
        assert await served_version(sup) == "1"
    assert "written by a child" in "".join(saved_copies(repo, "server.py"))


async def test_a_proposal_over_a_fifo_a_child_planted_is_refused_without_hanging(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        assert await served_version(sup) == "1"
        os.mkfifo(repo / "tools.py")
        with anyio.fail_after(20):
            result = await propose(sup, "over a fifo", [{"path": "tools.py", "content": "X = 1\n"}])
        assert result["verdict"] == "rejected" and "tools.py" in " ".join(result["reasons"]), result
        with anyio.fail_after(20):
            after = await propose(sup, "v2", [{"path": "server.py", "content": with_version("2")}])
        assert after["verdict"] == "applied", after


async def test_a_rolled_back_change_restores_files_byte_for_byte_whatever_gitattributes_says(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    (repo / ".gitattributes").write_text("* text=auto\n")
    user_git(repo, "add", ".gitattributes")
    user_git(repo, "commit", "-qm", "normalise line endings")
    (repo / "data" / "export.csv").write_bytes(b"a,b\r\nc,d\r\n")  # ignored, written on another OS
    (repo / "run.sh").write_bytes(b"#!/bin/sh\r\necho hi\r\n")  # untracked and executable
    (repo / "run.sh").chmod(0o755)
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        result = await propose(sup, "breaks", [
            {"path": "data/export.csv", "content": "overwritten\n"},
            {"path": "run.sh", "content": "echo overwritten\n"},
            {"path": "server.py", "content": with_version("2", "raise SystemExit('broken at import')")},
        ])
        assert result["verdict"] == "rolled_back", result
    assert (repo / "data" / "export.csv").read_bytes() == b"a,b\r\nc,d\r\n"
    assert (repo / "run.sh").read_bytes() == b"#!/bin/sh\r\necho hi\r\n"
    assert (repo / "run.sh").stat().st_mode & 0o777 == 0o755


async def test_a_repo_with_no_commits_keeps_what_the_user_had_staged(tmp_path, make_config, supervisor_factory):
    repo = tmp_path / "fresh"
    repo.mkdir()
    user_git(repo, "init", "-q", "--initial-branch=main")
    (repo / "server.py").write_text(with_version("1"))
    (repo / "notes.md").write_text("staged version\n")
    user_git(repo, "add", "server.py", "notes.md")
    (repo / "notes.md").write_text("edited after staging\n")
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [APP])) as sup:
        assert await served_version(sup) == "1"
    assert (repo / "notes.md").read_text() == "edited after staging\n"
    refs = user_git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/saved/").split()
    assert any(user_git(repo, "show", f"{ref}:notes.md", check=False) == "staged version" for ref in refs), refs


async def test_a_broken_on_disk_edit_beside_a_nested_repository_is_rolled_back_and_the_repository_kept(tmp_path, make_config, supervisor_factory):
    repo = user_repo(tmp_path)
    nested = repo / "vendor"
    nested.mkdir()
    user_git(nested, "init", "-q")
    (nested / "lib.py").write_text("# someone else's repository\n")
    app = {**APP, "watch": ["server.py", "vendor/"]}
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [app])) as sup:
        assert await served_version(sup) == "1"
        (repo / "server.py").write_text(with_version("2", "raise SystemExit('broken at import')"))
        await sup.restart_server("app")
        assert await served_version(sup) == "1"
        await settled(sup)
        block = sup.supervisor_block()
        assert block["current_commit"] == block["last_good_commit"]
    assert (nested / "lib.py").read_text() == "# someone else's repository\n" and (nested / ".git").is_dir()



def test_files_with_odd_names_are_saved_and_put_back_byte_for_byte(tmp_path):
    repo = user_repo(tmp_path)
    names = ["new\nline.txt", "-dash.txt", "ünï cödé.txt", os.fsdecode(b"not-utf8-\xff.txt"), "sp ace/x y.txt",
             "tab\tname.txt", '"quoted".txt', "back\\slash.txt", "*star.txt", ":(glob)x.txt"]
    for name in names:
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_bytes(os.fsencode(name) + b"\r\n")
    ws = Workspace.open_or_init(repo)
    saved = ws.save(names, "odd names")
    for name in names:
        (repo / name).write_bytes(b"overwritten\n")
    ws.put_back(saved, names)
    assert [n for n in names if (repo / n).read_bytes() != os.fsencode(n) + b"\r\n"] == []


async def test_a_file_the_users_global_excludes_ignore_is_never_committed(tmp_path, make_config, supervisor_factory, monkeypatch):
    from metasup_mcp.safety import gitcmd

    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitignore_global").write_text("*.local.py\n")
    (home / ".gitconfig").write_text(f"[core]\n\texcludesFile = {home / '.gitignore_global'}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    gitcmd.user_excludes_file.cache_clear()
    gitcmd._cache.clear()
    try:
        repo = user_repo(tmp_path)
        (repo / "settings.local.py").write_text("PASSWORD = 'mine'\n")  # ignored by the user's own git
        async with supervisor_factory(config_for(make_config, tmp_path, repo, [PY_APP])) as sup:
            assert await served_version(sup) == "1"
            (repo / "server.py").write_text(with_version("2"))
            await sup.restart_server("app")
            assert await served_version(sup) == "2"
            await settled(sup)
        assert "settings.local.py" not in every_committed_path(repo)
    finally:
        gitcmd.user_excludes_file.cache_clear()
        gitcmd._cache.clear()
