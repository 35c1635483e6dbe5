"""`unscreened_code` on a user's repository, without children: what counts as code nobody
screened (the guard's rule: no data, ignored or operator-owned files; untracked files only under
an explicit `watch`), and what does not (the change's own paths, a candidate on trial)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from metasup_mcp.config import ServerConfig
from metasup_mcp.evolution.unscreened import unscreened_code, unscreened_reason
from metasup_mcp.safety.ownership import Ownership
from metasup_mcp.safety.workspace import Workspace
from tests.ownership_support import user_git, user_repo
from tests.test_restart_glance import hide_from_git


def server(name: str, *watch: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, config=ServerConfig(name=name, command="python", watch=list(watch)))


def opened(tmp_path: Path) -> tuple[Workspace, Path, str]:
    repo = user_repo(tmp_path)  # server.py, README.md committed; TODO.txt untracked; .env, data/, venv/ ignored
    (repo / "src").mkdir()
    (repo / "src" / "lib.py").write_text("X = 1\n")
    user_git(repo, "add", "src")
    user_git(repo, "commit", "-qm", "lib")
    ws = Workspace.open_or_init(repo, (), Ownership(root=repo, data_paths=("data/", "notes.json")))
    return ws, repo, user_git(repo, "rev-parse", "HEAD")


def test_only_code_the_restarted_servers_watch_counts_never_data_ignored_or_stray_untracked_files(tmp_path):
    ws, repo, base = opened(tmp_path)
    app, everything = server("app", "server.py", "src/"), server("all")
    (repo / ".env").write_text("SECRET=new\n")
    (repo / "notes.json").write_text("{}\n")
    (repo / "TODO.txt").write_text("more\n")
    (repo / "src" / "new.py").write_text("Y = 2\n")
    assert unscreened_code(ws, base, [app, everything], [], []) == {"app": ["src/new.py"]}
    (repo / "README.md").write_text("# edited\n")
    assert unscreened_code(ws, base, [app, everything], [], []) == {"app": ["src/new.py"], "all": ["README.md"]}


def test_the_changes_own_paths_and_a_candidate_on_trial_are_not_unscreened(tmp_path):
    ws, repo, base = opened(tmp_path)
    app = server("app", "server.py", "src/")
    (repo / "server.py").write_text("# mine\n")
    (repo / "src" / "lib.py").write_text("X = 2\n")
    assert unscreened_code(ws, base, [app], [], touched=["server.py"]) == {"app": ["src/lib.py"]}
    assert unscreened_code(ws, base, [app], [], touched=["server.py"], on_trial=["src/lib.py"]) == {}


def test_a_users_commit_counts_for_every_server_whose_code_it_changes_running_or_stopped(tmp_path):
    ws, repo, base = opened(tmp_path)
    app, other = server("app", "server.py"), server("other", "src/")
    (repo / "src" / "lib.py").write_text("X = 2\n")
    user_git(repo, "commit", "-qam", "mine")
    assert unscreened_code(ws, base, [app], [app, other], []) == {"other": ["src/lib.py"]}
    reason = unscreened_reason({"other": ["src/lib.py"]})
    assert reason.startswith("unscreened_edits:") and "restart_server other" in reason and "src/lib.py" in reason
    stopped = unscreened_reason({"other": ["src/lib.py"]}, stopped={"other"})
    assert "start_server other" in stopped and "restart_server" not in stopped


def test_a_stopped_servers_uncommitted_edits_do_not_count_the_change_never_commits_them(tmp_path):
    ws, repo, base = opened(tmp_path)
    app, other = server("app", "server.py"), server("other", "src/")
    (repo / "src" / "lib.py").write_text("X = 2\n")  # on disk only: its own start screens it
    assert unscreened_code(ws, base, [app], [app, other], ["server.py"]) == {}


def test_an_edit_git_cannot_see_counts_for_a_restarted_server(tmp_path):
    ws, repo, base = opened(tmp_path)
    app = server("app", "server.py", "src/")
    hide_from_git(repo, "src/lib.py", "X = 9\n")
    assert unscreened_code(ws, base, [app], [app], ["server.py"]) == {"app": ["src/lib.py"]}
