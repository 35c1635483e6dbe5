"""Workspace on real git repositories in tmp_path."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from metasup_mcp.safety.rules import FileChange
from metasup_mcp.safety.workspace import REF_LAST_GOOD, REF_VERIFIED, Workspace, WorkspaceError


@pytest.fixture(autouse=True)
def _pinned(pinned_git: None) -> None:
    """Every test here runs git with a pinned identity and no user or system config."""


def git(cwd: Path, *args: str, **env: str) -> str:
    full_env = {**os.environ, **env}
    return subprocess.run(["git", *args], cwd=cwd, env=full_env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "app.py").write_text("print('v1')\n")
    (root / ".gitignore").write_text("*.log\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    return Workspace.open_or_init(root, ["/.metasup/"])


def test_opening_a_plain_folder_makes_a_repo_with_one_commit_of_its_files(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / ".metasup").mkdir()
    (root / ".metasup" / "journal.json").write_text("{}")
    ws = Workspace.open_or_init(root, ["/.metasup/"])
    assert git(root, "ls-files").splitlines() == ["pkg/mod.py"]
    assert git(root, "log", "--format=%an <%ae>|%cn <%ce>") == "metasup <metasup@localhost>|metasup <metasup@localhost>"
    assert "/.metasup/" in (root / ".git" / "info" / "exclude").read_text()
    assert not (root / ".gitignore").exists()
    assert ws.head() == ws.initial_commit() and not ws.is_dirty()
    again = Workspace.open_or_init(root, ["/.metasup/"])  # idempotent: no second commit, no duplicate line
    assert again.head() == ws.head()
    assert (root / ".git" / "info" / "exclude").read_text().count("/.metasup/") == 1


def test_a_missing_folder_is_created_with_an_empty_first_commit(tmp_path: Path) -> None:
    ws = Workspace.open_or_init(tmp_path / "a" / "b", [])
    assert git(ws.root, "ls-tree", "-r", "HEAD") == ""
    assert ws.commit_info(ws.head()).summary == "metasup: first snapshot of the workspace"


def test_a_folder_inside_another_repository_gets_its_own(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "outer")
    inner = tmp_path / "outer" / "inner"
    inner.mkdir()
    (inner / "f.txt").write_text("f")
    ws = Workspace.open_or_init(inner, [])
    assert ws.git_dir == inner / ".git"
    assert git(inner, "ls-files") == "f.txt"


def test_inherited_git_variables_do_not_redirect_the_workspace(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoy = tmp_path / "decoy"
    git(tmp_path, "init", "-q", "decoy")
    monkeypatch.setenv("GIT_DIR", str(decoy / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(decoy))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "stray-index"))
    ws.apply([FileChange("new.py", "x\n")])
    sha = ws.commit_all("add new", {})
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert git(ws.root, "rev-parse", "HEAD") == sha
    assert "new.py" in git(ws.root, "ls-files")
    assert not (tmp_path / "stray-index").exists()
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=decoy, capture_output=True).returncode != 0


def test_a_snapshot_keeps_uncommitted_work_recoverable_after_reset(ws: Workspace) -> None:
    root, head = ws.root, ws.head()
    (root / "app.py").write_text("print('edited')\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("untracked\n")
    (root / "staged.txt").write_text("staged\n")
    git(root, "add", "staged.txt")
    index_before = (root / ".git" / "index").read_bytes()
    ref = ws.snapshot("before proposal p1")
    assert ref is not None and ref.startswith("refs/metasup/snapshots/")
    assert (root / ".git" / "index").read_bytes() == index_before  # the user's index untouched
    assert ws.head() == head and (root / "app.py").read_text() == "print('edited')\n"
    ws.reset_to(head)
    assert (root / "app.py").read_text() == "print('v1')\n" and not (root / "notes").exists()
    assert git(root, "show", f"{ref}:app.py") == "print('edited')"
    assert git(root, "show", f"{ref}:notes/todo.txt") == "untracked"
    assert git(root, "show", f"{ref}^2:staged.txt") == "staged"  # the index, as git stash keeps it
    assert git(root, "rev-parse", f"{ref}^1") == head


def test_a_clean_workspace_needs_no_snapshot(ws: Workspace) -> None:
    (ws.root / "debug.log").write_text("ignored files are not user work to rescue\n")
    assert ws.snapshot("nothing to do") is None
    assert ws.list_refs("refs/metasup/snapshots/") == []


def test_apply_and_commit_write_files_keep_modes_and_append_trailers(ws: Workspace) -> None:
    root = ws.root
    ws.apply(
        [
            FileChange("lib/deep/mod.py", "VALUE = 2\n"),
            FileChange("run.sh", "#!/bin/sh\necho hi\n"),
            FileChange("app.py", None, delete=True),
        ]
    )
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755
    assert not (root / "app.py").exists()
    assert not [p for p in root.rglob("*.tmp")]
    sha = ws.commit_all("Add mod\n", {"Metasup-Proposal": "p-42", "Metasup-Strategy": "auto"})
    assert ws.head() == sha and not ws.is_dirty()
    assert git(root, "log", "-1", "--format=%(trailers:key=Metasup-Proposal,valueonly)") == "p-42"
    assert git(root, "log", "-1", "--format=%s") == "Add mod"
    assert git(root, "ls-files", "-s", "run.sh").startswith("100755")


def test_committing_nothing_is_refused(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="nothing to commit"):
        ws.commit_all("empty", {})


def test_reset_to_removes_untracked_files_but_leaves_ignored_ones(ws: Workspace) -> None:
    root, base = ws.root, ws.head()
    ws.apply([FileChange("app.py", "print('v2')\n")])
    second = ws.commit_all("v2", {})
    (root / "scratch" / "deep").mkdir(parents=True)
    (root / "scratch" / "deep" / "x.py").write_text("junk")
    (root / "server.log").write_text("keep me\n")
    (root / ".metasup").mkdir()
    (root / ".metasup" / "audit.jsonl").write_text("keep me too\n")
    ws.reset_to(base)
    assert ws.head() == base and second != base
    assert (root / "app.py").read_text() == "print('v1')\n"
    assert not (root / "scratch").exists()
    assert (root / "server.log").exists() and (root / ".metasup" / "audit.jsonl").exists()
    assert not ws.is_dirty()


def test_what_a_change_wrote_is_rolled_back_even_when_a_gitignore_hides_it(ws: Workspace) -> None:
    root, base = ws.root, ws.head()
    ws.apply([FileChange(".gitignore", "*.log\nbackdoor.py\n"), FileChange("backdoor.py", "evil\n")])
    ws.commit_all("sneaky", {})
    ws.reset_to(base)
    assert not (root / "backdoor.py").exists()
    ws.apply([FileChange("trace.log", "written but never committed\n")])
    ws.reset_to(base)
    assert not (root / "trace.log").exists()


def test_apply_refuses_symlinks_and_git_paths_by_itself(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ws.root / "out")
    os.symlink(outside / "f.txt", ws.root / "out_file")
    for path in ("out/pwn.txt", "out_file", ".git/config", "sub/.GIT/x", "../x", "/etc/x", "a//b"):
        with pytest.raises(WorkspaceError):
            ws.apply([FileChange(path, "x")])
    assert list(outside.iterdir()) == []
    assert not (ws.root / "sub").exists()


def test_last_good_and_rejected_refs_round_trip(ws: Workspace) -> None:
    assert ws.last_good() is None
    base = ws.head()
    ws.mark_last_good(base)
    ws.apply([FileChange("bad.py", "boom\n")])
    bad = ws.commit_all("bad", {"Metasup-Proposal": "p1"})
    assert ws.keep_rejected("p1", bad) == "refs/metasup/rejected/p1"
    good = ws.last_good()
    assert good == base
    ws.reset_to(good)
    assert ws.head() == base and ws.is_ancestor(base, bad) and not ws.is_ancestor(bad, base)
    refs = {(r.name, r.sha) for r in ws.list_refs()}
    verified = {(r.name, r.sha) for r in ws.list_refs(REF_VERIFIED)}
    assert refs == {("refs/metasup/rejected/p1", bad), (REF_LAST_GOOD, base)} | verified
    assert ws.verified_commits() == [base], "a commit once marked last good stays a rollback target"
    with pytest.raises(ValueError):
        ws.keep_rejected("../escape", bad)


def test_prune_keeps_the_newest_refs_of_each_kind(ws: Workspace) -> None:
    root, head = ws.root, ws.head()
    tree = git(root, "rev-parse", "HEAD^{tree}")
    for day in range(1, 5):
        date = f"2024-01-0{day}T12:00:00Z"
        sha = git(root, "commit-tree", tree, "-p", head, "-m", f"r{day}", GIT_COMMITTER_DATE=date)
        ws.keep_rejected(f"r{day}", sha)
    snapshots = []
    for n in range(3):
        (root / "scratch.txt").write_text(f"{n}\n")
        snapshots.append(ws.snapshot(f"s{n}"))
    ws.mark_last_good(head)
    deleted = ws.prune(keep=2)
    assert {r.name for r in ws.list_refs("refs/metasup/rejected/")} == {"refs/metasup/rejected/r4", "refs/metasup/rejected/r3"}
    assert [r.name for r in ws.list_refs("refs/metasup/snapshots/")] == [snapshots[2], snapshots[1]]
    assert set(deleted) == {"refs/metasup/rejected/r1", "refs/metasup/rejected/r2", snapshots[0]}
    assert ws.last_good() == head


def test_commit_info_and_initial_commit(ws: Workspace) -> None:
    first = ws.head()
    ws.apply([FileChange("b.txt", "b\n")])
    second = ws.commit_all("Second commit\n\nbody", {})
    info = ws.commit_info(second)
    assert (info.sha, info.summary) == (second, "Second commit") and info.date.tzinfo is not None
    assert ws.initial_commit() == first
    with pytest.raises(WorkspaceError):
        ws.commit_info("0123456789abcdef0123456789abcdef01234567")


def test_changed_paths_lists_committed_uncommitted_and_untracked_changes(ws: Workspace) -> None:
    root, base = ws.root, ws.head()
    ws.apply([FileChange("committed.py", "c\n")])
    ws.commit_all("c", {})
    (root / "app.py").write_text("edited\n")
    (root / "run.sh").unlink()
    (root / "new dir").mkdir()
    (root / "new dir" / "untracked é.txt").write_text("u")
    (root / "ignored.log").write_text("i")
    assert ws.changed_paths(base) == ["app.py", "committed.py", "new dir/untracked é.txt", "run.sh"]
    assert ws.changed_paths("HEAD") == ["app.py", "new dir/untracked é.txt", "run.sh"]


def test_write_bundle_keeps_only_the_newest(ws: Workspace, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    made = [ws.write_bundle(backups, keep=3) for _ in range(4)]
    assert sorted(backups.iterdir()) == made[1:]


def test_a_bundle_restores_a_repository_whose_objects_were_deleted(ws: Workspace, tmp_path: Path) -> None:
    root, backups = ws.root, tmp_path / "backups"
    ws.apply([FileChange("good.py", "ok\n")])
    good = ws.commit_all("good", {})
    ws.mark_last_good(good)
    ws.keep_rejected("p9", ws.initial_commit())
    (root / "app.py").write_text("user edit\n")
    snap = ws.snapshot("before backup")
    ws.write_bundle(backups)
    (root / "later.txt").write_text("user work after the backup\n")
    shutil.rmtree(root / ".git" / "objects")
    assert not ws.is_healthy()
    with pytest.raises(WorkspaceError, match="restore_from_bundle"):
        Workspace.open_or_init(root, ["/.metasup/"])

    restored = Workspace.restore_from_bundle(root, backups)
    assert restored.is_healthy() and restored.head() == good and restored.last_good() == good
    assert {r.name for r in restored.list_refs()} - {r.name for r in restored.list_refs(REF_VERIFIED)} == {
        REF_LAST_GOOD, "refs/metasup/rejected/p9", snap
    }
    assert restored.verified_commits() == [good]
    assert git(root, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert (root / "app.py").read_text() == "user edit\n" and (root / "later.txt").exists()
    assert set(restored.changed_paths("HEAD")) == {"app.py", "later.txt"}  # not .git.broken-*
    assert [p.name[:12] for p in root.iterdir() if p.name.startswith(".git.")] == [".git.broken-"]
    assert "/.metasup/" in (root / ".git" / "info" / "exclude").read_text()


def test_restore_skips_a_damaged_newest_bundle(ws: Workspace, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    ws.write_bundle(backups)
    newest = ws.write_bundle(backups)
    newest.write_bytes(b"not a bundle")
    shutil.rmtree(ws.root / ".git")
    restored = Workspace.restore_from_bundle(ws.root, backups)
    assert restored.head() == ws.head()


def test_git_and_os_failures_surface_as_workspace_error(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not a commit"):
        ws.reset_to("deadbeef")
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(WorkspaceError):
        ws.write_bundle(tmp_path / "file" / "backups")
    with pytest.raises(WorkspaceError):
        ws.apply([FileChange("missing.txt", None, delete=True)])
    with pytest.raises(WorkspaceError, match="no metasup-"):
        Workspace.restore_from_bundle(ws.root, tmp_path / "empty")


def test_every_public_method_sits_behind_the_error_boundary() -> None:
    public = [n for n, v in vars(Workspace).items() if not n.startswith("_")]
    unmapped = [n for n in public if not hasattr(getattr(Workspace, n), "__wrapped__")]
    assert public and unmapped == []


def test_restore_uncommitted_puts_snapshotted_work_back_exactly(ws: Workspace) -> None:
    root, head = ws.root, ws.head()
    (root / "app.py").write_text("print('mine')\n")
    (root / "run.sh").unlink()
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("untracked\n")
    (root / "staged.txt").write_text("staged\n")
    git(root, "add", "staged.txt")
    status_before = git(root, "status", "--porcelain", "--untracked-files=all")
    ref = ws.snapshot("before p2")
    assert ref is not None
    ws.apply([FileChange("app.py", "print('agent')\n")])
    ws.reset_to(head)
    ws.restore_uncommitted(ref)
    assert ws.head() == head
    assert git(root, "status", "--porcelain", "--untracked-files=all") == status_before
    assert (root / "app.py").read_text() == "print('mine')\n" and (root / "notes" / "todo.txt").exists()


def test_restore_paths_reverts_only_the_named_paths(ws: Workspace) -> None:
    root = ws.root
    (root / "servers.yaml").write_text("protected: v1\n")
    good = ws.commit_all("add servers.yaml", {})
    (root / "servers.yaml").write_text("protected: tampered\n")
    (root / "backend").mkdir()
    (root / "backend" / "planted.py").write_text("x\n")
    git(root, "add", "backend/planted.py")
    (root / "app.py").write_text("unrelated user edit\n")
    ws.restore_paths(good, ["servers.yaml", "backend/planted.py"])
    assert (root / "servers.yaml").read_text() == "protected: v1\n"
    assert not (root / "backend" / "planted.py").exists()
    assert git(root, "status", "--porcelain") == "M app.py"
    ws.restore_paths(good, [])  # nothing to do is fine


def test_peek_reads_head_and_last_good_from_the_ref_files_as_git_would(ws: Workspace) -> None:
    base = ws.head()
    assert ws.peek() == (base, None)
    ws.mark_last_good(base)
    ws.apply([FileChange("new.py", "x = 1\n")])
    later = ws.commit_all("later")
    assert ws.peek() == (later, base)
    git(ws.root, "pack-refs", "--all")  # refs now live in packed-refs only
    assert ws.peek() == (later, base)
