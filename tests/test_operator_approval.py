"""An operator decides held changes outside MCP: on the dashboard in a real headless Chromium,
and with `metasup-mcp approve` / `reject` through the status endpoint."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from metasup_mcp import cli
from metasup_mcp.approve_cli import run_decision
from metasup_mcp.config import load_config
from metasup_mcp.http_status import run_status_http
from metasup_mcp.operator_gate import MAX_WRONG
from metasup_mcp.reload import ReloadRefused, check_operator_token
from metasup_mcp.status_cli import StatusTarget
from metasup_mcp.supervisor import ChangeRequest, Supervisor
from tests.safety_support import served_version, with_version, workspace_template
from tests.test_dashboard import CHROMIUM
from tests.test_gateway_support import running, write_config

pytestmark = pytest.mark.anyio

APP = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py"]}
TOKEN = "op-token-5d1c-93a0e7"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def held_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Supervisor, str, list[str]]]:
    """A supervisor with `approval: human`, its status URL, and two changes held for a human."""
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    path = write_config(
        tmp_path, [APP], workspace_template=str(workspace_template(tmp_path)), approval={"mode": "human"},
        status_http={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    sup = Supervisor(load_config(path))
    async with sup.running():
        await running(sup, "app")
        async with anyio.create_task_group() as tg:
            url = await tg.start(run_status_http, sup, sup.settings.status_http)
            v2 = await sup.propose_change(ChangeRequest(
                "serve v2", steps=["bump"], changes=[{"path": "server.py", "content": with_version("2")}]
            ))
            notes = await sup.propose_change(ChangeRequest("notes", changes=[{"path": "NOTES.txt", "content": "x\n"}]))
            assert v2.status == notes.status == "pending_approval"
            yield sup, url, [v2.id, notes.id]
            tg.cancel_scope.cancel()


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (a local test server)
        return response.read().decode()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
async def test_an_operator_approves_and_rejects_on_the_dashboard_without_the_token_being_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cdp_support import Browser

    def operate(url: str, v2: str, notes: str) -> dict[str, Any]:
        browser = Browser(tmp_path / "profile")
        try:
            browser.open(f"{url}/")
            browser.wait_for(f"""(document.querySelector('[data-pending="{v2}"] pre.diff') || {{}}).textContent
                                 ?.includes('+VERSION = "2"')""")

            def click(proposal: str, action: str, token: str) -> None:
                browser.evaluate(f"""document.getElementById("operator-token").value = {json.dumps(token)};
                    document.querySelector('[data-pending="{proposal}"] button[data-action="{action}"]').click(); 1""")

            click(v2, "approve", "not-the-token")
            browser.wait_for('document.getElementById("decision-result").dataset.outcome === "error"')
            refused = browser.evaluate('document.getElementById("decision-result").textContent')
            click(v2, "approve", TOKEN)
            browser.wait_for('document.getElementById("decision-result").dataset.outcome === "applied"', 40)
            click(notes, "reject", TOKEN)
            browser.wait_for('document.getElementById("decision-result").dataset.outcome === "rejected"')
            browser.wait_for('!document.querySelector("[data-pending]")')
            kept = browser.evaluate(f"""[document.getElementById("operator-token").value,
                JSON.stringify(sessionStorage), JSON.stringify(localStorage),
                document.documentElement.outerHTML].join("\\n").includes({json.dumps(TOKEN)})""")
            return {"refused": refused, "kept": kept}
        finally:
            browser.close()

    async with held_changes(tmp_path, monkeypatch) as (sup, url, (v2, notes)):
        seen = await anyio.to_thread.run_sync(operate, url, v2, notes)
        assert "operator token is wrong" in seen["refused"] and seen["kept"] is False
        assert sup.get_change(v2).verdict == "applied" and sup.get_change(notes).verdict == "rejected"
        assert await served_version(sup) == "2"
        assert sup.get_change(v2).approval["decided_by"] == "operator (http)"  # type: ignore[index]


async def test_a_cross_origin_or_non_json_post_is_refused_before_the_token_is_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with held_changes(tmp_path, monkeypatch) as (sup, url, (v2, _)):
        approve = f"{url}/supervisor/changes/{v2}/approve"
        status, body = await anyio.to_thread.run_sync(post, approve, {"token": TOKEN}, {"Origin": "http://evil.example"})
        assert status == 403 and "cross-origin" in body["error"]
        status, body = await anyio.to_thread.run_sync(post, approve, {"token": TOKEN}, {"Sec-Fetch-Site": "cross-site"})
        assert status == 403 and "cross-site" in body["error"]
        status, body = await anyio.to_thread.run_sync(post, approve, {"token": TOKEN}, {"Content-Type": "text/plain"})
        assert status == 403 and "application/json" in body["error"]
        status, body = await anyio.to_thread.run_sync(post, approve, {"token": TOKEN}, {"Host": "rebound.example:80"})
        assert status == 403 and "by IP address or localhost" in body["error"]
        status, body = await anyio.to_thread.run_sync(post, f"{url}/supervisor/changes/p-none/approve", {"token": TOKEN})
        assert status == 404
        assert sup.get_change(v2).status == "pending_approval"
        listed = json.loads(await anyio.to_thread.run_sync(fetch, f"{url}/supervisor/pending"))
        assert [p["id"] for p in listed["pending"]][-1] == v2 and "+VERSION" in listed["pending"][-1]["diff"]
        assert TOKEN not in json.dumps(listed)
        assert TOKEN not in await anyio.to_thread.run_sync(fetch, f"{url}/supervisor/status")


async def test_metasup_mcp_approve_and_reject_decide_through_the_status_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with held_changes(tmp_path, monkeypatch) as (sup, url, (v2, notes)):
        out = io.StringIO()
        wrong = await anyio.to_thread.run_sync(lambda: run_decision(StatusTarget(url), v2, True, "nope", out=out))
        assert wrong == 1 and sup.get_change(v2).status == "pending_approval"
        # The command line, the operator token taken from METASUP_OPERATOR_TOKEN.
        code = await anyio.to_thread.run_sync(lambda: cli.main(["approve", v2, "--url", url, "--note", "ok"]))
        assert code == 0 and sup.get_change(v2).verdict == "applied"
        assert sup.get_change(v2).approval == {**sup.get_change(v2).approval, "decided_by": "operator (http)", "reason": "ok"}
        code = await anyio.to_thread.run_sync(lambda: run_decision(StatusTarget(url), notes, False, TOKEN, out=out))
        assert code == 0 and f"{notes}: rejected" in out.getvalue()
        again = await anyio.to_thread.run_sync(lambda: run_decision(StatusTarget(url), notes, False, TOKEN, out=out))
        assert again == 1
        assert await served_version(sup) == "2"


def fetch_as(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (a local test server)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_a_dns_rebound_page_reads_neither_the_pending_diffs_nor_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a status token the endpoint answers only to its address or localhost: a page that
    re-points its own name at it would otherwise read the held diffs (the user's code) and status."""
    async with held_changes(tmp_path, monkeypatch) as (sup, url, _):
        port = url.rsplit(":", 1)[1]
        for path in ("/supervisor/pending", "/supervisor/status", "/supervisor/changes", "/metrics", "/"):
            assert await anyio.to_thread.run_sync(fetch_as, url + path, f"rebound.example:{port}") == 403, path
            assert await anyio.to_thread.run_sync(fetch_as, url + path, f"localhost:{port}") == 200, path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_metasup_mcp_approve_sends_the_token_only_to_a_supervisor_that_proves_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another program holding the configured status port (the supervisor then serves without
    it) would receive the operator token from `metasup-mcp approve`. The endpoint must first
    answer a challenge with the key the supervisor keeps in its state folder."""
    import socket
    import threading

    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    port = free_port()
    received: list[bytes] = []
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()

    stop = threading.Event()

    def squat() -> None:
        # Short accept timeouts until told to stop: a socket closed or shut down from another
        # thread does not reliably wake an accept() blocked on it.
        squatter.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = squatter.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(65536))
                except OSError:
                    pass
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
                             b'{"proof": ""}')

    path = write_config(
        tmp_path, [APP], workspace_template=str(workspace_template(tmp_path)), approval={"mode": "human"},
        status_http={"enabled": True, "host": "127.0.0.1", "port": port},
    )
    sup = Supervisor(load_config(path))
    async with sup.running(), anyio.create_task_group() as tg:
        assert await tg.start(run_status_http, sup, sup.settings.status_http) is None  # the port is taken
        held = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": with_version("2")}]))
        async with anyio.create_task_group() as squatting:
            squatting.start_soon(anyio.to_thread.run_sync, squat)
            code = await anyio.to_thread.run_sync(lambda: cli.main(["approve", held.id, "--config", str(path)]))
            stop.set()
        squatter.close()  # the port is free again
        assert code == 1 and "the operator token was not sent" in capsys.readouterr().err
        assert not any(TOKEN.encode() in chunk for chunk in received), received
        assert sup.get_change(held.id).status == "pending_approval"

        url = await tg.start(run_status_http, sup, sup.settings.status_http)  # the supervisor gets its port
        assert url is not None
        code = await anyio.to_thread.run_sync(lambda: cli.main(["approve", held.id, "--config", str(path)]))
        assert code == 0 and sup.get_change(held.id).verdict == "applied"
        tg.cancel_scope.cancel()


async def test_guessing_the_operator_token_at_one_door_closes_every_door_to_every_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-user child can reach the loopback endpoint: five wrong tokens there, and the right
    one is refused too (at every door, MCP's reload included), so guessing never learns a hit."""
    async with held_changes(tmp_path, monkeypatch) as (sup, url, (v2, _)):
        approve = f"{url}/supervisor/changes/{v2}/approve"
        for n in range(MAX_WRONG):
            status, body = await anyio.to_thread.run_sync(post, approve, {"token": f"guess-{n:016d}"})
            assert status == 403 and "operator token is wrong" in body["error"]
        status, body = await anyio.to_thread.run_sync(post, approve, {"token": TOKEN})
        assert status == 403 and "wrong operator tokens in the last 60 s" in body["error"]
        with pytest.raises(ReloadRefused, match="every token is refused"):
            check_operator_token(sup.operator_gate, TOKEN)
        assert sup.get_change(v2).status == "pending_approval"
