"""The restart path's quick look (`Workspace.glance`, `DiskGuard._nothing_to_screen`): one git
call when nothing needs screening, and never a way for unscreened on-disk edits to start.

A hostile child can write any file it reaches, in the same second as the last look, with the
same size, and set its mtime back: the look must still see it (ctime, git's racy-git rule)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution import content_check
from metasup_mcp.evolution.content_check import ContentCheck
from metasup_mcp.safety.integrity import IntegrityGuard
from metasup_mcp.safety.workspace import Workspace
from tests.conftest import eventually
from tests.ownership_support import APP, config_for, user_repo
from tests.safety_support import app_config, served_version

pytestmark = pytest.mark.anyio


def audited(sup, event: str) -> list[dict]:
    return [e for e in sup.audit_tail(200) if e["event"] == event]


def rewrite_keeping_stat(path: Path, text: str) -> None:
    """Same size, and mtime (and atime) set back to what they were: only ctime tells."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, pinned_git: None) -> Workspace:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "app.py").write_text("VERSION = 1\n")
    (root / ".gitignore").write_text("venv/\n")
    (root / "with space.py").write_text("x = 1\n")
    sh(root, "init", "-q")
    sh(root, "add", "-A")
    sh(root, "commit", "-qm", "start")
    return Workspace.open_or_init(root)


def test_a_glance_at_a_clean_tree_names_head_and_nothing_else(repo: Workspace) -> None:
    seen = repo.glance()
    assert seen.head == repo.head() and seen.changed == [] and seen.untracked == []


def test_a_same_second_same_size_edit_with_its_mtime_set_back_is_seen(repo: Workspace) -> None:
    assert repo.glance().changed == []  # the index's stat cache is fresh: the racy case
    rewrite_keeping_stat(repo.root / "app.py", "VERSION = 2\n")
    assert repo.glance().changed == ["app.py"]


def hide_from_git(root: Path, rel: str, text: str) -> None:
    """Rewrite `rel` (same size, mtime set back) in the same second as git's index recorded its
    stat data: git compares ctime by the second, so `git diff` and `git status` see nothing."""
    path = root / rel
    original = path.read_text()
    old = time.time_ns() - 3_600_000_000_000  # not racily clean by mtime: git trusts the entry's stat
    while True:
        os.utime(path, ns=(old, old))  # and ctime moves to now
        sh(root, "update-index", "-q", "--refresh")  # the user's (or anyone's) git records it
        recorded = path.stat().st_ctime_ns
        rewrite_keeping_stat(path, text)
        if path.stat().st_ctime_ns // 10**9 == recorded // 10**9:
            break
        # A second boundary fell in between (git sees the edit): back to the recorded content,
        # else the next refresh would find the index's content differing and record nothing.
        rewrite_keeping_stat(path, original)
    assert sh(root, "diff", "--name-only") == "", "the scenario needs an edit git cannot see"


def test_an_edit_git_cannot_see_is_found_by_its_content(repo: Workspace) -> None:
    check = ContentCheck(repo)
    assert check.differing(repo.head(), lambda p: True) == []
    hide_from_git(repo.root, "app.py", "VERSION = 2\n")
    assert repo.glance().changed == []  # git's own look misses it
    assert check.differing(repo.head(), lambda p: True) == ["app.py"]


def test_the_content_check_reads_a_racily_fresh_file_every_time_and_a_settled_one_only_once_its_stat_moves(
    repo: Workspace, monkeypatch
) -> None:
    read: list[str] = []
    real = content_check._blob_id
    monkeypatch.setattr(content_check, "_blob_id", lambda full, alg: (read.append(Path(full).name), real(full, alg))[1])
    check = ContentCheck(repo)
    for _ in range(2):  # written moments ago: its stat proves nothing yet
        read.clear()
        assert check.differing(repo.head(), lambda p: p == "app.py") == [] and read == ["app.py"]
    monkeypatch.setattr(content_check, "RACY_NS", 0)  # as if they had settled long ago
    assert check.differing(repo.head(), lambda p: True) == []
    read.clear()
    assert check.differing(repo.head(), lambda p: True) == [] and read == []
    rewrite_keeping_stat(repo.root / "with space.py", "x = 9\n")
    assert check.differing(repo.head(), lambda p: True) == ["with space.py"] and read == ["with space.py"]


def test_a_file_whose_bytes_differ_only_by_the_repositorys_eol_conversion_is_not_an_edit(repo: Workspace) -> None:
    (repo.root / ".gitattributes").write_text("*.txt text eol=crlf\n")
    (repo.root / "notes.txt").write_text("a\nb\n")
    sh(repo.root, "add", ".gitattributes", "notes.txt")
    sh(repo.root, "commit", "-qm", "eol")
    (repo.root / "notes.txt").write_bytes(b"a\r\nb\r\n")  # what a checkout writes
    assert ContentCheck(repo).differing(repo.head(), lambda p: p == "notes.txt") == []
    (repo.root / "notes.txt").write_bytes(b"a\r\nc\r\n")
    assert ContentCheck(repo).differing(repo.head(), lambda p: p == "notes.txt") == ["notes.txt"]


