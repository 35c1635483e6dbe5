"""Secrets stay out of what is stored and served: the redactor, the audit log, `check-config`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from metasup_mcp import redact
from metasup_mcp.cli import main
from metasup_mcp.redact import Redactor, secrets_from
from metasup_mcp.safety.audit import AuditLog

SECRET = "sk-live-9b8a7c6d5e4f3a2b"


@pytest.fixture(autouse=True)
def _restore_active_redactor():
    yield
    redact.install()


def test_secrets_are_the_values_worth_hiding_and_not_paths_or_short_or_well_known_ones() -> None:
    env = {"MY_API_KEY": SECRET, "HOME": "/home/someone/long", "DATA_DIR": "/srv/data/files",
           "DB_PASSWORD": "/looks/like/a/path", "LEVEL": "debug", "PORT": "12345678", "NOTE": "a long plain value"}
    assert secrets_from(env) == {SECRET: "MY_API_KEY", "/looks/like/a/path": "DB_PASSWORD",
                                 "a long plain value": "NOTE"}


def test_a_secret_inside_text_and_nested_data_is_replaced_by_its_name() -> None:
    hide = Redactor({SECRET: "MY_API_KEY", SECRET[:12]: "PREFIX"})
    assert hide(f"error: key {SECRET} refused") == "error: key [redacted:MY_API_KEY] refused"
    assert hide.data({"lines": [f"k={SECRET}"], SECRET: 1, "n": 2}) == {
        "lines": ["k=[redacted:MY_API_KEY]"], "[redacted:MY_API_KEY]": 1, "n": 2}


def test_the_audit_log_never_stores_a_secret_from_the_supervisors_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_TOKEN", SECRET)
    redact.install()
    path = tmp_path / "audit.jsonl"
    entry = AuditLog(path).append("rollback", evidence=f"stderr: token={SECRET}")
    assert entry["data"]["evidence"] == "stderr: token=[redacted:UPSTREAM_TOKEN]"
    assert SECRET not in path.read_text()


def test_a_configured_literal_secret_is_redacted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    redact.install([{"API_KEY": "literal-secret-value"}], environ={})
    assert redact.redact("got literal-secret-value") == "got [redacted:API_KEY]"


def test_check_config_shows_an_expanded_secret_as_its_reference_and_hides_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MY_SERVICE_KEY", SECRET)
    server = {"name": "s", "command": "python", "env": {"KEY": "${MY_SERVICE_KEY}", "API_TOKEN": "plain-literal-1",
                                                        "MODE": "fast"}}
    config = {"supervisor": {"mcp_servers": [server], "status_http": {"token": "status-token-value"}}}
    path = tmp_path / "servers.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "plain-literal-1" not in out and "status-token-value" not in out
    shown = json.loads(out)["supervisor"]
    assert shown["mcp_servers"][0]["env"] == {"KEY": "${MY_SERVICE_KEY}", "API_TOKEN": "<set>", "MODE": "fast"}
    assert shown["status_http"]["token"] == "<set>"
