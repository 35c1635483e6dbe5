"""Last good is what the supervisor set, never what the ref says: without a kernel sandbox a
child can move `refs/metasup/last-good`, and a restart must not trust its commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from metasup_mcp.safety.integrity import IntegrityGuard
from metasup_mcp.safety.workspace import REF_LAST_GOOD, Workspace


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def ws(tmp_path: Path, pinned_git: None) -> Workspace:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "app.py").write_text("VERSION = 1\n")
    workspace = Workspace.open_or_init(tmp_path / "ws")
    workspace.mark_last_good(workspace.head())
    return workspace


def forged(ws: Workspace) -> str:
    """A child's own commit, with last good moved onto it behind the supervisor's back."""
    (ws.root / "app.py").write_text("VERSION = 'forged'\n")
    git(ws.root, "commit", "-qam", "mine")
    git(ws.root, "update-ref", REF_LAST_GOOD, "HEAD")
    return git(ws.root, "rev-parse", "HEAD")


def test_a_last_good_ref_someone_else_moved_is_reported_put_back_and_never_read_as_last_good(ws: Workspace) -> None:
    ours = ws.last_good()
    told: list[tuple[str | None, str]] = []
    ws.on_foreign_last_good = lambda found, mine: told.append((found, mine))
    theirs = forged(ws)
    assert ws.peek() == (theirs, ours)
    assert ws.last_good() == ours and git(ws.root, "rev-parse", REF_LAST_GOOD) == ours
    assert told[-1] == (theirs, ours) and all(t == (theirs, ours) for t in told)
    told.clear()
    assert ws.last_good() == ours and ws.peek()[1] == ours and told == []  # put back: nothing more to tell


def test_the_supervisors_own_moves_are_never_foreign(ws: Workspace) -> None:
    told: list[object] = []
    ws.on_foreign_last_good = lambda found, mine: told.append(found)
    (ws.root / "app.py").write_text("VERSION = 2\n")
    commit = ws.commit_paths(["app.py"], "v2")
    ws.mark_last_good(commit)
    assert ws.last_good() == commit and ws.peek()[1] == commit and told == []


def test_a_reported_finding_is_a_sticky_tamper_until_sealed_anew(tmp_path: Path) -> None:
    guard = IntegrityGuard([tmp_path / "config"])
    guard.seal()
    reported: list[str] = []
    guard.on_tamper = lambda tamper: reported.append(str(tamper))
    guard.report(REF_LAST_GOOD, "moved to abc by someone else")
    guard.report(REF_LAST_GOOD, "moved to def by someone else")
    assert guard.check() is not None and reported == [f"{REF_LAST_GOOD}: moved to abc by someone else"]
    guard.seal()
    assert guard.check() is None and guard.tamper is None