def test_a_glance_sees_staged_unstaged_and_untracked_paths_but_not_ignored_ones(repo: Workspace) -> None:
    (repo.root / "with space.py").write_text("x = 2\n")
    (repo.root / "staged.py").write_text("y = 1\n")
    sh(repo.root, "add", "staged.py")
    (repo.root / "new dir").mkdir()
    (repo.root / "new dir" / "tool.py").write_text("z = 1\n")
    (repo.root / "venv").mkdir()
    (repo.root / "venv" / "lib.py").write_text("ignored\n")
    seen = repo.glance()
    assert seen.changed == ["staged.py", "with space.py"]
    assert seen.untracked == ["new dir/tool.py"]


def test_a_glance_never_rewrites_the_users_index(repo: Workspace) -> None:
    index = repo.git_dir / "index"
    (repo.root / "app.py").touch()  # stale stat data: a plain `git status` would refresh the index
    before = index.stat()
    repo.glance()
    after = index.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_glance_names_a_head_that_moved_past_last_good(repo: Workspace) -> None:
    start = repo.head()
    (repo.root / "app.py").write_text("VERSION = 3\n")
    sh(repo.root, "commit", "-qam", "on top")
    seen = repo.glance()
    assert seen.head != start and seen.changed == []  # the guard's equality with last good fails


def test_a_sealed_file_rewritten_with_the_same_size_and_mtime_is_still_found(tmp_path: Path) -> None:
    sealed = tmp_path / "config.yaml"
    sealed.write_text("mode: safe\n")
    old = sealed.stat().st_mtime_ns - 120_000_000_000  # old enough for its stat to be trusted
    os.utime(sealed, ns=(old, old))
    guard = IntegrityGuard([sealed])
    guard.seal()
    assert guard.check() is None and guard.check() is None  # the second check trusts the stat
    rewrite_keeping_stat(sealed, "mode: evil\n")
    found = guard.check()
    assert found is not None and "content changed" in str(found)


async def test_an_edit_git_cannot_see_made_right_before_a_crash_is_screened_before_the_restart(
    tmp_path: Path, make_config, supervisor_factory
) -> None:
    async with supervisor_factory(app_config(make_config, tmp_path, restart={"stable_after": "1s"})) as sup:
        child = sup.child("app")
        await eventually(lambda: child.state is ChildState.RUNNING and (child.machine.uptime() or 0) > 1.2, timeout=15)
        assert await served_version(sup) == "1"
        old_pid = child.pid
        assert old_pid is not None
        workspace = sup.settings.workspace
        hide_from_git(workspace, "server.py", (workspace / "server.py").read_text().replace('VERSION = "1"', 'VERSION = "2"'))
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: child.pid not in (None, old_pid), timeout=10)
        [candidate] = audited(sup, "candidate")  # screened and put on trial before it started
        assert candidate["data"]["paths"] == ["server.py"] and candidate["data"]["server"] == "app"
        assert await served_version(sup) == "2"


async def test_a_restart_with_nothing_to_screen_takes_one_git_status_not_the_full_look(
    tmp_path: Path, make_config, supervisor_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks: list[str] = []
    for name in ("glance", "changes_since"):
        original = getattr(Workspace, name)
        monkeypatch.setattr(Workspace, name, lambda self, *a, _o=original, _n=name, **k: (looks.append(_n), _o(self, *a, **k))[1])
    async with supervisor_factory(app_config(make_config, tmp_path, restart={"stable_after": "1s"})) as sup:
        child = sup.child("app")
        await eventually(lambda: child.state is ChildState.RUNNING and (child.machine.uptime() or 0) > 1.2, timeout=15)
        (sup.settings.workspace / "notes.txt").write_text("the user's, not code: app watches server.py only\n")
        looks.clear()
        old_pid = child.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: child.pid not in (None, old_pid), timeout=10)
        assert looks == ["glance"]
        assert not audited(sup, "candidate") and await served_version(sup) == "1"


async def test_a_protected_file_edited_where_git_cannot_see_it_is_still_put_back_by_the_poll(
    tmp_path: Path, make_config, supervisor_factory
) -> None:
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        workspace = sup.settings.workspace
        rules = workspace / "config" / "safety_rules.yaml"
        await eventually(lambda: sup.child("app").state is ChildState.RUNNING, timeout=15)  # no start to come
        assert rules.read_text() == "[]\n"
        hide_from_git(workspace, "config/safety_rules.yaml", "{}\n")  # same size: "allow all" in spirit
        await eventually(lambda: rules.read_text() == "[]\n" and any(e["event"] == "protected_revert" for e in sup.events),
                         timeout=10)


async def test_a_new_code_file_hidden_by_an_ignore_rule_added_on_disk_is_still_screened(
    tmp_path: Path, make_config, supervisor_factory
) -> None:
    repo = user_repo(tmp_path)
    app = {**APP, "watch": ["*.py"]}  # .gitignore itself is not code this server watches
    async with supervisor_factory(config_for(make_config, tmp_path, repo, [app])) as sup:
        assert await served_version(sup) == "1"
        with (repo / ".gitignore").open("a") as rules:
            rules.write("evil.py\n")
        (repo / "evil.py").write_text("import os  # loaded by a plugin scan\n")
        await sup.restart_server("app")
        [candidate] = audited(sup, "candidate")
        assert candidate["data"]["paths"] == ["evil.py"]
