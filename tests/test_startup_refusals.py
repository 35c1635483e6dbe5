"""What stops the supervisor from starting is said in one line with the right exit code, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fixture_server
from tests.test_lifecycle import serve

pytestmark = pytest.mark.anyio


def run_serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metasup_mcp.cli", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )


async def test_a_second_supervisor_on_the_same_state_folder_is_refused_naming_the_first(tmp_path, make_config, test_token):
    config = make_config(tmp_path, [fixture_server("fx")])
    async with serve(config, test_token) as first:
        await first.wait_all_running()
        second = run_serve(config)
    assert second.returncode == 1, second.stderr
    assert f"another metasup-mcp (pid {first.process.pid}) is using the state folder" in second.stderr
    assert "Traceback" not in second.stderr and second.stdout == ""


def test_a_malformed_safety_rules_file_is_a_configuration_error(tmp_path, make_config):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {paths: '*.py', deny: '(unclosed', message: x}\n")
    result = run_serve(make_config(tmp_path, [], safety_rules_file=str(rules)))
    assert result.returncode == 2, result.stderr
    assert "rules.yaml" in result.stderr and "Traceback" not in result.stderr


def test_mcp_over_http_is_refused_on_a_host_other_machines_can_reach(tmp_path, make_config):
    config = make_config(tmp_path, [])
    result = subprocess.run(
        [sys.executable, "-m", "metasup_mcp.cli", "serve", "--config", str(config),
         "--transport", "http", "--host", "0.0.0.0"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "without authentication" in result.stderr, result.stderr
