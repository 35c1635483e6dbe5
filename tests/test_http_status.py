"""The status endpoint over real sockets, in front of a real supervisor with real fixture children."""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metasup_mcp.config import StatusHttpSettings
from metasup_mcp.evolution.requests import ChangeRequest
from metasup_mcp.http_status import bind_refusal, human_duration, run_status_http
from metasup_mcp.operator_gate import MAX_WRONG
from metasup_mcp.supervisor import Supervisor
from tests.http_status_support import Serve, status_config, serve, until  # noqa: F401 (serve: fixture)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def get(url: str, token: str | None = None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(timeout=5) as client:
        return await client.get(url, headers=headers)


def metrics(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(family: Any, suffix: str = "", **labels: str) -> float:
    values = [s.value for s in family.samples if s.name == family.name + suffix
              and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(values) == 1, (family.name, suffix, labels, family.samples)
    return values[0]


async def test_status_json_has_the_seeds_shape_plus_each_servers_details(serve: Serve) -> None:
    async with serve() as (supervisor, url):
        response = await get(f"{url}/supervisor/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["status"] == "running" and doc["mode"] == "normal"
    assert doc["consecutive_failures"] == 0
    assert re.fullmatch(r"\d+s|\d+m\d\ds|\d+h\d\dm|\d+d\d+h", doc["uptime"])
    assert {"current_commit", "last_good_commit", "strategy", "max_failures", "evolution"} <= doc.keys()
    assert doc["mcp_servers"] == {"alpha": "running", "beta": "running"}
    alpha = doc["servers"]["alpha"]
    assert isinstance(alpha["pid"], int) and alpha["restarts"] == 0 and alpha["last_error"] is None
    assert alpha["tools"] == 5
    assert {"rss_mb", "cpu_percent", "probe_ms"} <= alpha["health"].keys()


async def test_status_shows_a_stopped_server_as_stopped_at_the_next_request(serve: Serve) -> None:
    async with serve() as (supervisor, url):
        await supervisor.stop_server("beta")
        doc = (await get(f"{url}/supervisor/status")).json()
    assert doc["mcp_servers"] == {"alpha": "running", "beta": "stopped"}
    assert doc["servers"]["beta"]["pid"] is None


async def test_events_come_newest_first_and_filter_by_kind(serve: Serve) -> None:
    async with serve() as (supervisor, url):
        supervisor.events.append({"at": time.time(), "event": "failed_start", "server": "alpha", "reason": "boom"})
        supervisor.changes.audit.append("rollback", trigger="early_exit", bad_commit="b" * 40, to="a" * 40,
                                        reason="alpha died after 0.4s")
        everything = (await get(f"{url}/supervisor/events")).json()["events"]
        rollbacks = (await get(f"{url}/supervisor/events?event=rollback")).json()["events"]
        status = (await get(f"{url}/supervisor/status")).json()
        bad = await get(f"{url}/supervisor/events?limit=lots")
    assert [e["event"] for e in everything[:2]] == ["rollback", "failed_start"]
    assert [e["trigger"] for e in rollbacks] == ["early_exit"]
    assert status["recent_events"][0]["event"] == "rollback"
    assert bad.status_code == 400 and "limit" in bad.json()["error"]


async def test_changes_come_from_the_supervisors_list_changes(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[Any, ...]] = []
    proposal = {"id": "p-1", "title": "Add caching", "status": "rolled_back", "verdict": "rolled_back",
                "trigger": "checks", "commit": "c" * 40, "created_at": time.time(),
                "stages": [{"stage": "proposal", "at": time.time(), "detail": None}]}
    async with serve(servers=["alpha"]) as (supervisor, url):
        monkeypatch.setattr(supervisor, "list_changes", lambda status=None, limit=50: asked.append((status, limit))
                            or [proposal])
        empty = await get(f"{url}/supervisor/changes")
        filtered = await get(f"{url}/supervisor/changes?status=rolled_back&limit=5")
    assert empty.json() == {"changes": [proposal]}
    assert filtered.status_code == 200
    assert asked == [(None, 50), ("rolled_back", 5)]


async def test_metrics_parse_and_follow_the_supervisor_at_scrape_time(serve: Serve) -> None:
    async with serve() as (supervisor, url):
        await until(lambda: all(supervisor.child(n).health.rss_mb is not None for n in ("alpha", "beta")))
        before = await get(f"{url}/metrics")
        await supervisor.stop_server("beta")
        after = metrics((await get(f"{url}/metrics")).text)
    assert before.headers["content-type"].startswith("text/plain")
    families = metrics(before.text)
    assert sample(families["metasup_child_state"], server="alpha", state="running") == 1
    assert sample(families["metasup_child_state"], server="alpha", state="backoff") == 0
    assert sample(families["metasup_child_up"], server="beta") == 1
    assert sample(families["metasup_child_restarts"], "_total", server="alpha") == 0
    assert sample(families["metasup_child_memory_rss_bytes"], server="alpha") > 1024 * 1024
    assert sample(families["metasup_child_tools"], server="alpha") == 5
    assert sample(families["metasup_emergency"]) == 0
    verdicts = {s.labels["verdict"] for s in families["metasup_proposals"].samples}
    assert verdicts == {"applied", "rolled_back", "rejected"}
    assert "metasup_rollbacks" in families
    assert sample(families["metasup_gateway_call_duration_seconds"], "_count", server="alpha") == 0  # no calls yet
    assert sample(after["metasup_child_state"], server="beta", state="stopped") == 1
    assert sample(after["metasup_child_up"], server="beta") == 0


def fake_latency(server: str) -> Any:
    """Both shapes the collector reads: a `(buckets, sum, count)` tuple and a `Histogram`-like object."""
    if server == "alpha":
        return [(0.01, 3), (0.1, 7), (1.0, 8)], 1.25, 9
    return SimpleNamespace(bounds=(0.01, 0.1), counts=(1, 2, 3), sum=0.5, count=3)


async def test_metrics_carry_gateway_latency_and_rollbacks_when_the_owners_have_them(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve() as (supervisor, url):
        monkeypatch.setattr(supervisor.gateway, "latency_histogram", fake_latency)
        evolution = {**supervisor.evolution_status(), "applied": 4, "rolled_back": 2,
                     "rollbacks_by_trigger": {"early_exit": 1, "checks": 1}}
        monkeypatch.setattr(supervisor, "evolution_status", lambda: evolution)
        families = metrics((await get(f"{url}/metrics")).text)
    latency = families["metasup_gateway_call_duration_seconds"]
    assert latency.type == "histogram"
    assert sample(latency, "_bucket", server="alpha", le="0.1") == 7
    assert sample(latency, "_bucket", server="alpha", le="+Inf") == 9
    assert sample(latency, "_count", server="alpha") == 9 and sample(latency, "_sum", server="alpha") == 1.25
    assert sample(latency, "_bucket", server="beta", le="0.1") == 2
    assert sample(latency, "_bucket", server="beta", le="+Inf") == 3
    assert sample(families["metasup_proposals"], "_total", verdict="applied") == 4
    assert sample(families["metasup_rollbacks"], "_total", trigger="early_exit") == 1


def no_figures(server: str) -> None:
    return None


def broken(server: str) -> None:
    raise RuntimeError("figures unavailable")


@pytest.mark.parametrize("accessor", [None, no_figures, broken], ids=["no-accessor", "no-figures", "raises"])
async def test_gateway_latency_is_absent_when_the_gateway_has_no_figures(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, accessor: Any
) -> None:
    async with serve(servers=["alpha"]) as (supervisor, url):
        if accessor is None:
            monkeypatch.delattr(type(supervisor.gateway), "latency_histogram")
        else:
            monkeypatch.setattr(supervisor.gateway, "latency_histogram", accessor)
        response = await get(f"{url}/metrics")
    families = metrics(response.text)
    assert response.status_code == 200
    assert "metasup_gateway_call_duration_seconds" not in families
    assert "metasup_child_up" in families


async def test_a_token_is_required_by_every_endpoint_once_set(serve: Serve) -> None:
    paths = ["/", "/supervisor/status", "/supervisor/changes", "/supervisor/events", "/metrics"]
    async with serve(servers=["alpha"], token="s3cret-status-token") as (supervisor, url):
        without = [(await get(url + p)).status_code for p in paths]
        wrong = [(await get(url + p, token="guess")).status_code for p in paths[: MAX_WRONG - 1]]
        with_token = [(await get(url + p, token="s3cret-status-token")).status_code for p in paths]
        page_by_query = await get(f"{url}/?token=s3cret-status-token")
        json_by_query = await get(f"{url}/supervisor/status?token=s3cret-status-token")
    assert without == [401] * 5 and wrong == [401] * (MAX_WRONG - 1)
    assert with_token == [200] * 5
    assert page_by_query.status_code == 200 and "<title>metasup-mcp</title>" in page_by_query.text
    assert json_by_query.status_code == 401  # only the page takes it from the address; the rest need the header


async def test_guessing_the_status_token_locks_that_address_out_for_a_minute(serve: Serve) -> None:
    async with serve(servers=["alpha"], token="s3cret-status-token") as (supervisor, url):
        first_visits = [(await get(url + "/")).status_code for _ in range(MAX_WRONG + 1)]  # no token: no guess
        guesses = [(await get(url + "/supervisor/status", token=f"guess-{n}")).status_code for n in range(MAX_WRONG)]
        locked = await get(url + "/supervisor/status", token="s3cret-status-token")
    assert first_visits == [401] * (MAX_WRONG + 1) and guesses == [401] * MAX_WRONG
    assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 60
    assert "wrong status tokens from 127.0.0.1" in locked.json()["error"]


def test_a_host_reachable_from_other_machines_needs_a_token() -> None:
    assert "token" in (bind_refusal(StatusHttpSettings(host="0.0.0.0")) or "")
    assert bind_refusal(StatusHttpSettings(host="example.org")) is not None
    assert bind_refusal(StatusHttpSettings(host="0.0.0.0", token="t" * 16)) is None
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert bind_refusal(StatusHttpSettings(host=loopback)) is None


async def test_a_refused_host_leaves_the_supervisor_serving(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="metasup_mcp.http_status")
    async with serve(servers=["alpha"], host="0.0.0.0") as (supervisor, url):
        assert url is None
        assert supervisor.status()["servers"]["alpha"]["state"] == "running"
    assert "status page not started" in caplog.text and "status_http.token" in caplog.text


async def test_a_port_in_use_is_a_warning_and_the_supervisor_carries_on(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metasup_mcp.http_status")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        async with serve(servers=["alpha"], port=port) as (supervisor, url):
            assert url is None
            restarted = await supervisor.restart_server("alpha")
    assert restarted["state"] == "running"
    [record] = [r for r in caplog.records if r.name == "metasup_mcp.http_status"]
    assert record.levelno == logging.WARNING and f"127.0.0.1:{port}" in record.getMessage()
    assert "status_http.port" in record.getMessage()


async def test_disabled_serves_nothing(serve: Serve) -> None:
    async with serve(servers=["alpha"], enabled=False) as (supervisor, url):
        assert url is None


async def test_the_status_server_closes_its_port_when_cancelled(serve: Serve) -> None:
    async with serve(servers=["alpha"]) as (supervisor, url):
        assert (await get(f"{url}/supervisor/status")).status_code == 200
    assert url is not None
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(OSError):
        await anyio.connect_tcp(host, int(port))


async def test_started_without_task_status_it_serves_until_cancelled(tmp_path: Path) -> None:
    """The way serving.py runs it: `tg.start_soon(run_status_http, ...)`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    supervisor = Supervisor(status_config(tmp_path, servers=[]))
    async with supervisor.running(), anyio.create_task_group() as tg:
        tg.start_soon(run_status_http, supervisor, StatusHttpSettings(port=port))

        async def answers() -> bool:
            try:
                return (await get(f"http://127.0.0.1:{port}/supervisor/status")).status_code == 200
            except httpx2.TransportError:
                return False

        await until(answers)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "seconds, text", [(0, "0s"), (42.9, "42s"), (312, "5m12s"), (9240, "2h34m"), (273600, "3d4h"), (None, None)]
)
def test_uptime_reads_like_the_seed(seconds: float | None, text: str | None) -> None:
    assert human_duration(seconds) == text


async def test_the_events_survive_a_supervisor_restart_and_include_manual_rollbacks(serve: Serve) -> None:
    async with serve(servers=["alpha"]) as (supervisor, url):
        change = ChangeRequest("add a file", changes=[{"path": "notes.txt", "content": "hello\n"}])
        assert (await supervisor.propose_change(change)).verdict == "applied"
        await supervisor.rollback("previous", reason="operator undo")
    async with serve(servers=["alpha"]) as (supervisor, url):
        rollbacks = (await get(f"{url}/supervisor/events?event=rollback")).json()["events"]
        status = (await get(f"{url}/supervisor/status")).json()
    assert [(e["source"], e["trigger"], e["reason"]) for e in rollbacks] == [("operator", "manual", "operator undo")]
    assert status["recent_events"][0]["event"] == "rollback"


async def test_a_request_naming_another_host_or_origin_is_refused(serve: Serve) -> None:
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends its own name."""
    async with serve() as (supervisor, url):
        port = url.rsplit(":", 1)[1]
        async with httpx2.AsyncClient(timeout=5) as client:
            foreign_host = await client.get(f"{url}/supervisor/changes", headers={"Host": f"evil.example:{port}"})
            foreign_origin = await client.get(f"{url}/supervisor/status", headers={"Origin": "http://evil.example"})
            same_origin = await client.get(f"{url}/supervisor/status", headers={"Origin": url})
            by_name = await client.get(f"{url}/supervisor/status", headers={"Host": f"localhost:{port}"})
    assert foreign_host.status_code == 403 and "evil.example" in foreign_host.json()["error"]
    assert foreign_origin.status_code == 403
    assert same_origin.status_code == 200 and by_name.status_code == 200


def test_the_allowed_authorities_are_the_bound_names_with_the_exact_port() -> None:
    from metasup_mcp.http_status import allowed_authorities

    assert set(allowed_authorities("127.0.0.1", 9000) or []) == {
        "127.0.0.1:9000", "localhost:9000", "[::1]:9000"}
    assert allowed_authorities("10.0.0.5", 80) == ["10.0.0.5:80", "10.0.0.5"]
    assert allowed_authorities("0.0.0.0", 9000) is None  # a wildcard bind has no one name: the token guards it
