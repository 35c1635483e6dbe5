"""Helpers shared by the gateway tests (this module holds no tests).

`connected(tmp_path, servers)` runs a real `Supervisor` over real child processes and connects
a real MCP `ClientSession` to its MCP surface in memory, recording what the server sends unasked
(notifications, log messages). Waiting is on events or polling with deadlines, never sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import yaml
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.children.state import ChildState
from metasup_mcp.config import load_config
from metasup_mcp.mcp_server import SupervisorSurface
from metasup_mcp.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "child.py"
EXAMPLES = ROOT / "metasup_mcp" / "examples"
START = 15.0  # an SDK child needs ~1.1 s to import `mcp`; two cores may be busy


def fixture(name: str, *flags: str, **fields: Any) -> dict[str, Any]:
    """A servers.yaml entry running the fast raw fixture child."""
    return {"name": name, "command": "python", "args": ["-u", str(FIXTURE), *flags], **fields}


def example(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": "python", "args": ["-u", str(EXAMPLES / f"{name}.py")], **fields}


def write_config(tmp_path: Path, servers: list[dict[str, Any]], **overrides: Any) -> Path:
    supervisor: dict[str, Any] = {
        "workspace": str(tmp_path / "workspace"),
        "state_dir": str(tmp_path / "state"),
        "min_runtime": "0.5s",
        "max_failures": 50,
        "health_checks": {"interval": "5s", "probe_timeout": "5s"},
        "restart": {"backoff_initial": "0.1s", "backoff_max": "0.5s", "max_restarts": 50},
        "status_http": {"enabled": False},
        "mcp_servers": servers,
        **overrides,
    }
    path = tmp_path / "servers.yaml"
    path.write_text(yaml.safe_dump({"supervisor": supervisor}, sort_keys=False))
    return path


@dataclass
class Upstream:
    """The client side of a test: its session and what the supervisor sent it unasked."""

    sup: Supervisor
    session: ClientSession
    notifications: list[str] = field(default_factory=list)  # methods, in arrival order
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)

    def count(self, method: str) -> int:
        return self.notifications.count(method)

    async def tool_names(self) -> set[str]:
        return {tool.name for tool in (await self.session.list_tools()).tools}

    async def until_tools(self, predicate: Callable[[set[str]], bool], timeout: float = START) -> set[str]:
        """Poll tools/list until `predicate(names)` holds; fail at the deadline with what was listed."""
        names: set[str] = set()
        with anyio.move_on_after(timeout):
            while not predicate(names := await self.tool_names()):
                await anyio.sleep(0.05)
            return names
        raise AssertionError(f"tools/list never satisfied the condition within {timeout:g}s; it has {sorted(names)}")

    async def settled(self, timeout: float = START) -> None:
        """Wait until the gateway has re-listed everything it was told about and announced it."""
        await eventually(lambda: self.sup.gateway.settled, timeout)
        await self.session.send_ping()  # anything sent before this answer is now delivered
        await anyio.wait_all_tasks_blocked()


@asynccontextmanager
async def connected(
    tmp_path: Path, servers: list[dict[str, Any]], *, client: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[Upstream]:
    """A running supervisor over `servers` and a legacy-era client session connected to it."""
    sup = Supervisor(load_config(write_config(tmp_path, servers, **overrides)))
    async with sup.running():
        surface = SupervisorSurface(sup)
        server = surface.build()
        async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: server.run(s_read, s_write, surface.initialization_options(server)))
                up: Upstream | None = None

                async def on_message(message: Any) -> None:
                    if up is not None and isinstance(message, types.ServerNotification):
                        up.notifications.append(message.method)

                async def on_log(params: types.LoggingMessageNotificationParams) -> None:
                    if up is not None:
                        up.logs.append(params)

                async with ClientSession(
                    c_read, c_write, message_handler=on_message, logging_callback=on_log, **(client or {})
                ) as session:
                    up = Upstream(sup, session)
                    await session.initialize()
                    yield up
                tg.cancel_scope.cancel()


async def eventually(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail with a clear message at the deadline."""
    with anyio.move_on_after(timeout):
        while not (value := predicate()):
            await anyio.sleep(interval)
        return value
    raise AssertionError(f"condition not met within {timeout:g}s: {getattr(predicate, '__name__', predicate)}")


async def running(sup: Supervisor, name: str, timeout: float = START) -> ManagedChild:
    child = sup.child(name)
    assert await child.wait_for(lambda c: c.state is ChildState.RUNNING, timeout), sup.status(name)
    return child


def structured_error(result: types.CallToolResult) -> dict[str, Any]:
    assert result.is_error, result
    assert isinstance(result.structured_content, dict), result
    return result.structured_content
