"""The upstream MCP server: the supervisor's own tools, thin wrappers over `Supervisor`, and the
children's tools, resources and prompts, routed through `Supervisor.gateway`.

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
from mcp.server import InitializationOptions, NotificationOptions, Server, ServerRequestContext
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metasup_mcp import __version__
from metasup_mcp import surface_content as content
from metasup_mcp.elicitation import Elicitation, connection_identity
from metasup_mcp.elicitation import resumed as elicitation_resumed
from metasup_mcp.supervisor import ChangeError, ChangeRequest, Progress, Supervisor, SupervisorError, UnknownServer

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


class ProposeArgs(_Args):
    title: str = Field(min_length=1, description="Stage 1, the proposal: one short line")
    description: str = Field("", description="Why this change, and what it should achieve")
    steps: list[str] = Field([], description="Stage 2, the expansion: the concrete steps")
    changes: list[dict[str, Any]] = Field(
        description="Stage 3, the edit: [{path, content}] or [{path, delete: true}] "
        "(also {file, content} and {filename, contents}); paths relative to the workspace"
    )
    verify: list[dict[str, Any]] = Field(
        [], description="Behaviour checks run through the gateway against the restarted servers before the "
        "change is kept: [{tool: <namespace>__<tool>, arguments: {}, expect: <tool result, e.g. "
        "{structuredContent: {...}}>, match: subset|exact}]; expect defaults to {isError: false}. A mismatch "
        "rolls the change back (trigger behaviour:<tool>)",
    )
    dry_run: bool = Field(False, description="Validate only; write nothing")


class DecideArgs(_Args):
    id: str = Field(description="The id of a proposal waiting for approval (pending_approval)")
    token: str = Field(description="The operator token (METASUP_OPERATOR_TOKEN or approval.operator_token_file)")
    note: str = Field("", description="Why; recorded in the audit trail")


class ListChangesArgs(_Args):
    status: str | None = Field(None, description="Only proposals in this status (e.g. applied, rolled_back)")
    limit: int = Field(20, ge=1, le=200)


class ChangeIdArgs(_Args):
    id: str = Field(description="A proposal id as returned by propose_change")


class RollbackArgs(_Args):
    target: str = Field("last_good", description="last_good, previous, or a commit the supervisor verified")
    reason: str = Field("", description="Why; recorded in the audit trail")


class ReloadArgs(_Args):
    token: str = Field(description="The operator token (METASUP_OPERATOR_TOKEN, or approval.operator_token_file)")


async def _reload(sup: Supervisor, a: ReloadArgs, call: ToolCall) -> dict[str, Any]:
    from metasup_mcp.reload import check_operator_token

    check_operator_token(sup.operator_gate, a.token)
    return await sup.reload_config(trigger="tool")


def _reload_summary(r: dict[str, Any]) -> str:
    diff = r["diff"]
    moved = ", ".join(f"{k} {', '.join(diff[k])}" for k in ("added", "removed", "changed") if diff[k]) or "no server changed"
    problems = [f"{name}: {evidence['problem']}" for name, evidence in (r.get("evidence") or {}).items()]
    why = "; " + "; ".join(problems) if problems else ""
    return f"reload {r['verdict']}: {moved}{why}"


class ProposeServerArgs(_Args):
    name: str = Field(min_length=1, description="The server's name (also its tools' namespace)")
    command: str | None = Field(None, description="The program that starts a local server")
    args: list[str] = Field([], description="Its arguments")
    env: dict[str, str] = Field({}, description="Environment for the child")
    url: str | None = Field(None, description="A remote server's streamable HTTP endpoint, instead of command")
    headers: dict[str, str] = Field({}, description="HTTP headers for url")
    watch: list[str] = Field([], description="Workspace paths whose changes restart it")
    reason: str = Field("", description="Why the server is needed; shown to the operator")


class ServerDecisionArgs(_Args):
    id: str = Field(description="The request id returned by propose_server")
    token: str = Field(description="The operator token")
    note: str = Field("", description="Recorded with the decision")


async def _propose_server(sup: Supervisor, a: ProposeServerArgs, call: ToolCall) -> dict[str, Any]:
    from metasup_mcp.server_requests import ServerRequests

    entry = {k: v for k, v in a.model_dump(exclude={"reason"}).items() if v not in (None, [], {})}
    return ServerRequests(sup).propose(entry, a.reason, call.caller)


async def _approve_server(sup: Supervisor, a: ServerDecisionArgs, call: ToolCall) -> dict[str, Any]:
    from metasup_mcp.server_requests import ServerRequests

    return await ServerRequests(sup).approve(a.id, a.token, a.note, call.caller)


async def _reject_server(sup: Supervisor, a: ServerDecisionArgs, call: ToolCall) -> dict[str, Any]:
    from metasup_mcp.server_requests import ServerRequests

    return ServerRequests(sup).reject(a.id, a.token, a.note)


@dataclass(frozen=True)
class ToolCall:
    """What a tool may need of the request beyond its arguments."""

    progress: Progress
    caller: str | None = None  # the connection's identity (see elicitation.connection_identity)
    elicitation: Elicitation | None = None
    resumed: tuple[str, str] | None = None  # (proposal id, action): a retry answering our approval request


Handler = Callable[[Supervisor, Any, ToolCall], Awaitable[dict[str, Any]]]


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


async def _propose(sup: Supervisor, a: ProposeArgs, call: ToolCall) -> dict[str, Any]:
    if call.resumed is not None:  # the client's answer to the approval it was asked (2026-07-28)
        proposal_id, action = call.resumed
        return (await sup.changes.answer_elicitation(proposal_id, action, call.progress)).result()
    ask = call.elicitation.asker() if call.elicitation is not None else None
    request = ChangeRequest(a.title, a.description, a.steps, a.changes, a.dry_run, a.verify, call.caller, ask)
    return (await sup.propose_change(request, call.progress)).result()


def _decider(approve: bool) -> Handler:
    async def decide(sup: Supervisor, a: DecideArgs, call: ToolCall) -> dict[str, Any]:
        proposal = await sup.decide_change(a.id, approve, a.token, a.note, call.caller, "mcp", call.progress)
        return proposal.result()

    return decide


def _propose_summary(r: dict[str, Any]) -> str:
    commit = f" {r['commit'][:12]}" if r.get("commit") else ""
    why = f": {r['reasons'][0]}" if r.get("reasons") else ""
    return f"{r['id']}: {r['verdict']}{commit}{why}"


async def _list_changes(sup: Supervisor, a: ListChangesArgs, call: ToolCall) -> dict[str, Any]:
    return {"changes": sup.list_changes(a.status, a.limit)}


def _changes_summary(r: dict[str, Any]) -> str:
    lines = [f"{c['id']}: {c['verdict'] or c['status']} — {c['title']}" for c in r["changes"]]
    return "\n".join(lines) or "no changes yet"


async def _logs(sup: Supervisor, a: LogsArgs, call: ToolCall) -> dict[str, Any]:
    lines = sup.server_logs(a.name, a.lines)
    return {"name": a.name, "lines": lines}


TOOLS: list[SupervisorTool] = [
    SupervisorTool(
        "server_status",
        "Supervisor state (mode, commits, failures, uptime) and, per child server: state, pid, uptime, "
        "restarts, last exit, health figures, last error and tool count.",
        StatusArgs,
        lambda sup, a, _: _async(sup.status(a.name)),
        _status_summary,
    ),
    SupervisorTool(
        "start_server", "Start a stopped, exited or fatal child server and wait for its MCP handshake.",
        NameArgs, lambda sup, a, _: sup.start_server(a.name), _server_line,
    ),
    SupervisorTool(
        "stop_server", "Stop a child server gracefully (stdin close, SIGTERM, then SIGKILL to its process group).",
        NameArgs, lambda sup, a, _: sup.stop_server(a.name), _server_line,
    ),
    SupervisorTool(
        "restart_server", "Restart a child server now (no backoff) and wait for its MCP handshake.",
        NameArgs, lambda sup, a, _: sup.restart_server(a.name), _server_line,
    ),
    SupervisorTool(
        "server_logs", "The last lines a child server wrote to stderr (kept across its restarts).",
        LogsArgs, _logs, lambda r: "\n".join([f"last {len(r['lines'])} stderr lines of {r['name']}:", *r["lines"]]),
    ),
    SupervisorTool(
        "emergency_stop", "Stop every child server (a change in flight is rolled back) and refuse starts, changes and rollbacks until `recover` is called.",
        ReasonArgs, lambda sup, a, _: sup.emergency_stop(a.reason),
        lambda r: f"supervisor {r['status']}: {r['emergency_reason']}",
    ),
    SupervisorTool(
        "recover", "Close the evolution breaker (changes allowed again); after an emergency stop, also start every enabled child server again.",
        NoArgs, lambda sup, a, _: sup.recover(), lambda r: f"supervisor {r['status']}, mode {r['mode']}",
    ),
    SupervisorTool(
        "propose_change",
        "Propose a change to the workspace the child servers run from. It is validated (paths, protected "
        "files, size, safety rules), approved, committed, verified (compile, checks, restart of the affected "
        "servers, min_runtime, handshake, health) and kept as last good — or rolled back automatically, the "
        "bad commit kept reachable. Returns {id, verdict, commit, reasons, checks}.",
        ProposeArgs, _propose, _propose_summary,
    ),
    SupervisorTool(
        "approve_change",
        "Approve a proposal waiting for a human (pending_approval) with the operator token: it is then applied "
        "and verified like any change. The session that proposed a change can never approve it.",
        DecideArgs, _decider(True), _propose_summary,
    ),
    SupervisorTool(
        "reject_change", "Reject a proposal waiting for a human (pending_approval), with the operator token.",
        DecideArgs, _decider(False), _propose_summary,
    ),
    SupervisorTool(
        "list_changes", "Recent proposals, newest first, with their stage history and verdicts.",
        ListChangesArgs, _list_changes, _changes_summary,
    ),
    SupervisorTool(
        "get_change", "One proposal with its stages, checks, reasons and commits.",
        ChangeIdArgs, lambda sup, a, _: _async(sup.get_change(a.id).model_dump(mode="json")),
        lambda r: f"{r['id']}: {r['verdict'] or r['status']} — {r['title']}",
    ),
    SupervisorTool(
        "rollback",
        "Put the code back as last_good, previous (the verified commit before last good in the history of "
        "last-good moves) or a commit the supervisor verified has it; what it overwrites is saved first, data "
        "and the config are never touched, and the affected servers restart.",
        RollbackArgs, lambda sup, a, _: sup.rollback(a.target, a.reason),
        lambda r: r.get("message") if r.get("noop") else
        f"rolled back {str(r['from'])[:12]} -> {str(r['to'])[:12]}; restarted {', '.join(r['restarted']) or 'none'}",
    ),
    SupervisorTool(
        "reload_config",
        "Reload servers.yaml as one transaction: added, removed and changed servers are applied; new and "
        "changed ones must start and stay running for min_runtime, else the previous servers are restored and "
        "the evidence returned. Unchanged servers are untouched. Needs the operator token.",
        ReloadArgs, _reload, _reload_summary,
    ),
    SupervisorTool(
        "propose_server",
        "Ask for a server to be added to (or changed in) servers.yaml. The config is the operator's: the "
        "request waits as pending_approval until an operator approves it, then it is applied by the same "
        "transaction as reload_config. Returns {id, status, action, entry}.",
        ProposeServerArgs, _propose_server, lambda r: f"{r['id']}: {r['status']} ({r['action']} {r['entry']['name']})",
    ),
    SupervisorTool(
        "approve_server",
        "Operator only: write a proposed server into servers.yaml and reload; if it fails to start, the "
        "file and the servers go back as they were.",
        ServerDecisionArgs, _approve_server, lambda r: f"{r['id']}: {r['status']}",
    ),
    SupervisorTool(
        "reject_server", "Operator only: refuse a proposed server.",
        ServerDecisionArgs, _reject_server, lambda r: f"{r['id']}: {r['status']}",
    ),
    SupervisorTool(
        "evolution_status", "Strategy, success rate, rollbacks by trigger, mean verify time, queue length.",
        NoArgs, lambda sup, a, _: _async(sup.evolution_status()),
        lambda r: f"strategy {r['strategy']}: {r['applied']} applied, {r['rolled_back']} rolled back, "
        f"{r['rejected']} rejected",
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


# The children's lists change as they come and go: every kind is announced (legacy era).
LIST_CHANGED = NotificationOptions(tools_changed=True, resources_changed=True, prompts_changed=True)


class _SurfaceServer(Server[Any]):
    """Advertises listChanged on every transport, not only where the caller passes options."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or LIST_CHANGED, experimental_capabilities, extensions
        )


