"""The README's MCP Inspector command, run as written (in a copy of the repository's layout)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSPECTOR_TIMEOUT = 180  # the first run downloads the Inspector from the npm registry


def readme_inspector_command() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### MCP Inspector", 1)[1]
    block = re.search(r"```sh\n(.*?)\n```", section, re.DOTALL)
    assert block is not None, "README's MCP Inspector section has no ```sh block"
    return shlex.split(block.group(1))


def test_the_readme_inspector_command_lists_the_supervisors_and_the_childrens_tools(tmp_path: Path) -> None:
    if shutil.which("npx") is None:
        pytest.skip("npx is not installed")
    command = readme_inspector_command()
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "metasup_mcp" / "examples", repo / "metasup_mcp" / "examples")
    config = (ROOT / "servers.yaml").read_text().replace("port: 9000", "port: 0")  # never clash with a real one
    (repo / "servers.yaml").write_text(config)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "metasup-mcp").symlink_to(Path(sys.executable).parent / "metasup-mcp")
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=INSPECTOR_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("the Inspector did not finish in time (npm registry slow or unreachable)")
    if done.returncode != 0 and re.search(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|network", done.stderr):
        pytest.skip(f"npm registry unreachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    names = set(re.findall(r'^ {6}"name": "([^"]+)"', done.stdout, re.MULTILINE))
    assert {"server_status", "propose_change", "notes__add_note", "textkit__word_count"} <= names, done.stdout[-2000:]
