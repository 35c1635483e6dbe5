"""Which untracked files are new code (`Workspace.new_files`): judged by last good's committed
`.gitignore` files and the user's own rules as they were when the workspace opened, on a real
repository. A rule anyone can write on disk since (an untracked or edited `.gitignore`,
info/exclude, the user's excludes file) hides nothing; a nested repository hides nothing; the user's real ignored files stay ignored, and looking again costs no git call."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from metasup_mcp.safety import gitcmd, trusted_ignore
from metasup_mcp.safety.workspace import Workspace


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def py(path: str) -> bool:
    return path.endswith(".py")


def write(root: Path, rel: str, text: str = "x = 1\n") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


@pytest.fixture
def ws(tmp_path: Path, pinned_git: None) -> Workspace:
    root = tmp_path / "repo"
    write(root, "app.py")
    write(root, ".gitignore", "venv/\n*.log\n")
    write(root, "lib/.gitignore", "cache/\n")
    sh(root, "init", "-q")
    sh(root, "add", "-A")
    sh(root, "commit", "-qm", "start")
    return Workspace.open_or_init(root)


def test_a_committed_gitignore_still_hides_venv_and_a_second_look_runs_no_more_git(ws: Workspace, monkeypatch) -> None:
    for i in range(50):
        write(ws.root, f"venv/lib/site-packages/pkg{i}/__init__.py")
    write(ws.root, "lib/cache/generated.py")
    write(ws.root, "new.py")
    head = ws.head()
    assert ws.new_files(head, py) == ["new.py"]
    calls: list[list[str]] = []
    real = gitcmd.run_git
    monkeypatch.setattr("metasup_mcp.safety.refs.run_git", lambda args, **k: (calls.append(list(args)), real(args, **k))[1])
    monkeypatch.setattr(trusted_ignore, "run_git", lambda args, **k: (calls.append(list(args)), real(args, **k))[1])
    seen = ws.glance(ignored=True)
    assert "venv/" in seen.ignored and not any(p.startswith("venv/lib") for p in seen.ignored)
    assert ws.new_files(head, py, seen) == ["new.py"]
    assert [c[c.index("status")] for c in calls] == ["status"]  # the glance alone: verdicts are kept


def test_an_untracked_gitignore_that_ignores_itself_hides_nothing(ws: Workspace) -> None:
    write(ws.root, "plugins/.gitignore", "*\n")
    write(ws.root, "plugins/evil.py")
    assert "plugins/evil.py" not in ws.glance().untracked  # git's own look misses it
    assert ws.new_files(ws.head(), py) == ["plugins/evil.py"]


def test_a_modified_committed_gitignore_is_judged_by_last_goods_version(ws: Workspace) -> None:
    last_good = ws.head()
    write(ws.root, ".gitignore", "*.py\n")  # hides every new .py on disk, and un-ignores venv/
    write(ws.root, "evil.py")
    write(ws.root, "venv/lib/site.py")
    assert ws.new_files(last_good, py) == ["evil.py"]
    sh(ws.root, "commit", "-qam", "a user's commit past last good: not last good's rules")
    assert ws.new_files(last_good, py) == ["evil.py"]


def test_rules_written_to_info_exclude_or_the_users_excludes_file_after_opening_hide_nothing(ws: Workspace, tmp_path: Path) -> None:
    with (ws.git_dir / "info" / "exclude").open("a") as rules:
        rules.write("evil.py\nhidden/\n")
    write(tmp_path / "home", ".config/git/ignore", "global.py\n")
    for rel in ("evil.py", "hidden/deep/mod.py", "global.py", "hidden/notes.txt", "run.log"):
        write(ws.root, rel)
    assert ws.new_files(ws.head(), py) == ["evil.py", "global.py", "hidden/deep/mod.py"]


def test_the_users_own_ignore_rules_as_they_were_when_the_workspace_opened_still_hide(tmp_path: Path, pinned_git: None) -> None:
    root = tmp_path / "repo"
    write(root, "app.py")
    sh(root, "init", "-q")
    sh(root, "add", "-A")
    sh(root, "commit", "-qm", "start")
    (root / ".git" / "info" / "exclude").write_text("scratch.py\n")
    write(tmp_path / "home", ".config/git/ignore", "*.local.py\n")
    write(root, "scratch.py")
    write(root, "settings.local.py", "PASSWORD = 'mine'\n")
    ws = Workspace.open_or_init(root)
    assert ws.new_files(ws.head(), py) == []
    assert ws.ignored(["settings.local.py", "scratch.py"]) == {"settings.local.py", "scratch.py"}


def test_every_file_of_an_untracked_nested_repository_is_listed_but_not_its_git_folder(ws: Workspace) -> None:
    sh(ws.root, "init", "-q", "plugins")
    write(ws.root, "plugins/evil.py")
    write(ws.root, "plugins/sub/more.py")
    write(ws.root, "plugins/venv/x.py")  # `venv/` matches at any depth: last good's rules apply inside
    write(ws.root, "venv/inner/.git/HEAD", "ref: refs/heads/main\n")
    write(ws.root, "venv/inner/kept.py")  # a nested repository inside an ignored folder: still ignored
    assert ws.glance().untracked == ["plugins/"]
    assert ws.new_files(ws.head(), py) == ["plugins/evil.py", "plugins/sub/more.py"]


def test_commit_paths_commits_a_file_only_an_untrusted_rule_ignores_but_never_a_trusted_one(ws: Workspace) -> None:
    with (ws.git_dir / "info" / "exclude").open("a") as rules:
        rules.write("evil.py\n")
    write(ws.root, "evil.py")
    write(ws.root, "venv/x.py")
    commit = ws.commit_paths(["evil.py", "venv/x.py"], "screened new files")
    assert ws.tracked_files(commit) == [".gitignore", "app.py", "evil.py", "lib/.gitignore"]


def test_a_tracked_file_under_an_ignored_folder_is_not_ignored(ws: Workspace) -> None:
    write(ws.root, "venv/pinned.py")
    sh(ws.root, "add", "-f", "venv/pinned.py")  # staged only: the user's index tracks it
    assert ws.ignored(["venv/pinned.py", "venv/other.py"]) == {"venv/other.py"}
    sh(ws.root, "commit", "-qm", "force-added")
    assert ws.ignored(["venv/pinned.py"]) == set()
