"""The `metasup-mcp` command line: `check-config` (exit 2 naming the key, or the effective
config on stdout), `--version`, and a bad config refusing to `serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metasup_mcp import __version__
from metasup_mcp.cli import EXIT_CONFIG, main
from tests.conftest import FIXTURE

METASUP = Path(sys.executable).parent / "metasup-mcp"

GOOD = {
    "supervisor": {
        "workspace": "ws",
        "min_runtime": "500ms",
        "health_checks": {"interval": "10s", "probe_timeout": "1m"},
        "status_http": {"enabled": False},
        "mcp_servers": [{"name": "fixture", "command": "python", "args": ["-u", str(FIXTURE)]}],
    }
}

BAD = {
    "unknown key": ("supervisor:\n  min_runtim: 1s\n", "supervisor.min_runtim (line 2): unknown key"),
    "bad duration": (
        "supervisor:\n  health_checks: {interval: soonish}\n",
        "supervisor.health_checks.interval (line 2): 'soonish' is not a duration",
    ),
    "missing command": (
        "supervisor:\n  mcp_servers:\n    - name: a\n",
        "supervisor.mcp_servers[0].command (line 3): required key is missing",
    ),
    "duplicate names": (
        "supervisor:\n  mcp_servers:\n    - {name: a, command: x}\n    - {name: a, command: y}\n",
        "supervisor.mcp_servers (line 2): two servers are named 'a'",
    ),
    "bad yaml": ("supervisor:\n  mcp_servers: [\n", "line 3, column 1: not valid YAML"),
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "servers.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_check_config_exits_2_with_a_message_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    text, expected = BAD[case]
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == EXIT_CONFIG == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: invalid configuration:\n")
    assert expected in err


def test_check_config_prints_the_effective_config_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, yaml.safe_dump(GOOD))
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    effective = json.loads(out)["supervisor"]
    assert effective["workspace"] == str(tmp_path / "ws")  # resolved against the file's folder
    assert effective["min_runtime"] == 0.5 and effective["health_checks"]["probe_timeout"] == 60.0
    assert effective["max_failures"] == 5  # defaults filled in
    assert effective["mcp_servers"][0]["name"] == "fixture"
    assert "warning" not in err


def test_check_config_warns_about_a_command_not_on_path_but_accepts_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "supervisor:\n  mcp_servers:\n    - {name: ghost, command: no-such-program-here}\n")
    assert main(["check-config", str(path)]) == 0
    assert "warning: server 'ghost': command 'no-such-program-here' is not on PATH" in capsys.readouterr().err


def test_check_config_on_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_serve_refuses_a_bad_config_with_exit_2_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD["unknown key"][0])
    assert main(["serve", "--config", str(path)]) == 2
    assert "supervisor.min_runtim" in capsys.readouterr().err
    assert not (tmp_path / ".metasup").exists()


def test_the_installed_command_exits_2_on_a_bad_config_and_0_on_a_good_one(tmp_path: Path) -> None:
    bad = subprocess.run(
        [str(METASUP), "check-config", str(write(tmp_path, BAD["missing command"][0]))],
        capture_output=True, text=True, timeout=30,
    )
    assert bad.returncode == 2 and BAD["missing command"][1] in bad.stderr and bad.stdout == ""
    good = subprocess.run(
        [str(METASUP), "check-config", str(write(tmp_path, yaml.safe_dump(GOOD)))],
        capture_output=True, text=True, timeout=30,
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["supervisor"]["mcp_servers"][0]["command"] == "python"


def test_version_prints_the_package_version() -> None:
    done = subprocess.run([str(METASUP), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip() == f"metasup-mcp {__version__}"


def test_serve_help_describes_config_host_and_port_with_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "the servers.yaml to supervise" in usage and "(default: servers.yaml)" in usage
    assert "the address to bind (loopback only) (default: 127.0.0.1)" in usage
    assert "the port to bind (default: 8765)" in usage


def test_run_where_there_is_no_servers_yaml_says_to_pass_config(tmp_path: Path) -> None:
    done = subprocess.run([str(METASUP)], cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert done.returncode == EXIT_CONFIG
    assert "no servers.yaml in" in done.stderr and "pass --config" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
