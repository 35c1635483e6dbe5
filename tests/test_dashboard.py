"""The dashboard page in a real headless Chromium, against a real supervisor: the DOM after its
scripts ran shows the servers, a rollback that just happened, and what changed since it loaded."""

from __future__ import annotations

import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.http_status_support import Serve, serve  # noqa: F401 (serve: fixture)

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)
BROWSER_DEADLINE = 45.0  # a cold Chromium start on a loaded machine; it usually takes ~1 s

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chromium_command(url: str, profile: Path, *extra: str) -> list[str]:
    assert CHROMIUM is not None
    return [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url,
    ]


async def rendered_dom(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran for 5 s of virtual time (two refreshes)."""
    with anyio.fail_after(BROWSER_DEADLINE):
        result = await anyio.run_process(chromium_command(url, profile, "--dump-dom"), check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout.decode()


class Marked(HTMLParser):
    """Every element carrying a data-server, data-event or data-change attribute, with its text."""

    KEYS = ("data-server", "data-event", "data-change")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._open: list[tuple[str, dict[str, Any]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if any(key in attributes for key in self.KEYS):
            element = {**attributes, "text": ""}
            self.found.append(element)
            self._open.append((tag, element))
        elif self._open and tag == self._open[-1][0]:
            self._open.append((tag, {}))  # same tag nested: keep end tags paired

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for _, element in self._open:
            if element:
                element["text"] += data

    def all(self, key: str) -> list[dict[str, Any]]:
        return [element for element in self.found if key in element]


def marked(dom: str) -> Marked:
    parser = Marked()
    parser.feed(dom)
    return parser


async def test_the_page_shows_each_server_and_a_rollback_that_just_happened(serve: Serve, tmp_path: Path) -> None:
    async with serve() as (supervisor, url):
        supervisor.changes.audit.append(
            "rollback", id="p-1", trigger="early_exit", bad_commit="b" * 40, to="a" * 40,
            evidence="alpha exited 0.4s after the change",
        )
        dom = await rendered_dom(f"{url}/", tmp_path / "profile")
    page = marked(dom)
    servers = {row["data-server"]: row for row in page.all("data-server")}
    assert {name: row["data-state"] for name, row in servers.items()} == {"alpha": "running", "beta": "running"}
    assert all(row["text"].startswith(name) and "running" in row["text"] for name, row in servers.items())
    [rollback] = page.all("data-event")
    assert rollback["data-event"] == "rollback" and rollback["data-trigger"] == "early_exit"
    assert "bbbbbbbbbb → aaaaaaaaaa" in rollback["text"]
    assert "alpha exited 0.4s after the change" in rollback["text"]
    assert re.search(r'id="conn" class="[^"]*\bhidden\b', dom), "the connection banner is showing"


async def test_the_page_refreshes_itself_and_shows_an_emergency(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first fetch sees no proposal; a later one does, and the DOM shows it."""
    answers: list[int] = []
    proposal = {"id": "p-7", "title": "Cache the lookups", "status": "rolled_back", "verdict": "rolled_back",
                "trigger": "checks", "commit": "c" * 40, "created_at": time.time(),
                "stages": [{"stage": "proposal", "at": time.time(), "detail": None},
                           {"stage": "rolled_back", "at": time.time(), "detail": "tests failed"}]}

    def list_changes(status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        answers.append(limit)
        return [] if len(answers) == 1 else [proposal]

    async with serve(servers=["alpha"], token="s3cret-status-token") as (supervisor, url):
        await supervisor.emergency_stop("operator pressed the button")
        monkeypatch.setattr(supervisor, "list_changes", list_changes)
        dom = await rendered_dom(f"{url}/?token=s3cret-status-token", tmp_path / "profile")
    assert len(answers) >= 2
    [change] = marked(dom).all("data-change")
    assert change["data-verdict"] == "rolled_back"
    assert "Cache the lookups" in change["text"] and "tests failed" in change["text"]
    assert "EMERGENCY STOP" in dom and "operator pressed the button" in dom
    [row] = marked(dom).all("data-server")
    assert row["data-state"] == "stopped"


async def test_without_its_token_the_page_is_refused(serve: Serve, tmp_path: Path) -> None:
    async with serve(servers=["alpha"], token="s3cret-status-token") as (supervisor, url):
        dom = await rendered_dom(f"{url}/", tmp_path / "profile")
    assert "unauthorized" in dom and "data-server" not in dom
