"""A real supervisor with real (fixture) children and its status endpoint, for the status tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from metasup_mcp.children.state import ChildState
from metasup_mcp.config import Config, parse_config
from metasup_mcp.http_status import run_status_http
from metasup_mcp.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "child.py"
DEADLINE = 10.0


def status_config(tmp_path: Path, servers: Sequence[str] = ("alpha", "beta"), **status_http: Any) -> Config:
    document = {
        "supervisor": {
            "workspace": str(tmp_path / "workspace"),
            "state_dir": str(tmp_path / "state"),
            "min_runtime": "1s",
            "health_checks": {"interval": "100ms", "probe_timeout": "2s"},
            "status_http": {"host": "127.0.0.1", "port": 0, **status_http},
            "mcp_servers": [{"name": name, "command": sys.executable, "args": [str(FIXTURE)]} for name in servers],
        }
    }
    return parse_config(yaml.safe_dump(document), source=tmp_path / "servers.yaml")


async def wait_until_running(supervisor: Supervisor) -> None:
    for child in supervisor.manager:
        assert await child.wait_for(lambda c: c.state is ChildState.RUNNING, DEADLINE), (child.name, child.state)


@asynccontextmanager
async def serving(tmp_path: Path, servers: Sequence[str] = ("alpha", "beta"), *, track: set[str] | None = None,
                  **status_http: Any) -> AsyncIterator[tuple[Supervisor, str | None]]:
    """A running supervisor whose children are all running, and its status URL (None if not served).

    `track` receives the supervisor's instance id (conftest's `instance_ids`, which the
    leftover-process guard checks after the test)."""
    config = status_config(tmp_path, servers, **status_http)
    supervisor = Supervisor(config)
    if track is not None:
        track.add(supervisor.instance_id)
    async with supervisor.running():
        async with anyio.create_task_group() as tg:
            url = await tg.start(run_status_http, supervisor, config.supervisor.status_http)
            await wait_until_running(supervisor)
            yield supervisor, url
            tg.cancel_scope.cancel()


Serve = Callable[..., AbstractAsyncContextManager[tuple[Supervisor, "str | None"]]]


@pytest.fixture
def serve(tmp_path: Path, instance_ids: set[str]) -> Serve:
    """`async with serve(servers=[...], **status_http) as (supervisor, url):` in a test."""
    return partial(serving, tmp_path, track=instance_ids)


async def until(predicate: Any, timeout: float = DEADLINE, interval: float = 0.05) -> None:
    """Poll `predicate()` (sync or async) until it holds; fail at the deadline."""
    with anyio.fail_after(timeout):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
