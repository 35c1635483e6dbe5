"""The restart path's quick look (`Workspace.glance`, `DiskGuard._nothing_to_screen`): one git
call when nothing needs screening, and never a way for unscreened on-disk edits to start.

A hostile child can write any file it reaches, in the same second as the last look, with the
same size, and set its mtime back: the look must still see it (ctime, git's racy-git rule)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.safety.integrity import IntegrityGuard
from metasup_mcp.safety.workspace import Workspace
from tests.conftest import eventually
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


def test_an_old_files_same_size_edit_with_its_mtime_set_back_is_seen_by_its_ctime(repo: Workspace) -> None:
    app = repo.root / "app.py"
    old = app.stat().st_mtime_ns - 3_600_000_000_000
    os.utime(app, ns=(old, old))
    sh(repo.root, "update-index", "--refresh")  # the index caches the old mtime: not racily clean
    assert repo.glance().changed == []
    rewrite_keeping_stat(app, "VERSION = 2\n")
    assert repo.glance().changed == ["app.py"]


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


async def test_an_edit_made_right_before_a_crash_is_screened_before_the_restart(
    tmp_path: Path, make_config, supervisor_factory
) -> None:
    async with supervisor_factory(app_config(make_config, tmp_path, restart={"stable_after": "1s"})) as sup:
        child = sup.child("app")
        await eventually(lambda: child.state is ChildState.RUNNING and (child.machine.uptime() or 0) > 1.2, timeout=15)
        assert await served_version(sup) == "1"
        old_pid = child.pid
        assert old_pid is not None
        server = sup.settings.workspace / "server.py"
        rewrite_keeping_stat(server, server.read_text().replace('VERSION = "1"', 'VERSION = "2"'))
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
        monkeypatch.setattr(Workspace, name, lambda self, *a, _o=original, _n=name: (looks.append(_n), _o(self, *a))[1])
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
