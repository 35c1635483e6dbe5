"""Attacks on the trusted ignore rules for new watched files, the supervisor's own record of last
good, the put-back that replaces what a child left, and the index's merge state across a
rollback: as a hostile child (same user: any file it reaches, links, git itself, racing the
supervisor) and as a new user on their own repository. A case marked xfail is a hole still
open: the reason names it; the test passes once it is closed (and then the mark must go)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from metasup_mcp.safety import workspace as workspace_module
from metasup_mcp.safety.gitcmd import WorkspaceError
from metasup_mcp.safety.workspace import Workspace


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def write(root: Path, rel: str, text: str = "x = 1\n") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def plugins(path: str) -> bool:
    """`watch: [plugins/]` as ServerConfig.watches reads a folder prefix."""
    return path.startswith("plugins/")


@pytest.fixture
def ws(tmp_path: Path, pinned_git: None) -> Workspace:
    root = tmp_path / "repo"
    write(root, "app.py")
    write(root, "plugins/base.py")
    write(root, ".gitignore", "venv/\n")
    sh(root, "init", "-q", "-b", "main")
    sh(root, "add", "-A")
    sh(root, "commit", "-qm", "start")
    opened = Workspace.open_or_init(root)
    opened.mark_last_good(opened.head())
    return opened


# --- 1. new files under an explicit watch ---------------------------------------------------


def test_a_watched_folder_that_is_a_symlink_into_an_ignored_folder_is_new_code(ws: Workspace) -> None:
    write(ws.root, "venv/lib/evil.py", "import os\n")
    os.symlink("venv/lib", ws.root / "ext")
    assert (ws.root / "ext/evil.py").is_file()  # what `import ext.evil` runs
    assert ws.new_files(ws.head(), lambda p: p.startswith("ext/"))


def test_a_symlink_below_a_watched_folder_is_a_new_file(ws: Workspace) -> None:
    write(ws.root, "venv/lib/evil.py", "import os\n")
    os.symlink("../venv/lib", ws.root / "plugins" / "extra")
    assert ws.new_files(ws.head(), plugins) == ["plugins/extra"]


def test_a_nested_repository_staged_as_a_gitlink_under_a_watch_is_screened(ws: Workspace) -> None:
    nested = ws.root / "plugins" / "extra"
    write(nested, "evil.py", "import os\n")
    sh(nested, "init", "-q")
    sh(nested, "add", "-A")
    sh(nested, "commit", "-qm", "mine")
    sh(ws.root, "add", "plugins/extra")  # the child writes the user's index: a gitlink
    tracked, untracked = ws.changes_since(ws.head(), plugins)
    assert "plugins/extra/evil.py" in [*tracked, *untracked, *ws.new_files(ws.head(), plugins)]


def test_names_with_a_newline_glob_characters_or_a_backslash_are_new_files_as_they_are(ws: Workspace) -> None:
    names = ["plugins/a\nb.py", "plugins/[ab].py", "plugins/*", "plugins/\\x.py", "plugins/:(top)x.py"]
    for name in names:
        write(ws.root, name)
    write(ws.root, "plugins/a.py")  # what `[ab].py` and `*` would match as patterns
    write(ws.root, ".git/info/exclude", "plugins/*\n")  # on disk after opening: hides nothing
    assert ws.new_files(ws.head(), plugins) == sorted([*names, "plugins/a.py"])


# --- 2. the last-good ref -------------------------------------------------------------------


def test_a_last_good_ref_made_symbolic_to_the_users_branch_never_moves_that_branch(ws: Workspace) -> None:
    told: list[tuple[str | None, str]] = []
    ws.on_foreign_last_good = lambda found, ours: told.append((found, ours))
    last_good = ws.last_good()
    (ws.git_dir / "refs/metasup/last-good").write_text("ref: refs/heads/main\n")
    assert ws.last_good() == last_good
    write(ws.root, "app.py", "x = 2\n")
    sh(ws.root, "commit", "-qam", "the user's own work")
    mine = sh(ws.root, "rev-parse", "main")
    assert ws.last_good() == last_good
    assert sh(ws.root, "rev-parse", "main") == mine  # the user's branch is theirs
    assert told  # and the symbolic ref was reported as tampering


def test_a_deleted_or_repacked_last_good_ref_is_put_back_and_reported(ws: Workspace) -> None:
    told: list[tuple[str | None, str]] = []
    ws.on_foreign_last_good = lambda found, ours: told.append((found, ours))
    last_good = ws.last_good()
    write(ws.root, "app.py", "evil = 1\n")
    sh(ws.root, "commit", "-qam", "a child's commit")
    evil = ws.head()
    sh(ws.root, "pack-refs", "--all")
    (ws.git_dir / "refs/metasup/last-good").unlink(missing_ok=True)
    packed = (ws.git_dir / "packed-refs").read_text().replace(f"{last_good} refs/metasup/last-good", f"{evil} refs/metasup/last-good")
    (ws.git_dir / "packed-refs").write_text(packed)
    assert ws.last_good() == last_good and told[-1] == (evil, last_good)
    sh(ws.root, "update-ref", "-d", "refs/metasup/last-good")
    assert ws.last_good() == last_good and told[-1] == (None, last_good)
    assert sh(ws.root, "rev-parse", "refs/metasup/last-good") == last_good


# --- 3. a put-back replacing what a child left --------------------------------------------


def test_a_link_out_swapped_back_during_a_put_back_removes_nothing_outside(ws: Workspace, tmp_path: Path, monkeypatch) -> None:
    outside = tmp_path / "outside"
    (outside / "new.py" / "keep").mkdir(parents=True)  # the user's (empty) folders, outside the workspace
    last_good = ws.head()
    write(ws.root, "plugins/new.py", "evil = 1\n")  # the child's new file on trial
    saved = ws.save(["plugins/new.py"], "before rolling back")
    (ws.root / "plugins/new.py").unlink()
    (ws.root / "plugins/base.py").unlink()
    (ws.root / "plugins").rmdir()
    os.symlink(outside, ws.root / "plugins")  # and then a link out where the folder was
    real = workspace_module.unlink_inside

    def racing(root: Path, rel: str) -> None:  # the child wins the race: the link is back at once
        real(root, rel)
        if rel == "plugins" and not os.path.lexists(root / "plugins"):
            os.symlink(outside, root / "plugins")

    monkeypatch.setattr(workspace_module, "unlink_inside", racing)
    try:
        ws.put_back(last_good, ["plugins/new.py"])
    except Exception:
        pass  # refusing is fine; touching outside is not
    assert (outside / "new.py" / "keep").is_dir()
    assert saved.ref is not None


def test_a_deeper_link_out_swapped_back_during_a_put_back_is_refused_by_name(ws: Workspace, tmp_path: Path, monkeypatch) -> None:
    outside = tmp_path / "outside"
    (outside / "new.py" / "keep").mkdir(parents=True)
    write(ws.root, "plugins/sub/old.py")
    sh(ws.root, "add", "-A")
    sh(ws.root, "commit", "-qm", "sub")
    last_good = ws.head()
    write(ws.root, "plugins/sub/new.py", "evil = 1\n")
    ws.save(["plugins/sub/new.py"], "before rolling back")
    (ws.root / "plugins/sub/new.py").unlink()
    (ws.root / "plugins/sub/old.py").unlink()
    (ws.root / "plugins/sub").rmdir()
    os.symlink(outside, ws.root / "plugins/sub")
    real = workspace_module.unlink_inside

    def racing(root: Path, rel: str) -> None:
        real(root, rel)
        if rel == "plugins/sub" and not os.path.lexists(root / "plugins/sub"):
            os.symlink(outside, root / "plugins/sub")

    monkeypatch.setattr(workspace_module, "unlink_inside", racing)
    with pytest.raises(WorkspaceError, match="plugins/sub/new.py"):
        ws.put_back(last_good, ["plugins/sub/new.py"])
    assert (outside / "new.py" / "keep").is_dir()
    assert (ws.root / "plugins/base.py").read_text() == "x = 1\n"


def test_a_hardlink_to_a_file_outside_is_replaced_never_written_through(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's file elsewhere\n")
    last_good = ws.head()
    (ws.root / "app.py").unlink()
    os.link(outside, ws.root / "app.py")
    ws.put_back(last_good, ["app.py"])
    assert outside.read_text() == "the user's file elsewhere\n"
    assert (ws.root / "app.py").read_text() == "x = 1\n"


# --- 4. the index's merge state across a put-back -------------------------------------------


def test_an_untouched_conflict_and_a_touched_paths_bits_survive_a_save_and_put_back(ws: Workspace) -> None:
    root = ws.root
    write(root, "notes.txt", "base\n")
    sh(root, "add", "notes.txt")
    sh(root, "commit", "-qm", "notes")
    sh(root, "checkout", "-qb", "other")
    write(root, "notes.txt", "theirs\n")
    sh(root, "commit", "-qam", "theirs")
    sh(root, "checkout", "-q", "main")
    write(root, "notes.txt", "ours\n")
    sh(root, "commit", "-qam", "ours")
    subprocess.run(["git", "merge", "-q", "other"], cwd=root, capture_output=True)
    before = sh(root, "ls-files", "--stage", "notes.txt")
    assert len(before.splitlines()) == 3  # stages 1, 2 and 3: a conflict the user is resolving
    sh(root, "update-index", "--skip-worktree", "app.py")
    write(root, "plugins/base.py", "evil = 1\n")
    saved = ws.save(["plugins/base.py", "app.py"], "before a put-back")
    ws.put_back(ws.head(), ["plugins/base.py", "app.py"])
    ws.put_back(saved, ["plugins/base.py", "app.py"])
    assert sh(root, "ls-files", "--stage", "notes.txt") == before
    assert sh(root, "ls-files", "-v", "app.py").startswith("S ")
    assert (root / "notes.txt").read_text().startswith("<<<<<<<")


# --- links and gitlinks to watched code, end to end through the candidate commit ------------


def test_a_watch_asked_about_a_folder_names_what_may_lie_under_it() -> None:
    from metasup_mcp.config import ServerConfig

    config = ServerConfig(name="s", command="python", watch=["ext/sub/", "src/*.py", "tools/run.py"])
    assert [config.watches(p) for p in ("ext/", "ext/sub/", "src/", "tools/", "other/", "ext")] == [
        True, True, True, True, False, False]


def test_a_tracked_symlink_pointed_into_an_ignored_folder_is_code_and_committed_as_a_link(ws: Workspace) -> None:
    from metasup_mcp.config import ServerConfig
    from metasup_mcp.evolution.watched import watches_code

    write(ws.root, "vendor/lib/ok.py")
    os.symlink("vendor/lib", ws.root / "ext")
    sh(ws.root, "add", "-A")
    sh(ws.root, "commit", "-qm", "a link")
    ws.mark_last_good(ws.head())
    write(ws.root, "venv/lib/evil.py", "import os\n")
    os.unlink(ws.root / "ext")
    os.symlink("venv/lib", ws.root / "ext")
    tracked, _ = ws.changes_since(ws.head(), lambda p: p.startswith("ext/"))
    config = ServerConfig(name="s", command="python", watch=["ext/"])
    assert tracked == ["ext"] and watches_code(config, "ext", False, link=True) and not watches_code(config, "ext", False)
    candidate = ws.commit_paths(tracked, "candidate")
    assert sh(ws.root, "ls-tree", candidate, "ext").split()[0] == "120000"  # the link, never followed


def test_a_gitlink_committed_past_last_good_is_its_files_and_the_candidate_holds_them(ws: Workspace) -> None:
    nested = ws.root / "plugins" / "extra"
    write(nested, "evil.py", "import os\n")
    sh(nested, "init", "-q")
    sh(nested, "add", "-A")
    sh(nested, "commit", "-qm", "mine")
    sh(ws.root, "add", "plugins/extra")
    sh(ws.root, "commit", "-qm", "the child commits a gitlink")
    tracked, untracked = ws.changes_since(ws.last_good(), plugins)
    assert (tracked, untracked) == ([], ["plugins/extra/evil.py"])
    candidate = ws.commit_paths(untracked, "candidate")
    assert sh(ws.root, "ls-tree", "-r", candidate, "plugins/extra").split()[:1] == ["100644"]
    assert sh(ws.root, "ls-files", "-s", "plugins/extra").startswith("100644")  # the user's index as committed
