"""Installing as a user would: `pipx install .`, `uvx --from . metasup-mcp`, and `.ci/run`
on a machine without root, apt or a browser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metasup_mcp import __version__
from tests.install_support import source_copy, tool

pytestmark = pytest.mark.slow
OFFLINE = ("failed to fetch", "dns error", "connection refused", "network is unreachable", "could not connect")


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This machine's environment (proxies, CA bundles) without the test's virtualenv, in a fresh HOME."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PIPX_", "UV_"))}
    return {**kept, "HOME": str(home), **extra}


def test_pipx_install_gives_a_metasup_mcp_command_that_sets_up_and_checks_a_config(tmp_path: Path) -> None:
    pipx = tool("pipx")
    if pipx is None:
        pytest.skip("pipx is not installed (pip install pipx, or the test extra: pip install -e '.[test]')")
    source = source_copy(tmp_path / "src")
    env = user_env(tmp_path, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"))
    installed = run([pipx, "install", str(source)], tmp_path, env)
    assert installed.returncode == 0, installed.stderr
    command = str(tmp_path / "bin" / "metasup-mcp")
    assert run([command, "--version"], tmp_path, env).stdout.strip() == f"metasup-mcp {__version__}"
    assert run([command, "init", "ops"], tmp_path, env).returncode == 0
    checked = run([command, "check-config", "ops/servers.yaml"], tmp_path, env)
    assert checked.returncode == 0, checked.stderr


def test_uvx_from_the_source_folder_runs_metasup_mcp(tmp_path: Path) -> None:
    uvx = tool("uvx")
    if uvx is None:
        pytest.skip("uv is not installed (pip install uv, or the test extra: pip install -e '.[test]')")
    source = source_copy(tmp_path / "src")
    env = user_env(tmp_path, UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON=sys.executable)
    version = run([uvx, "--from", str(source), "metasup-mcp", "--version"], tmp_path, env)
    if version.returncode != 0 and any(word in version.stderr.lower() for word in OFFLINE):
        pytest.skip(f"uvx could not reach the package index: {version.stderr.strip().splitlines()[-1]}")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"metasup-mcp {__version__}"


def test_ci_run_without_root_apt_or_a_browser_says_so_and_the_browser_tests_skip(tmp_path: Path) -> None:
    """PATH holds only what a plain user has: no apt-get, no sudo, no chromium, no bwrap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "git", "id", "dirname", "env", "cat", "uname"):
        found = sys.executable if name == "python3" else _which_outside_venv(name)
        if found:
            (bin_dir / name).symlink_to(found)
    source = source_copy(tmp_path / "src")
    env = user_env(tmp_path, PATH=str(bin_dir))
    done = run(["/bin/bash", str(source / ".ci" / "run"), "tests/test_dashboard.py", "-rs"], source, env, timeout=540)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "chromium bubblewrap not installed and apt is not available without root" in done.stderr
    assert "chromium is not installed" in done.stdout and " passed" not in done.stdout


def _which_outside_venv(name: str) -> str | None:
    for folder in ("/usr/bin", "/bin", "/usr/local/bin"):
        if os.access(candidate := os.path.join(folder, name), os.X_OK):
            return candidate
    return None
