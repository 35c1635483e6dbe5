"""`metasup-mcp status` against a real supervisor's status endpoint, and against nothing at all."""

from __future__ import annotations

import json
import re
import socket
import sys
from functools import partial
from pathlib import Path

import anyio
import pytest
import yaml

from metasup_mcp import cli
from metasup_mcp.status_cli import DEFAULT_URL, default_target
from tests.http_status_support import Serve, serve  # noqa: F401 (serve: fixture)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def status_command(*argv: str) -> int:
    """The CLI in a worker thread: it blocks on HTTP while this loop serves the answer."""
    return await anyio.to_thread.run_sync(partial(cli.main, ["status", *argv]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_the_table_shows_every_server_and_the_latest_rollback(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve() as (supervisor, url):
        supervisor.changes.audit.append("rollback", trigger="early_exit", bad_commit="b" * 40, to="a" * 40,
                                        reason="alpha died after 0.4s")
        assert await status_command("--url", url) == 0
    out = capsys.readouterr().out
    header, *rows = [line for line in out.splitlines() if line.startswith(("SERVER", "alpha", "beta"))]
    assert header.split()[:5] == ["SERVER", "STATE", "PID", "UPTIME", "RESTARTS"]
    assert [row.split()[:2] for row in rows] == [["alpha", "running"], ["beta", "running"]]
    assert out.startswith("supervisor running  mode normal  up ")
    assert "consecutive failures 0/5" in out
    assert "rollback  early_exit  bbbbbbbbbb -> aaaaaaaaaa  alpha died after 0.4s" in out


async def test_json_prints_the_status_document(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    async with serve(servers=["alpha"]) as (supervisor, url):
        assert await status_command("--url", url, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "running" and doc["mcp_servers"] == {"alpha": "running"}
    assert isinstance(doc["servers"]["alpha"]["pid"], int)


async def test_the_url_and_token_default_to_servers_yaml(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(servers=["alpha"], token="s3cret-status-token") as (supervisor, url):
        port = int(url.rsplit(":", 1)[1])
        config = tmp_path / "servers.yaml"
        config.write_text(yaml.safe_dump({"supervisor": {"status_http": {"port": port, "token": "s3cret-status-token"}}}))
        assert await status_command("--config", str(config)) == 0
        assert await status_command("--url", url) == 1
        assert await status_command("--url", url, "--token", "s3cret-status-token") == 0
    captured = capsys.readouterr()
    assert len(re.findall(r"^alpha +running ", captured.out, re.MULTILINE)) == 2
    assert "wants its token: pass --token or set METASUP_STATUS_TOKEN" in captured.err


def test_default_target_reads_status_http(tmp_path: Path) -> None:
    config = tmp_path / "servers.yaml"
    assert default_target(config).url == DEFAULT_URL  # no file
    config.write_text(yaml.safe_dump({"supervisor": {"status_http": {"host": "0.0.0.0", "port": 9123, "token": "t" * 16}}}))
    target = default_target(config)
    assert (target.url, target.token) == ("http://127.0.0.1:9123", "t" * 16)
    config.write_text(yaml.safe_dump({"supervisor": {"status_http": {"enabled": False, "port": 9124}}}))
    assert "status_http.enabled: false" in default_target(config).note


async def test_a_supervisor_that_is_not_running_is_a_clear_message_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await anyio.run_process(
        [sys.executable, "-m", "metasup_mcp.cli", "status", "--url", url], cwd=tmp_path, check=False
    )
    assert result.returncode == 1
    assert result.stdout == b""
    message = result.stderr.decode()
    assert f"no supervisor is answering at {url}" in message
    assert "Start one with `metasup-mcp serve`" in message
    assert "Traceback" not in message


def test_the_status_command_documents_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert all(option in usage for option in ("--url", "--json", "--token", "--config"))


async def test_status_of_a_config_whose_supervisor_is_not_the_one_on_the_port_says_so(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(servers=["alpha"]) as (supervisor, url):
        port = int(url.rsplit(":", 1)[1])
        other = tmp_path / "other" / "servers.yaml"
        other.parent.mkdir()
        other.write_text(yaml.safe_dump({"supervisor": {"status_http": {"port": port}}}))
        assert await status_command("--config", str(other)) == 1
    err = capsys.readouterr().err
    assert f"runs {tmp_path / 'servers.yaml'}, not {other}" in err
