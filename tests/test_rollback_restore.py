"""Undoing a change on real repositories: exactly what was saved comes back, in the files and
in the user's index, with as few git processes as the check and the put-back need."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from metasup_mcp.evolution.recovery import undo_change
from metasup_mcp.safety import gitcmd
from metasup_mcp.safety.blobs import OTHER, blob_id, disk_entry
from metasup_mcp.safety.rules import FileChange
from metasup_mcp.safety.workspace import Workspace, WorkspaceError

ODD = os.fsdecode(b"caf\xe9 \xff.py")  # not UTF-8, with a space


@pytest.fixture(autouse=True)
def _pinned(pinned_git: None) -> None:
    """Every test here runs git with a pinned identity and no user or system config."""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout.decode("utf-8", "surrogateescape")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / "pkg" / "keep.py").write_text("KEEP = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / ".gitignore").write_text(".env\n")
    (root / ODD).write_bytes(b"odd = 1\n")
    return Workspace.open_or_init(root, [])


def _state(root: Path, paths: list[str]) -> dict[str, object]:
    """Bytes and execute bit on disk (None: absent), and the index entries, of `paths`."""
    disk: dict[str, object] = {}
    for path in paths:
        full = root / path
        disk[path] = (full.read_bytes(), os.access(full, os.X_OK)) if full.exists() else None
    return {"disk": disk, "index": git(root, "ls-files", "-s", "-z")}


def test_undoing_a_change_restores_exactly_what_was_saved_files_modes_and_index(ws: Workspace) -> None:
    root = ws.root
    (root / "pkg" / "mod.py").write_bytes(b"VALUE = 2  # mine\r\n")  # the user's uncommitted edit, CRLF kept
    (root / "pkg" / "staged.py").write_text("S = 1\n")
    git(root, "add", "pkg/staged.py")  # staged, not committed: the index differs from HEAD
    (root / ".env").write_text("SECRET=old\n")  # ignored
    (root / "notes.txt").write_text("untracked\n")
    touched = ["pkg/mod.py", "pkg/staged.py", ".env", "notes.txt", "run.sh", ODD, "new/extra.py"]
    before = _state(root, touched)
    head = ws.head()
    saved = ws.save(touched, "before p1")
    ws.apply([FileChange(p, f"broken {n}\n") for n, p in enumerate(touched)])
    bad = ws.commit_paths(touched, "p1")
    assert ws.keep_rejected("p1", bad) == "refs/metasup/rejected/p1"

    during = undo_change(ws, saved, touched, bad, "test")

    assert during is not None, "what the change wrote to untracked and ignored paths is in no index: saved again"
    assert _state(root, touched) == before
    assert ws.head() == head and git(root, "rev-parse", "refs/metasup/rejected/p1").strip() == bad
    assert not (root / "new").exists() or not any((root / "new").iterdir())
    assert sorted(git(root, "status", "--porcelain", "-z").split("\0")[:-1]) == [" M pkg/mod.py", "?? notes.txt", "A  pkg/staged.py"]


def test_a_touched_file_a_server_turned_into_a_folder_is_saved_before_the_file_goes_back(ws: Workspace) -> None:
    root = ws.root
    touched = ["pkg/mod.py"]
    saved = ws.save(touched, "before p2")
    ws.apply([FileChange("pkg/mod.py", "BROKEN = 1\n")])
    bad = ws.commit_paths(touched, "p2")
    (root / "pkg" / "mod.py").unlink()
    (root / "pkg" / "mod.py").mkdir()  # what a server left there while it ran the change
    (root / "pkg" / "mod.py" / "cache.bin").write_bytes(b"\x00server data")

    during = undo_change(ws, saved, touched, bad, "test")

    assert during is not None
    assert git(root, "show", f"{during}:pkg/mod.py/cache.bin") == "\x00server data"
    assert (root / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
    assert git(root, "status", "--porcelain") == ""


def _plant(full: Path, kind: str, outside: Path) -> None:
    """What a hostile server leaves at `full` in place of the file: never anything to follow."""
    full.unlink()
    if kind == "socket":
        folder = os.open(full.parent, os.O_RDONLY | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(f"/proc/self/fd/{folder}/{full.name}")  # short: a socket path is limited to 108 bytes
        finally:
            sock.close()
            os.close(folder)
    elif kind == "folder_with_a_link_out":
        full.mkdir()
        (full / "out").symlink_to(outside)
        os.mkfifo(full / "pipe")


@pytest.mark.parametrize("kind", ["socket", "folder_with_a_link_out"])
def test_a_rollback_replaces_whatever_a_server_left_at_a_touched_file_and_writes_nothing_outside(
    ws: Workspace, tmp_path: Path, kind: str
) -> None:
    root = ws.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("precious\n")
    (root / "pkg" / "mod.py").write_text("VALUE = 'mine'\n")
    touched = ["pkg/mod.py"]
    saved = ws.save(touched, "before p")
    ws.apply([FileChange("pkg/mod.py", "BAD = 1\n")])
    bad = ws.commit_paths(touched, "p")
    _plant(root / "pkg" / "mod.py", kind, outside)

    undo_change(ws, saved, touched, bad, "test")

    assert not (root / "pkg" / "mod.py").is_symlink() and (root / "pkg" / "mod.py").read_text() == "VALUE = 'mine'\n"
    assert sorted(p.name for p in outside.iterdir()) == ["x"] and (outside / "x").read_text() == "precious\n"
    assert git(root, "rev-parse", "HEAD").strip() == saved.head


def test_a_users_own_symlinks_come_back_as_symlinks_and_a_path_below_one_is_left_alone(ws: Workspace, tmp_path: Path) -> None:
    root = ws.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link.py").symlink_to("pkg/mod.py")  # the user's, untracked
    (root / "data").symlink_to(outside)  # the user's link to a folder outside
    touched = ["link.py", "data/new.py"]
    saved = ws.save(touched, "before p")
    assert git(root, "ls-tree", saved.commit, "link.py", "data").split()[::4][:2] == ["120000", "120000"]
    (root / "link.py").unlink()
    (root / "link.py").write_text("BAD = 1\n")  # a server replaced the user's link by a file

    undo_change(ws, saved, touched, None, "test")

    assert os.readlink(root / "link.py") == "pkg/mod.py"
    assert os.readlink(root / "data") == str(outside) and list(outside.iterdir()) == []


def test_a_rollback_removes_a_folder_a_server_made_at_a_path_that_was_absent_saving_what_it_held(ws: Workspace) -> None:
    root = ws.root
    touched = ["pkg/new.py"]
    saved = ws.save(touched, "before p")
    ws.apply([FileChange("pkg/new.py", "BAD = 1\n")])
    bad = ws.commit_paths(touched, "p")
    (root / "pkg" / "new.py").unlink()
    (root / "pkg" / "new.py" / "deep").mkdir(parents=True)
    (root / "pkg" / "new.py" / "deep" / "log.txt").write_text("server log\n")

    during = undo_change(ws, saved, touched, bad, "test")

    assert not os.path.lexists(root / "pkg" / "new.py")
    assert during is not None and git(root, "show", f"{during}:pkg/new.py/deep/log.txt") == "server log\n"
    assert git(root, "status", "--porcelain") == ""


def test_the_untouched_check_sees_a_new_mode_a_symlink_a_folder_and_an_unstaged_path(ws: Workspace) -> None:
    root = ws.root
    touched = ["pkg/mod.py", ODD]
    ws.apply([FileChange("pkg/mod.py", "V = 2\n"), FileChange(ODD, "odd = 2\n")])
    ws.commit_paths(touched, "p3")
    assert ws.untouched_since_commit(touched)
    mod = root / "pkg" / "mod.py"
    mod.chmod(0o755)
    assert not ws.untouched_since_commit(touched), "a mode change is a change"
    mod.chmod(0o644)
    mod.unlink()
    mod.symlink_to("keep.py")
    assert not ws.untouched_since_commit(touched), "a symlink where the file was"
    mod.unlink()
    mod.mkdir()
    assert not ws.untouched_since_commit(touched), "a folder where the file was"
    mod.rmdir()
    mod.write_text("V = 2\n")
    assert ws.untouched_since_commit(touched)
    git(root, "rm", "-q", "--cached", "pkg/mod.py")
    assert not ws.untouched_since_commit(touched), "the user unstaged it: their index is saved too"
    assert ws.untouched_since_commit(["never/there.py"])


def test_a_put_back_leaves_a_file_already_as_saved_alone_and_asks_git_little(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ws.root
    touched = ["pkg/mod.py", "pkg/keep.py", "new.py"]
    saved = ws.save(touched, "before p4")
    ws.apply([FileChange("pkg/mod.py", "BROKEN\n"), FileChange("new.py", "x\n")])
    bad = ws.commit_paths(touched, "p4")
    inode = (root / "pkg" / "keep.py").stat().st_ino
    calls: list[str] = []
    real = gitcmd.run_git

    def counted(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(next(a for a in args if not a.startswith("-")))
        return real(args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("metasup_mcp.safety.refs.run_git", counted)
    ws.keep_rejected("p4", bad)
    undo_change(ws, saved, touched, bad, "test")
    assert calls == ["update-ref", "ls-files", "ls-tree", "cat-file", "update-index", "update-ref"]
    assert (root / "pkg" / "keep.py").stat().st_ino == inode, "an unchanged file is not rewritten"
    assert (root / "pkg" / "mod.py").read_text() == "VALUE = 1\n" and not (root / "new.py").exists()


def test_refs_name_only_commits(ws: Workspace) -> None:
    tree = git(ws.root, "rev-parse", "HEAD^{tree}").strip()
    with pytest.raises(WorkspaceError):
        ws.keep_rejected("p5", tree)
    with pytest.raises(WorkspaceError):
        ws.move_head(ws.head(), tree)
    with pytest.raises(ValueError):
        ws.move_head(ws.head(), "--delete")


def test_disk_entries_are_git_blob_ids(ws: Workspace) -> None:
    root = ws.root
    assert disk_entry(root, "run.sh") == ("100755", git(root, "hash-object", "run.sh").strip())
    assert disk_entry(root, ODD) == ("100644", blob_id(b"odd = 1\n"))
    assert disk_entry(root, "absent.py") is None and disk_entry(root, "pkg") == OTHER
    os.mkfifo(root / "fifo")
    assert disk_entry(root, "fifo") == OTHER and disk_entry(root, "run.sh/below") == OTHER
    assert len(blob_id(b"", 64)) == 64


def test_a_rollback_in_the_middle_of_a_merge_keeps_the_users_conflicts_touched_or_not(ws: Workspace) -> None:
    root = ws.root
    git(root, "checkout", "-qb", "side")
    for name in ("mod", "keep"):
        (root / "pkg" / f"{name}.py").write_text(f"{name} = 'side'\n")
    git(root, "commit", "-qam", "side")
    git(root, "checkout", "-q", "-")
    for name in ("mod", "keep"):
        (root / "pkg" / f"{name}.py").write_text(f"{name} = 'main'\n")
    git(root, "commit", "-qam", "main")
    assert subprocess.run(["git", "merge", "side"], cwd=root, capture_output=True).returncode == 1  # two conflicts
    touched = ["pkg/mod.py"]
    before = _state(root, ["pkg/mod.py", "pkg/keep.py"])
    saved = ws.save(touched, "before p")
    ws.apply([FileChange("pkg/mod.py", "BAD = 1\n")])
    bad = ws.commit_paths(touched, "p")

    undo_change(ws, saved, touched, bad, "test")

    assert _state(root, ["pkg/mod.py", "pkg/keep.py"]) == before
    assert git(root, "ls-files", "--unmerged", "--", "pkg/mod.py").count("\n") == 3  # base, ours, theirs
    assert (root / ".git" / "MERGE_HEAD").exists()


def test_a_rollback_puts_a_file_back_where_a_server_made_its_folder_a_link_out(ws: Workspace, tmp_path: Path) -> None:
    root = ws.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mod.py").write_text("precious\n")
    touched = ["pkg/mod.py"]
    saved = ws.save(touched, "before p")
    ws.apply([FileChange("pkg/mod.py", "BAD = 1\n")])
    bad = ws.commit_paths(touched, "p")
    (root / "pkg" / "keep.py").unlink()
    (root / "pkg" / "mod.py").unlink()
    (root / "pkg").rmdir()
    (root / "pkg").symlink_to(outside)

    during = undo_change(ws, saved, touched, bad, "test")

    assert (outside / "mod.py").read_text() == "precious\n" and sorted(p.name for p in outside.iterdir()) == ["mod.py"]
    assert not (root / "pkg").is_symlink() and (root / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
    assert during is not None and git(root, "ls-tree", during, "pkg").startswith("120000")
