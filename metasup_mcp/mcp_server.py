"""The upstream MCP server: the supervisor's own tools, thin wrappers over `Supervisor`.

Every result carries structured content plus a one-line text summary; every failure a
person can act on is a tool error (isError) whose text says what to do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metasup_mcp import __version__
from metasup_mcp.children.manager import UnknownServer
from metasup_mcp.supervisor import Supervisor, SupervisorError

logger = logging.getLogger(__name__)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(_Args):
    pass


class StatusArgs(_Args):
    name: str | None = Field(None, description="One server's name; omit for all servers")


class NameArgs(_Args):
    name: str = Field(description="The server's name as configured in servers.yaml")


class LogsArgs(NameArgs):
    lines: int = Field(100, ge=1, le=500, description="How many of the last stderr lines")


class ReasonArgs(_Args):
    reason: str = Field("", description="Why; recorded in the audit trail")


Handler = Callable[[Supervisor, Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class SupervisorTool:
    name: str
    description: str
    args: type[_Args]
    run: Handler
    summary: Callable[[dict[str, Any]], str]

    def definition(self) -> types.Tool:
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        return types.Tool(name=self.name, description=self.description, input_schema=schema)


def _server_line(s: dict[str, Any]) -> str:
    pid = f" pid {s['pid']}" if s.get("pid") else ""
    error = f" — {s['last_error']}" if s.get("last_error") else ""
    return f"{s['name']}: {s['state']}{pid}, {s['restarts']} restarts, {s['tools']} tools{error}"


def _status_summary(result: dict[str, Any]) -> str:
    sup = result["supervisor"]
    servers = "; ".join(_server_line(s) for s in result["servers"].values()) or "no servers"
    return f"supervisor {sup['status']} ({sup['consecutive_failures']} consecutive failures): {servers}"


async def _logs(sup: Supervisor, a: LogsArgs) -> dict[str, Any]:
    lines = sup.server_logs(a.name, a.lines)
    return {"name": a.name, "lines": lines}


TOOLS: list[SupervisorTool] = [
    SupervisorTool(
        "server_status",
        "Supervisor state (mode, commits, failures, uptime) and, per child server: state, pid, uptime, "
        "restarts, last exit, health figures, last error and tool count.",
        StatusArgs,
        lambda sup, a: _async(sup.status(a.name)),
        _status_summary,
    ),
    SupervisorTool(
        "start_server", "Start a stopped, exited or fatal child server and wait for its MCP handshake.",
        NameArgs, lambda sup, a: sup.start_server(a.name), _server_line,
    ),
    SupervisorTool(
        "stop_server", "Stop a child server gracefully (stdin close, SIGTERM, then SIGKILL to its process group).",
        NameArgs, lambda sup, a: sup.stop_server(a.name), _server_line,
    ),
    SupervisorTool(
        "restart_server", "Restart a child server now (no backoff) and wait for its MCP handshake.",
        NameArgs, lambda sup, a: sup.restart_server(a.name), _server_line,
    ),
    SupervisorTool(
        "server_logs", "The last lines a child server wrote to stderr (kept across its restarts).",
        LogsArgs, _logs, lambda r: "\n".join([f"last {len(r['lines'])} stderr lines of {r['name']}:", *r["lines"]]),
    ),
    SupervisorTool(
        "emergency_stop", "Stop every child server and refuse starts until `recover` is called.",
        ReasonArgs, lambda sup, a: sup.emergency_stop(a.reason),
        lambda r: f"supervisor {r['status']}: {r['emergency_reason']}",
    ),
    SupervisorTool(
        "recover", "Leave emergency mode and start every enabled child server again.",
        NoArgs, lambda sup, a: sup.recover(), lambda r: f"supervisor {r['status']}, mode {r['mode']}",
    ),
]


async def _async(value: dict[str, Any]) -> dict[str, Any]:
    return value


def tool_result(structured: dict[str, Any], summary: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=summary)], structured_content=structured
    )


def tool_error(message: str, **details: Any) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)],
        structured_content={"error": message, **details},
        is_error=True,
    )


class SupervisorSurface:
    """Builds the low-level MCP `Server` that fronts one `Supervisor`."""

    def __init__(self, supervisor: Supervisor, tools: list[SupervisorTool] | None = None) -> None:
        self.supervisor = supervisor
        self.tools = {tool.name: tool for tool in (tools or TOOLS)}

    def build(self) -> Server[Any]:
        return Server(
            "metasup-mcp",
            version=__version__,
            instructions="Supervises child MCP servers; see server_status.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )

    @staticmethod
    def initialization_options(server: Server[Any]) -> Any:
        return server.create_initialization_options(NotificationOptions(tools_changed=True))

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool.definition() for tool in self.tools.values()])

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = self.tools.get(params.name)
        if tool is None:
            known = ", ".join(self.tools)
            return tool_error(f"unknown tool {params.name!r}; this server has: {known}")
        try:
            args = tool.args.model_validate(params.arguments or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            return tool_error(f"{tool.name}: invalid arguments: {problems}")
        try:
            result = await tool.run(self.supervisor, args)
        except (UnknownServer, SupervisorError) as exc:
            return tool_error(f"{tool.name}: {exc}")
        return tool_result(json.loads(json.dumps(result, default=str)), tool.summary(result))