class SupervisorSurface:
    """Builds the low-level MCP `Server` that fronts one `Supervisor`."""

    def __init__(self, supervisor: Supervisor, tools: list[SupervisorTool] | None = None) -> None:
        self.supervisor = supervisor
        self.tools = {tool.name: tool for tool in (tools or TOOLS)}
        self.gateway = supervisor.gateway
        self.gateway.reserve(tools=self.tools, prompts=[prompt.name for prompt in content.PROMPTS])

    def build(self) -> Server[Any]:
        server = _SurfaceServer(
            "metasup-mcp",
            version=__version__,
            instructions="Supervises child MCP servers; see server_status. Their tools appear as <server>__<tool>.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_completion=self._complete,  # declares `completions`; children's prompts and templates
            # 2026-07-28 clients hear of list changes only through subscriptions/listen.
            on_subscriptions_listen=ListenHandler(self.gateway.upstream.bus),
        )
        server.add_notification_handler("notifications/initialized", types.NotificationParams, self._initialized)
        # Children's log messages are relayed; registered here rather than as on_set_logging_level,
        # which warns that logging is deprecated in 2026-07-28 (it is not in the legacy era).
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_logging_level)
        # The SDK wraps every request in an OpenTelemetry span by default; nothing here exports
        # traces, and on a relayed call the span costs as much as the supervisor's own work.
        server.middleware = [self._cached_tool_list]
        return server

    async def _cached_tool_list(self, ctx: ServerRequestContext[Any], call_next: Any) -> Any:
        """Serve `tools/list` to an initialized legacy-era client from the gateway's ready-made
        wire form (the SDK's per-request check of 1,000 tools cost 26 ms); everything else,
        and modern-era clients (whose results the SDK stamps), go the usual way."""
        connection = getattr(ctx.session, "_connection", None)  # the SDK gives handlers no public handle
        if (
            ctx.method != "tools/list"
            or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
            or not getattr(connection, "initialize_accepted", False)
        ):
            return await call_next(ctx)
        self.gateway.upstream.attach(ctx.session)
        await self.gateway.first_listing()
        return self.gateway.tool_list_wire(self._own_tools, ctx.protocol_version)

    def _own_tools(self) -> list[types.Tool]:
        return [tool.definition() for tool in self.tools.values()]

    @staticmethod
    def initialization_options(server: Server[Any]) -> Any:
        return server.create_initialization_options(LIST_CHANGED)

    async def _initialized(self, ctx: ServerRequestContext[Any], params: types.NotificationParams) -> None:
        self.gateway.upstream.attach(ctx.session)  # so list_changed reaches this client

    async def _set_logging_level(
        self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        self.gateway.upstream.set_level(params.level)
        return types.EmptyResult()

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self.gateway.upstream.attach(ctx.session)
        await self.gateway.first_listing()  # a client that lists once, on connecting, sees the children's tools
        own = [tool.definition() for tool in self.tools.values()]
        return types.ListToolsResult(tools=[*own, *self.gateway.tools()])

    async def _list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        await self.gateway.first_listing()
        return types.ListResourcesResult(resources=[*content.RESOURCES, *self.gateway.resources()])

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        await self.gateway.first_listing()
        return types.ListResourceTemplatesResult(
            resource_templates=[*content.TEMPLATES, *self.gateway.resource_templates()]
        )

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> dict[str, Any] | types.ReadResourceResult:
        try:
            own = content.read_resource(self.supervisor, params.uri)
        except LookupError as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from None
        if own is not None:
            return own
        result = await self.gateway.read_resource(ctx, params.uri)
        if result is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown resource {params.uri!r}; resources/list shows them")
        return result

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        await self.gateway.first_listing()
        return types.ListPromptsResult(prompts=[*content.PROMPTS, *self.gateway.prompts()])

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> dict[str, Any] | types.GetPromptResult:
        try:
            own = content.get_prompt(self.supervisor, params.name, params.arguments)
        except LookupError as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from None
        if own is not None:
            return own
        result = await self.gateway.get_prompt(ctx, params.name, params.arguments)
        if result is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown prompt {params.name!r}; prompts/list shows them")
        return result

    async def _complete(
        self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> dict[str, Any] | types.CompleteResult:
        forwarded = await self.gateway.complete(ctx, params)
        # The supervisor's own prompts and templates offer no suggestions.
        return forwarded if forwarded is not None else types.CompleteResult(completion=types.Completion(values=[]))

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult | dict[str, Any]:
        tool = self.tools.get(params.name)
        if tool is None:
            forwarded = await self.gateway.call_tool(ctx, params.name, params.arguments)
            if forwarded is not None:
                return forwarded
            if (stopped := self.supervisor.why_unavailable(params.name)) is not None:
                return tool_error(stopped[0], **stopped[1])
            return tool_error(
                f"unknown tool {params.name!r}: neither the supervisor nor a running child server offers it; "
                "tools/list shows what is available"
            )
        try:
            args = tool.args.model_validate(params.arguments or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            return tool_error(f"{tool.name}: invalid arguments: {problems}")
        elicitation = Elicitation(ctx) if tool.name == "propose_change" else None
        try:
            resumed = elicitation_resumed(params) if elicitation is not None else None
        except ValueError as exc:
            return tool_error(f"{tool.name}: {exc}")
        call = ToolCall(_progress_reporter(ctx), connection_identity(ctx), elicitation, resumed)
        try:
            result = await tool.run(self.supervisor, args, call)
        except (UnknownServer, SupervisorError, ChangeError) as exc:
            return tool_error(f"{tool.name}: {exc}")
        if elicitation is not None and elicitation.deferred is not None and result.get("verdict") == "pending_approval":
            return elicitation.input_required()
        return tool_result(json.loads(json.dumps(result, default=str)), tool.summary(result))


def _progress_reporter(ctx: ServerRequestContext[Any]) -> Progress:
    """Stage messages as progress notifications (a no-op when the caller sent no progress token)."""
    count = 0

    async def report(message: str) -> None:
        nonlocal count
        count += 1
        try:
            await ctx.session.report_progress(count, None, message)
        except Exception:  # progress is best effort: never fail the change for it
            logger.debug("could not send progress", exc_info=True)

    return report
