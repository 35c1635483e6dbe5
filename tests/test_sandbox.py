"""The sandbox plan and its command lines, the reaper, and bubblewrap holding a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from metasup_mcp.children import sandbox
from metasup_mcp.children.process import SpawnSpec
from metasup_mcp.children.sandbox import (
    PACKAGE_DIR,
    SandboxPlan,
    SandboxUnavailable,
    bwrap_args,
    plan_sandbox,
    protected_paths,
    wrap_argv,
)
from metasup_mcp.config import load_config
from metasup_mcp.supervisor import Supervisor, SupervisorError
from tests.conftest import ConfigMaker, wait_until

needs_bwrap = pytest.mark.skipif(
    sandbox.bwrap_problem() is not None, reason=f"no kernel sandbox here: {sandbox.bwrap_problem()}"
)


def test_the_protected_paths_are_git_config_package_interpreter_and_readonly_paths_with_state_hidden(
    tmp_path: Path,
) -> None:
    ws, state, config = tmp_path / "ws", tmp_path / "state", tmp_path / "servers.yaml"
    protected = protected_paths(ws, state, config, ["vendor/"], [tmp_path / "token"])
    assert protected.readonly[:2] == (ws / ".git", PACKAGE_DIR)
    assert config in protected.readonly and ws / "vendor" in protected.readonly
    assert protected.hidden == (state, tmp_path / "token")


def test_a_path_that_holds_the_workspace_is_neither_frozen_nor_hidden(tmp_path: Path) -> None:
    ws = tmp_path / "state" / "ws"
    protected = protected_paths(ws, tmp_path / "state", None, [str(tmp_path)])
    assert tmp_path not in protected.readonly and protected.hidden == ()


def test_bwrap_gets_a_pid_namespace_that_dies_with_its_parent_and_the_mounts_on_top(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "token").write_text("t")
    args = bwrap_args([tmp_path / "ws" / ".git"], [tmp_path / "state", tmp_path / "token", tmp_path / "absent"])
    assert args[:8] == ["--die-with-parent", "--unshare-pid", "--cap-drop", "ALL", "--dev-bind", "/", "/", "--proc"]
    assert ["--ro-bind-try", str(tmp_path / "ws" / ".git"), str(tmp_path / "ws" / ".git")] == args[9:12]
    assert ["--tmpfs", str(tmp_path / "state")] == args[12:14]
    assert args[-3:] == ["--ro-bind", "/dev/null", str(tmp_path / "token")]  # and nothing for "absent"


def test_off_runs_under_the_reaper_and_says_detection_guards_the_files() -> None:
    plan = plan_sandbox("off", protected_paths(Path("/w"), Path("/s"), None))
    assert plan.kind == "reaper" and not plan.kernel_enforced
    assert wrap_argv(plan, ["srv", "-x"], Path("/w"))[-3:] == ["--", "srv", "-x"]
    assert plan.describe()["in_force"] == "reaper" and "detection" in plan.describe()["reason"]


def test_auto_degrades_with_the_reason_and_required_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bwrap failed: No permissions to create new namespace")
    protected = protected_paths(Path("/w"), Path("/s"), None)
    plan = plan_sandbox("auto", protected)
    assert plan.kind == "reaper" and "No permissions to create new namespace" in plan.reason
    with pytest.raises(SandboxUnavailable, match="sandbox: required.*apt-get install bubblewrap"):
        plan_sandbox("required", protected)


def test_a_supervisor_with_sandbox_required_and_no_sandbox_refuses_to_start(
    tmp_path: Path, make_config: ConfigMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bwrap is not installed")
    with pytest.raises(SupervisorError, match="bwrap is not installed"):
        Supervisor(load_config(make_config(tmp_path, sandbox="required")))


def test_a_missing_program_reads_as_one_and_not_as_the_wrappers_exit(tmp_path: Path) -> None:
    plan = SandboxPlan("off", "reaper", "test")
    spec = SpawnSpec("x", ["no-such-program-here"], tmp_path, {"PATH": "/usr/bin:/bin"}, sandbox=plan)
    with pytest.raises(FileNotFoundError, match="No such file"):
        spec.command()


def _helper_pids(tag: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if tag in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


ESCAPE = (
    "import os, subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import os, time\\nif os.fork(): os._exit(0)\\ntime.sleep(60)', TAG],"
    " start_new_session=True, env={}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print('up', flush=True)\n"
)


@pytest.mark.parametrize("ending", ["main process exits", "SIGUSR1"])
def test_the_reaper_ends_a_helper_that_called_setsid_and_dropped_its_environment(ending: str) -> None:
    tag = f"reaper-{uuid.uuid4().hex}"
    code = ESCAPE.replace("TAG", repr(tag)) + ("" if ending == "main process exits" else "time.sleep(60)\n")
    argv = wrap_argv(SandboxPlan("off", "reaper", "test"), [sys.executable, "-c", code], Path.cwd())
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert wait_until(lambda: _helper_pids(tag), timeout=5)
        if ending == "SIGUSR1":
            os.kill(proc.pid, signal.SIGUSR1)
        proc.wait(timeout=10)
        assert wait_until(lambda: not _helper_pids(tag), timeout=5), _helper_pids(tag)
    finally:
        for pid in _helper_pids(tag):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_the_reaper_passes_on_the_exit_status() -> None:
    argv = wrap_argv(SandboxPlan("off", "reaper", "test"), [sys.executable, "-c", "raise SystemExit(7)"], Path.cwd())
    assert subprocess.run(argv, check=False).returncode == 7
    argv = wrap_argv(SandboxPlan("off", "reaper", "test"), [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], Path.cwd())
    assert subprocess.run(argv, check=False).returncode == -9


@needs_bwrap
def test_in_bwrap_git_is_read_only_the_state_folder_is_gone_and_the_workspace_writable(tmp_path: Path) -> None:
    ws, state = tmp_path / "ws", tmp_path / "state"
    (ws / ".git").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n")
    state.mkdir()
    (state / "audit.jsonl.key").write_bytes(b"k" * 32)
    plan = plan_sandbox("required", protected_paths(ws, state, None))
    script = (
        "import pathlib, subprocess\n"
        "subprocess.run(['umount', '.git'], capture_output=True)  # root's children too: no capabilities\n"
        "for p in ['.git/config', 'file.txt']:\n"
        "    try:\n        open(p, 'a').write('x'); print(p, 'written')\n"
        "    except OSError as e: print(p, e.strerror)\n"
        f"print('key', pathlib.Path({str(state / 'audit.jsonl.key')!r}).exists())\n"
    )
    out = subprocess.run(wrap_argv(plan, [sys.executable, "-c", script], ws), cwd=ws, capture_output=True, text=True)
    assert out.stdout.splitlines() == [".git/config Read-only file system", "file.txt written", "key False"], out
    assert (ws / ".git" / "config").read_text() == "[core]\n"


def test_the_sandbox_key_takes_auto_required_or_off_and_names_itself_otherwise(tmp_path: Path) -> None:
    from metasup_mcp.config import ConfigError, parse_config

    parsed = parse_config("supervisor:\n  sandbox: required\n  readonly_paths: [vendor/]\n", tmp_path / "s.yaml")
    assert parsed.supervisor.sandbox == "required" and parsed.supervisor.readonly_paths == ["vendor/"]
    with pytest.raises(ConfigError, match=r"supervisor.sandbox \(line 2\)"):
        parse_config("supervisor:\n  sandbox: maybe\n", tmp_path / "s.yaml")


@needs_bwrap
def test_hidden_paths_keep_the_users_own_secrets_from_children_and_a_path_holding_the_workspace_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metasup_mcp.config import ConfigError, parse_config

    home, ws = tmp_path / "home", tmp_path / "home" / "project"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".netrc").write_text("machine x password y\n")
    (ws / ".git").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    plan = plan_sandbox("required", protected_paths(ws, tmp_path / "state", None, hidden_paths=["~/.ssh", "~/.netrc"]))
    assert plan.describe()["hidden"][-2:] == [str(home / ".ssh"), str(home / ".netrc")]
    script = (
        "import pathlib\n"
        "print(sorted(p.name for p in pathlib.Path.home().joinpath('.ssh').iterdir()))\n"
        "try:\n    print(repr(pathlib.Path.home().joinpath('.netrc').read_text()))\n"
        "except OSError as e:\n    print(e.strerror)\n"
    )
    out = subprocess.run(wrap_argv(plan, [sys.executable, "-c", script], ws), cwd=ws, capture_output=True, text=True)
    assert out.stdout.splitlines() in (["[]", "''"], ["[]", "Permission denied"]), out
    assert (home / ".ssh" / "id_ed25519").read_text() == "PRIVATE KEY\n"
    with pytest.raises(ConfigError, match=r"hidden_paths: ~ .* holds the workspace"):
        parse_config(f"supervisor:\n  workspace: {ws}\n  hidden_paths: ['~']\n", tmp_path / "s.yaml")
