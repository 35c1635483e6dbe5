"""`metasup-mcp init [DIR]`: a commented `servers.yaml` and a workspace ready to supervise.

Laid out along the ownership model (docs/architecture.md): the config and the state folder
live in DIR, beside the workspace and never inside it, so nothing the supervisor commits,
resets or rolls back in the workspace can reach them.

    DIR/servers.yaml      operator-owned configuration
    DIR/.metasup/         journal, audit log, proposals, backups (operator-owned; the
                          default state folder beside a config outside the workspace)
    DIR/workspace/        the git repository the children run from (or --workspace PATH)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metasup_mcp.config import ConfigError, load_config
from metasup_mcp.config_edit import write_atomically

TEMPLATE = """\
# metasup-mcp configuration, written by `metasup-mcp init`.
# Relative paths resolve against this file's folder. Check it: metasup-mcp check-config {config}
# Every key, its type and default: docs/configuration.md
#
# This file and the state folder live outside the workspace: nothing the supervisor
# commits, resets or rolls back there can touch them.
supervisor:
  # The git repository the children run from: what the safety loop commits and rolls back.
  workspace: {workspace}
  # Journal, audit log, proposals and backups. Operator-owned, never inside the workspace.
  state_dir: {state_dir}
  # Files the servers write at run time (globs): never committed, never rolled back.
  data_paths: []
  min_runtime: 10s              # a death sooner than this after a start is a failed start
  max_failures: 5               # consecutive rolled-back changes before changes are refused
  checks:                       # run after a change is applied, before children restart
    - {{name: compile, run: builtin:py_compile}}
    # - {{name: tests, run: [python, -m, pytest, -q], timeout: 300s}}
  approval: {{mode: auto}}        # auto | human | deny
  status_http: {{enabled: true, host: 127.0.0.1, port: 9000}}
  # Add servers with `metasup-mcp add NAME -- COMMAND [ARGS...]` (or `--url URL` for a remote
  # one), or bring Claude Desktop's over with `metasup-mcp import-claude-config --merge`.
  # An entry looks like:
  #   - name: time
  #     command: uvx
  #     args: [mcp-server-time, --local-timezone, UTC]
  #     env: {{}}                   # only these plus a minimal base environment reach the child
  #     watch: [time/]            # changes under these paths restart this server (default: all)
  mcp_servers: []
"""


class InitError(Exception):
    """`init` would overwrite a config or put operator-owned files inside the workspace."""


def init(directory: Path, workspace: Path | None = None, force: bool = False) -> int:
    """Write DIR/servers.yaml, create DIR/.metasup/, open or create the workspace as a git repository.

    Exit 0 with the next steps on stderr; `InitError` (exit 2) if servers.yaml exists (without
    `force`) or DIR would sit inside the workspace.
    """
    directory = directory.resolve()
    config_path = directory / "servers.yaml"
    workspace = (workspace or directory / "workspace").resolve()
    state_dir = directory / ".metasup"
    if config_path.exists() and not force:
        raise InitError(f"{config_path} already exists: edit it, or pass --force to overwrite it")
    if directory == workspace or directory.is_relative_to(workspace):
        raise InitError(
            f"{directory} is inside the workspace {workspace}: the config and the state folder must "
            "live outside it; run init in a folder beside the workspace (e.g. init ../metasup --workspace .)"
        )
    if workspace.exists() and not workspace.is_dir():
        raise InitError(f"the workspace {workspace} is a file, not a folder: give --workspace the folder of your "
                        "repository (or leave it out to create DIR/workspace)")
    outer = _enclosing_repository(directory)
    if outer is not None and outer != workspace:
        print(
            f"note: {directory} is inside the git repository {outer}; to supervise that repository itself, "
            f"run init in a folder outside it with --workspace {outer}",
            file=sys.stderr,
        )
    directory.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(mode=0o700, exist_ok=True)
    _prepare_workspace(workspace)
    text = TEMPLATE.format(
        config=_shown(config_path),
        workspace=_relative(workspace, directory),
        state_dir=_relative(state_dir, directory),
    )
    write_atomically(config_path, text)
    try:
        load_config(config_path)
    except ConfigError:  # the template and the model disagree: a bug, never the user's fault
        config_path.unlink()
        raise
    print(f"wrote {config_path}", file=sys.stderr)
    print(f"workspace: {workspace} (a git repository)", file=sys.stderr)
    print(f"state folder: {state_dir}", file=sys.stderr)
    print(f"next: metasup-mcp add NAME --config {_shown(config_path)} -- COMMAND [ARGS...]", file=sys.stderr)
    return 0


def _prepare_workspace(workspace: Path) -> None:
    """Create the workspace as a git repository with a first commit; an existing repository is only opened."""
    from metasup_mcp.safety.workspace import Workspace, WorkspaceError

    try:
        Workspace.open_or_init(workspace)
    except (WorkspaceError, OSError) as exc:
        raise InitError(f"cannot prepare the workspace {workspace} as a git repository: {exc}; "
                        "check that it is a folder you can write to (and git is installed)") from None


def _enclosing_repository(directory: Path) -> Path | None:
    """The work tree of the git repository holding `directory` (or its nearest existing parent)."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    found = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=probe, capture_output=True, text=True, check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")},
    )
    return Path(found.stdout.strip()).resolve() if found.returncode == 0 and found.stdout.strip() else None


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)
