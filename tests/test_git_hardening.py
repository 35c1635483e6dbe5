"""The supervisor's git obeys only the supervisor: a hostile `.git/config` (or global config)
naming a program, key by key, and every Workspace operation run over it; nothing may run."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from metasup_mcp.safety.rules import FileChange
from metasup_mcp.safety.workspace import Workspace

# (key, value template): {evil} is the path of a script that records that it ran.
HOSTILE_KEYS = [
    ("core.fsmonitor", "{evil}"),
    ("core.hooksPath", "{hooks}"),
    ("filter.evil.clean", "{evil} clean"),
    ("filter.evil.smudge", "{evil} smudge"),
    ("filter.evil.process", "{evil} process"),
    ("diff.evil.textconv", "{evil} textconv"),
    ("diff.evil.command", "{evil} command"),
    ("diff.external", "{evil} external"),
    ("merge.evil.driver", "{evil} driver"),
    ("credential.helper", "{evil}"),
    ("credential.https://example.invalid.helper", "{evil}"),
    ("core.sshCommand", "{evil} ssh"),
    ("core.askPass", "{evil}"),
    ("core.editor", "{evil} editor"),
    ("sequence.editor", "{evil} sequence"),
    ("core.pager", "{evil} pager"),
    ("pager.status", "{evil} pager-status"),
    ("gpg.program", "{evil}"),
    ("gpg.ssh.program", "{evil}"),
    ("core.alternateRefsCommand", "{evil}"),
    ("uploadpack.packObjectsHook", "{evil}"),
    ("gc.auto", "1"),  # auto-gc would run the pre-auto-gc hook of .git/hooks
    ("include.path", "{included}"),  # an included file defining a filter driver
]


@pytest.fixture(autouse=True)
def _pinned(pinned_git: None) -> None:
    """git run by the test itself: a fixed identity, no user or system config."""


def _executable(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _hostile_repo(tmp_path: Path, default_hooks: bool = False) -> tuple[Workspace, Path, dict[str, str]]:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "app.py").write_text("print('v1')\n")
    (root / ".gitattributes").write_text("* filter=evil diff=evil merge=evil\n")
    (root / "data.log").write_text("ignored\n")
    (root / ".gitignore").write_text("*.log\n")
    ws = Workspace.open_or_init(root, [])
    marker = tmp_path / "ran.txt"
    evil = _executable(tmp_path / "evil.sh", f'#!/bin/sh\necho "$0 $*" >> {marker}\ncat\n')
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("pre-commit", "post-commit", "reference-transaction", "post-index-change", "pre-auto-gc", "post-checkout"):
        _executable(hooks / hook, f"#!/bin/sh\necho hook {hook} >> {marker}\n")
        if default_hooks:
            _executable(root / ".git" / "hooks" / hook, f"#!/bin/sh\necho default-hook {hook} >> {marker}\n")
    included = tmp_path / "included.gitconfig"
    included.write_text(f'[filter "evil"]\n\tclean = {evil} included-clean\n\tsmudge = {evil} included-smudge\n')
    return ws, marker, {"evil": str(evil), "hooks": str(hooks), "included": str(included)}


def _exercise(ws: Workspace, tmp_path: Path) -> None:
    """Every kind of git call the supervisor makes, on a real repository."""
    root = ws.root
    (root / "app.py").write_text("print('edited by a user')\n")
    ws.is_dirty()
    ws.changed_paths(ws.head())
    ws.ignored(["app.py", "data.log"])
    saved = ws.save(["app.py", "new.py", "data.log"], "before p1")
    ws.apply([FileChange("app.py", "print('v2')\n"), FileChange("new.py", "x = 1\n")])
    commit = ws.commit_paths(["app.py", "new.py"], "p1", {"Metasup-Proposal": "p1"})
    ws.mark_last_good(commit)
    ws.keep_rejected("p1", commit)
    ws.commit_message(commit)
    ws.put_back(saved, ["app.py", "new.py"])
    ws.move_head(commit, saved.head)
    ws.is_healthy()
    ws.write_bundle(tmp_path / "backups")
    ws.prune(1)
    Workspace.open_or_init(root, [])


@pytest.mark.parametrize(("key", "template"), HOSTILE_KEYS, ids=[k for k, _ in HOSTILE_KEYS])
def test_a_program_named_by_the_repository_config_never_runs(tmp_path: Path, key: str, template: str) -> None:
    ws, marker, values = _hostile_repo(tmp_path, default_hooks=key == "gc.auto")
    subprocess.run(["git", "config", key, template.format(**values)], cwd=ws.root, check=True)
    if key.startswith("gpg."):
        subprocess.run(["git", "config", "commit.gpgSign", "true"], cwd=ws.root, check=True)
    _exercise(ws, tmp_path)
    assert not marker.exists(), f"{key} ran: {marker.read_text()}"
    assert (ws.root / "app.py").read_text() == "print('edited by a user')\n", "the operations still did their work"


def test_global_and_system_config_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, marker, values = _hostile_repo(tmp_path, default_hooks=True)
    global_config = tmp_path / "global.gitconfig"
    global_config.write_text(f"[core]\n\tfsmonitor = {values['evil']}\n[filter \"evil\"]\n\tclean = {values['evil']}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", str(global_config))
    monkeypatch.delenv("GIT_CONFIG_NOSYSTEM", raising=False)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", values["hooks"])
    _exercise(ws, tmp_path)
    assert not marker.exists(), marker.read_text()


def test_the_same_hostile_config_does_run_under_plain_git(tmp_path: Path) -> None:
    """The control: the harness above would notice a program running."""
    ws, marker, values = _hostile_repo(tmp_path, default_hooks=True)
    subprocess.run(["git", "config", "filter.evil.clean", f"{values['evil']} clean"], cwd=ws.root, check=True)
    (ws.root / "app.py").write_text("print('v2')\n")
    subprocess.run(["git", "add", "app.py"], cwd=ws.root, check=True, env={**os.environ})
    subprocess.run(["git", "commit", "-qm", "x"], cwd=ws.root, check=True)
    assert "clean" in marker.read_text() and "default-hook" in marker.read_text()


def test_a_git_call_that_hangs_is_killed_at_its_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metasup_mcp.safety import gitcmd

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    os.mkfifo(tmp_path / "fifo")  # git blocks opening it: no writer ever comes
    subprocess.run(["git", "config", "--file", str(repo / ".git" / "config"), "include.path", str(tmp_path / "fifo")], check=True)
    monkeypatch.setattr(gitcmd, "GIT_TIMEOUT", 0.5)
    with pytest.raises(gitcmd.WorkspaceError, match="did not finish within 0.5s"):
        gitcmd.run_git(["status"], cwd=repo, env=gitcmd.git_env(repo / ".git", repo))
