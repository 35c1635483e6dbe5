"""A user's own repository for the ownership tests: their commits, a .gitignore, untracked,
ignored and data files, and the `app` server (tests/fixtures/versioned.py) as server.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.safety_support import SERVER_SOURCE

USER_ENV = {
    "GIT_AUTHOR_NAME": "Dana User", "GIT_AUTHOR_EMAIL": "dana@example.invalid",
    "GIT_COMMITTER_NAME": "Dana User", "GIT_COMMITTER_EMAIL": "dana@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
}
GITIGNORE = ".env\nvenv/\ndata/\n*.log\n"
APP = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py"]}


def user_git(repo: Path, *args: str, check: bool = True) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **USER_ENV}
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=check)
    return proc.stdout.strip()


def user_repo(tmp_path: Path, name: str = "workspace") -> Path:
    """A repository as a user has it: committed code, then untracked, ignored and data files."""
    repo = tmp_path / name
    repo.mkdir()
    (repo / "server.py").write_text(SERVER_SOURCE)
    (repo / "README.md").write_text("# my project\n")
    (repo / ".gitignore").write_text(GITIGNORE)
    user_git(repo, "init", "-q", "--initial-branch=main")
    user_git(repo, "add", "-A")
    user_git(repo, "commit", "-qm", "my project")
    (repo / "TODO.txt").write_text("my untracked list\n")
    (repo / ".env").write_text("SECRET=old\n")
    (repo / "data").mkdir()
    (repo / "data" / "local.db").write_bytes(b"\x00my precious rows")
    (repo / "venv").mkdir()
    (repo / "venv" / "site.py").write_text("# a virtualenv\n")
    return repo


def every_committed_path(repo: Path) -> set[str]:
    """Every path in every commit of the branches and of the supervisor's code refs (last good,
    verified, rejected); saved user work under refs/metasup/saved/ is the one place that keeps
    ignored bytes, on purpose."""
    out = user_git(repo, "log", "--branches", "--exclude=refs/metasup/saved/*", "--glob=refs/metasup/*",
                   "--name-only", "--format=")
    return {line for line in out.splitlines() if line}


def config_for(make_config: Any, tmp_path: Path, repo: Path, servers: list[dict[str, Any]], **overrides: Any) -> Path:
    return make_config(tmp_path, servers, workspace=str(repo), state_dir=str(tmp_path / "state"), **overrides)
