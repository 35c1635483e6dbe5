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
    sha = ws.commit_paths(["new.py"], "add new", {})
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert git(ws.root, "rev-parse", "HEAD") == sha
    assert "new.py" in git(ws.root, "ls-files")
    assert not (tmp_path / "stray-index").exists()
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=decoy, capture_output=True).returncode != 0


def test_save_records_the_named_paths_as_on_disk_and_the_index_without_touching_anything(ws: Workspace) -> None:
    root, head = ws.root, ws.head()
    (root / "app.py").write_text("print('edited')\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("untracked\n")
    (root / "secret.log").write_text("ignored bytes\n")
    (root / "staged.txt").write_text("staged\n")
    git(root, "add", "staged.txt")
    index_before = (root / ".git" / "index").read_bytes()
    saved = ws.save(["app.py", "notes/todo.txt", "secret.log", "run.sh", "never.txt"], "before proposal p1")
    assert saved.ref is not None and saved.ref.startswith("refs/metasup/saved/")
    assert (root / ".git" / "index").read_bytes() == index_before  # the user's index untouched
    assert ws.head() == head and (root / "app.py").read_text() == "print('edited')\n"
    assert git(root, "show", f"{saved.ref}:app.py") == "print('edited')"
    assert git(root, "show", f"{saved.ref}:notes/todo.txt") == "untracked"
    assert git(root, "show", f"{saved.ref}:secret.log") == "ignored bytes"  # ignored files too
    assert git(root, "show", f"{saved.ref}^2:staged.txt") == "staged"  # the index, as git stash keeps it
    assert git(root, "rev-parse", f"{saved.ref}^1") == head
    assert "never.txt" not in git(root, "ls-tree", "-r", "--name-only", saved.ref)


def test_saving_paths_that_match_head_needs_no_ref(ws: Workspace) -> None:
    (ws.root / "debug.log").write_text("not named: not saved\n")
    saved = ws.save(["app.py"], "nothing to do")
    assert saved.ref is None and saved.commit == ws.head()
    assert ws.list_refs("refs/metasup/saved/") == []


def test_apply_and_commit_paths_write_files_keep_modes_and_append_trailers(ws: Workspace) -> None:
    root = ws.root
    changes = [FileChange("lib/deep/mod.py", "VALUE = 2\n"), FileChange("run.sh", "#!/bin/sh\necho hi\n"),
               FileChange("app.py", None, delete=True)]
    ws.apply(changes)
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755
    assert not (root / "app.py").exists()
    assert not [p for p in root.rglob("*.tmp")]
    sha = ws.commit_paths([c.path for c in changes], "Add mod\n", {"Metasup-Proposal": "p-42", "Metasup-Strategy": "auto"})
    assert ws.head() == sha and not ws.is_dirty()
    assert git(root, "log", "-1", "--format=%(trailers:key=Metasup-Proposal,valueonly)") == "p-42"
    assert git(root, "log", "-1", "--format=%s") == "Add mod"
    assert git(root, "ls-files", "-s", "run.sh").startswith("100755")
    assert git(root, "status", "--porcelain") == "", "the user's index follows the commit: no reverse diff staged"


def test_commit_paths_stages_exactly_the_named_code_paths(ws: Workspace) -> None:
    root, head = ws.root, ws.head()
    (root / "TODO.txt").write_text("the user's untracked note\n")
    (root / "run.sh").write_text("#!/bin/sh\n# the user's own edit\n")
    (root / "trace.log").write_text("ignored\n")
    ignored_before = ws.ignored(["app.py", ".gitignore", "trace.log"])
    ws.apply([FileChange("app.py", "print('v2')\n"), FileChange(".gitignore", "")])
    sha = ws.commit_paths(["app.py", ".gitignore", "trace.log"], "v2", ignored=ignored_before)
    assert git(root, "diff-tree", "-r", "--name-only", "--no-commit-id", head, sha).split() == [".gitignore", "app.py"]
    assert sorted(git(root, "status", "--porcelain").splitlines()) == ["?? TODO.txt", "?? trace.log", "M run.sh"]


def test_committing_nothing_is_refused(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="nothing to commit"):
        ws.commit_paths(["app.py"], "empty", {})


def test_put_back_restores_what_a_change_overwrote_and_removes_what_it_created(ws: Workspace) -> None:
    root, head = ws.root, ws.head()
    (root / "app.py").write_text("print('mine, uncommitted')\n")
    (root / ".env").write_text("SECRET=old\n")
    (root / ".gitignore").write_text("*.log\n.env\ndata/\n")
    (root / "data").mkdir()
    (root / "data" / "local.db").write_bytes(b"\x00precious")
    touched = ["app.py", ".env", "data/local.db", "brand_new.py"]
    saved = ws.save(touched, "before p1")
    ws.apply([FileChange("app.py", "print('agent')\n"), FileChange(".env", "SECRET=new\n"),
              FileChange("data/local.db", None, delete=True), FileChange("brand_new.py", "x = 1\n")])
    commit = ws.commit_paths(touched, "p1")
    ws.put_back(saved, touched)
    assert ws.move_head(commit, head) and ws.head() == head
    assert (root / "app.py").read_text() == "print('mine, uncommitted')\n"
    assert (root / ".env").read_text() == "SECRET=old\n"
    assert (root / "data" / "local.db").read_bytes() == b"\x00precious"
    assert not (root / "brand_new.py").exists()
    assert git(root, "status", "--porcelain") == "M .gitignore\n M app.py"


def test_put_back_from_a_commit_touches_only_the_named_paths(ws: Workspace) -> None:
    root, good = ws.root, ws.head()
    (root / "app.py").write_text("tampered\n")
    (root / "backend").mkdir()
    (root / "backend" / "planted.py").write_text("x\n")
    git(root, "add", "backend/planted.py")
    (root / "run.sh").write_text("unrelated user edit\n")
    ws.put_back(good, ["app.py", "backend/planted.py"])
    assert (root / "app.py").read_text() == "print('v1')\n"
    assert not (root / "backend" / "planted.py").exists()
    assert git(root, "status", "--porcelain") == "M run.sh"
    ws.put_back(good, [])  # nothing to do is fine


def test_move_head_only_moves_a_branch_still_where_it_was_expected(ws: Workspace) -> None:
    base = ws.head()
    ws.apply([FileChange("a.py", "a\n")])
    first = ws.commit_paths(["a.py"], "a")
    assert not ws.move_head(base, base), "the branch is at `first`, not at `base`"
    assert ws.head() == first and ws.move_head(first, base) and ws.head() == base


def test_putting_back_drops_the_bytecode_of_the_code_it_replaces(ws: Workspace) -> None:
    root = ws.root
    cache = root / "__pycache__"
    cache.mkdir()
    (cache / "app.cpython-311.pyc").write_bytes(b"stale")
    (cache / "other.cpython-311.pyc").write_bytes(b"kept")
    ws.put_back(ws.head(), ["app.py"])
    assert not (cache / "app.cpython-311.pyc").exists() and (cache / "other.cpython-311.pyc").exists()


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
    bad = ws.commit_paths(["bad.py"], "bad", {"Metasup-Proposal": "p1"})
    assert ws.keep_rejected("p1", bad) == "refs/metasup/rejected/p1"
    assert ws.last_good() == base
    assert ws.move_head(bad, base)
    assert ws.head() == base and ws.is_ancestor(base, bad) and not ws.is_ancestor(bad, base)
    refs = {(r.name, r.sha) for r in ws.list_refs()}
    verified = {(r.name, r.sha) for r in ws.list_refs(REF_VERIFIED)}
    assert refs == {("refs/metasup/rejected/p1", bad), (REF_LAST_GOOD, base)} | verified
    assert ws.verified_commits() == [base], "a commit once marked last good stays a rollback target"
    with pytest.raises(ValueError):
        ws.keep_rejected("../escape", bad)


def test_prune_keeps_the_newest_rejected_refs_and_never_saved_user_work(ws: Workspace) -> None:
    root, head = ws.root, ws.head()
    tree = git(root, "rev-parse", "HEAD^{tree}")
    for day in range(1, 5):
        date = f"2024-01-0{day}T12:00:00Z"
        sha = git(root, "commit-tree", tree, "-p", head, "-m", f"r{day}", GIT_COMMITTER_DATE=date)
        ws.keep_rejected(f"r{day}", sha)
    saved = []
    for n in range(3):
        (root / "scratch.txt").write_text(f"{n}\n")
        saved.append(ws.save(["scratch.txt"], f"s{n}").ref)
    ws.mark_last_good(head)
    deleted = ws.prune(keep=2)
    assert {r.name for r in ws.list_refs("refs/metasup/rejected/")} == {"refs/metasup/rejected/r4", "refs/metasup/rejected/r3"}
    assert sorted(r.name for r in ws.list_refs("refs/metasup/saved/")) == sorted(saved)
    assert set(deleted) == {"refs/metasup/rejected/r1", "refs/metasup/rejected/r2"}
    assert ws.last_good() == head


def test_commit_info_and_initial_commit(ws: Workspace) -> None:
    first = ws.head()
    ws.apply([FileChange("b.txt", "b\n")])
    second = ws.commit_paths(["b.txt"], "Second commit\n\nbody", {})
    info = ws.commit_info(second)
    assert (info.sha, info.summary) == (second, "Second commit") and info.date.tzinfo is not None
    assert ws.initial_commit() == first
    with pytest.raises(WorkspaceError):
        ws.commit_info("0123456789abcdef0123456789abcdef01234567")


def test_changed_paths_lists_committed_uncommitted_and_untracked_changes(ws: Workspace) -> None:
    root, base = ws.root, ws.head()
    ws.apply([FileChange("committed.py", "c\n")])
    ws.commit_paths(["committed.py"], "c", {})
    (root / "app.py").write_text("edited\n")
    (root / "run.sh").unlink()
    (root / "new dir").mkdir()
    (root / "new dir" / "untracked é.txt").write_text("u")
    (root / "ignored.log").write_text("i")
    assert ws.changed_paths(base) == ["app.py", "committed.py", "new dir/untracked é.txt", "run.sh"]
    assert ws.changed_paths("HEAD") == ["app.py", "new dir/untracked é.txt", "run.sh"]
    assert ws.changed_paths(base, untracked=False, worktree=False) == ["committed.py"]


def test_write_bundle_keeps_only_the_newest(ws: Workspace, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    made = [ws.write_bundle(backups, keep=3) for _ in range(4)]
    assert sorted(backups.iterdir()) == made[1:]


def test_a_bundle_restores_a_repository_whose_objects_were_deleted(ws: Workspace, tmp_path: Path) -> None:
    root, backups = ws.root, tmp_path / "backups"
    ws.apply([FileChange("good.py", "ok\n")])
    good = ws.commit_paths(["good.py"], "good", {})
    ws.mark_last_good(good)
    ws.keep_rejected("p9", ws.initial_commit())
    (root / "app.py").write_text("user edit\n")
    snap = ws.save(["app.py"], "before backup").ref
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
        ws.put_back("deadbeef", ["app.py"])
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(WorkspaceError):
        ws.write_bundle(tmp_path / "file" / "backups")
    with pytest.raises(WorkspaceError):
        ws.apply([FileChange("missing.txt", None, delete=True)])
    with pytest.raises(WorkspaceError, match="no metasup-"):
        Workspace.restore_from_bundle(ws.root, tmp_path / "empty")


def test_every_public_method_sits_behind_the_error_boundary() -> None:
    public = [n for cls in Workspace.__mro__[:-1] for n in vars(cls) if not n.startswith("_")]
    unmapped = [n for n in public if not hasattr(getattr(Workspace, n), "__wrapped__")]
    assert public and unmapped == []


def test_peek_reads_head_and_last_good_from_the_ref_files_as_git_would(ws: Workspace) -> None:
    base = ws.head()
    assert ws.peek() == (base, None)
    ws.mark_last_good(base)
    ws.apply([FileChange("new.py", "x = 1\n")])
    later = ws.commit_paths(["new.py"], "later")
    assert ws.peek() == (later, base)
    git(ws.root, "pack-refs", "--all")  # refs now live in packed-refs only
    assert ws.peek() == (later, base)
