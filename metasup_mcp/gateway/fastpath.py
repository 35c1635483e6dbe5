"""The raw relay of `tools/call` between the stdio wire and a child's pipes.

A call through the SDK on both sides costs a task per request on each side, pydantic validation
and serialisation four times over, and two dispatchers: more than many tools take to answer.
For the common case the gateway instead forwards the JSON-RPC line itself, rewriting only what
must change: the request id (to one of its own, `metasup-<n>`), the tool name (to the child's),
the progress token (to one of its own, so that progress is routed back), and `_meta` (reserved
keys dropped, the rest, `traceparent` included, passed on). The answer comes back the same way
with the caller's id. What a caller gets is what the SDK path gives: the child's result as it
sent it (resource links re-addressed), and the same structured errors for child errors, unusable
answers, deaths (`child_died`, at once) and `call_timeout` (the request is cancelled in the
child). A caller's `notifications/cancelled` is passed to the child under the child's id.

The raw relay takes a call only when the SDK would add nothing: a legacy-era (initialize)
client is connected on the stdio wire, the name is listed, the child is live and speaks the
legacy era too. Everything else (a child restarting, a name not listed yet, a modern client,
HTTP) takes the SDK path in `core.Gateway.call_tool`, which waits, retries and validates.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from metasup_mcp.children.child import Connection, ManagedChild
from metasup_mcp.gateway import errors
from metasup_mcp.gateway.errors import Unanswered
from metasup_mcp.gateway.naming import readdress_links

if TYPE_CHECKING:
    from metasup_mcp.gateway.core import Gateway

logger = logging.getLogger(__name__)

ID_PREFIX = "metasup-"
_MARK = b'"' + ID_PREFIX.encode()  # in every line that answers or reports on a relayed call
_RESERVED_META_PREFIX = "io.modelcontextprotocol/"

WriteUpstream = Callable[[bytes], Awaitable[None]]


@dataclass(slots=True)
class RelayedCall:
    upstream_id: Any
    child_id: str
    exposed: str
    child: ManagedChild
    connection: Connection
    started: float
    deadline: float
    arguments: dict[str, Any] | None = None
    token: Any = None  # the caller's progress token, if it sent one
    child_token: str | None = None


@dataclass
class FastPath:
    gateway: Gateway
    write_upstream: WriteUpstream | None = None  # set while the stdio wire is served
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _calls: dict[str, RelayedCall] = field(default_factory=dict)  # by child id
    _by_upstream: dict[Any, str] = field(default_factory=dict)
    _by_token: dict[str, str] = field(default_factory=dict)
    _deadlines: list[tuple[float, str]] = field(default_factory=list)
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _watched: set[int] = field(default_factory=set)  # id() of connections with an exit watcher

    # -- upstream: lines from the client ------------------------------------------------------

    async def on_upstream_line(self, line: bytes) -> bool:
        """Relay `line` if it is a call the raw path takes, or a cancellation of one; True if
        consumed (nothing of it reaches the SDK server)."""
        if self.write_upstream is None or (b'"tools/call"' not in line and b'"notifications/cancelled"' not in line):
            return False
        try:
            message = json.loads(line)
        except ValueError:
            return False  # the SDK answers a parse error
        if not isinstance(message, dict):
            return False
        method = message.get("method")
        if method == "notifications/cancelled":
            return await self._cancel(message.get("params"))
        if method != "tools/call" or "id" not in message or not self.gateway.upstream.legacy_client_connected:
            return False
        params = message.get("params")
        if not isinstance(params, dict) or not isinstance(name := params.get("name"), str):
            return False
        arguments = params.get("arguments")
        meta = params.get("_meta")
        if not isinstance(arguments, (dict, type(None))) or not isinstance(meta, (dict, type(None))):
            return False
        route = self.gateway._index.tools.get(name)
        if route is None:
            return False
        child = self.gateway._children[route.server]
        connection = child.connection
        if connection is None or not _live(connection):
            return False  # the SDK path waits up to call_wait for it
        if connection.session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return False
        upstream_id = message["id"]
        if not _is_id(upstream_id) or upstream_id in self._by_upstream:
            return False  # an invalid or duplicate id: the SDK answers that
        await self._relay(upstream_id, name, route.name, arguments, meta, child, connection)
        return True

    async def _relay(
        self, upstream_id: Any, exposed: str, own_name: str, arguments: dict[str, Any] | None,
        meta: dict[str, Any] | None, child: ManagedChild, connection: Connection,
    ) -> None:
        n = next(self._ids)
        child_id = f"{ID_PREFIX}{n}"
        now = perf_counter()
        deadline = anyio.current_time() + child.config.call_timeout
        call = RelayedCall(upstream_id, child_id, exposed, child, connection, now, deadline, arguments)
        forwarded: dict[str, Any] = {}
        if meta:
            for key, value in meta.items():
                if key == "progressToken":
                    call.token, call.child_token = value, f"{ID_PREFIX}p{n}"
                elif not key.startswith(_RESERVED_META_PREFIX):
                    forwarded[key] = value
            if call.child_token is not None:
                forwarded["progressToken"] = call.child_token
                self._by_token[call.child_token] = child_id
        params: dict[str, Any] = {"name": own_name}
        if arguments is not None:
            params["arguments"] = arguments
        if forwarded:
            params["_meta"] = forwarded
        self._calls[child_id] = call
        self._by_upstream[upstream_id] = child_id
        stats = self.gateway._stats[child.name]
        stats.calls += 1
        stats.relayed += 1
        heapq.heappush(self._deadlines, (call.deadline, child_id))
        if self._deadlines[0][1] == child_id:
            self._wake.set()
        self._watch(connection)
        request = {"jsonrpc": "2.0", "id": child_id, "method": "tools/call", "params": params}
        try:
            await connection.process.send_line(_dumps(request))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._fail(child_id, errors.went_away(child, exposed))

    async def _cancel(self, params: Any) -> bool:
        if not isinstance(params, dict) or not _is_id(request_id := params.get("requestId")):
            return False
        if (child_id := self._by_upstream.get(request_id)) is None:
            return False
        call = self._finish(child_id)
        if call is not None:
            self.gateway._stats[call.child.name].cancelled += 1
            notice = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": child_id, **({"reason": params["reason"]} if "reason" in params else {})}}
            try:
                await call.connection.process.send_line(_dumps(notice))
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the child is gone: nothing left to cancel
        return True

    # -- downstream: lines from a child -----------------------------------------------------

    async def on_child_line(self, server: str, line: bytes) -> bool:
        """Pass on a child's answer or progress for a relayed call; True if consumed. A line
        about another server's call (a child guessing ids) is dropped: only the child a call
        went to answers it."""
        if _MARK not in line:
            return False
        try:
            message = json.loads(line)
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        if message.get("method") == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            child_id = self._by_token.get(token) if isinstance(token, str) else None
            call = self._calls.get(child_id) if child_id is not None else None
            if call is None or params is None or call.child.name != server:
                return child_id is not None  # progress of a call that ended, or not this child's: dropped
            await self._send({**message, "params": {**params, "progressToken": call.token}})
            return True
        child_id = message.get("id")
        if not isinstance(child_id, str) or not child_id.startswith(ID_PREFIX) or "method" in message:
            return False
        call = self._calls.get(child_id)
        if call is None or call.child.name != server:
            return True  # answered after a timeout or a cancellation, or not this child's call: dropped
        self._finish(child_id)
        elapsed = perf_counter() - call.started
        result = message.get("result")
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            failure = errors.child_error(
                call.child, call.exposed, f"answered with an error: {error.get('message', error)}", error.get("code")
            )
            return await self._answer_failure(call, failure, elapsed)
        problem = _unusable(result)
        if problem is not None:
            failure = errors.child_error(call.child, call.exposed, f"sent a malformed answer ({problem})")
            return await self._answer_failure(call, failure, elapsed)
        gateway = self.gateway
        gateway._stats[call.child.name].record(elapsed, error=bool(result.get("isError")))
        if result.get("content"):
            readdress_links(result["content"], call.child.config.resource_key)
        await self._send({"jsonrpc": "2.0", "id": call.upstream_id, "result": result})
        if gateway.on_read_only_result is not None and not result.get("isError"):
            if call.exposed in gateway.read_only_tools():  # the replay sample, as on the SDK path
                gateway.on_read_only_result(call.exposed, call.arguments, result)
        return True

    # -- endings: timeouts and deaths ---------------------------------------------------------

    async def run(self) -> None:
        """End relayed calls at their `call_timeout`; runs with the gateway."""
        while True:
            now = anyio.current_time()
            while self._deadlines and (self._deadlines[0][0] <= now or self._deadlines[0][1] not in self._calls):
                deadline, child_id = heapq.heappop(self._deadlines)
                call = self._calls.get(child_id)
                if call is not None and deadline <= now:
                    await self._time_out(call)
            wait = self._deadlines[0][0] - now if self._deadlines else math.inf
            self._wake = anyio.Event()
            with anyio.move_on_after(wait):
                await self._wake.wait()

    async def _time_out(self, call: RelayedCall) -> None:
        notice = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": call.child_id, "reason": "call_timeout"}}
        try:
            await call.connection.process.send_line(_dumps(notice))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        await self._fail(call.child_id, errors.timed_out(call.child, call.exposed))

    def _watch(self, connection: Connection) -> None:
        key = id(connection)
        if key in self._watched or self.gateway._tg is None:
            return
        self._watched.add(key)
        self.gateway._tg.start_soon(self._fail_on_exit, connection, key)

    async def _fail_on_exit(self, connection: Connection, key: int) -> None:
        try:
            async with anyio.create_task_group() as tg:
                for event in (connection.process.exited, connection.gone):
                    tg.start_soon(_then_cancel, event.wait, tg.cancel_scope)
        finally:
            self._watched.discard(key)
        for child_id in [c for c, call in self._calls.items() if call.connection is connection]:
            call = self._calls[child_id]
            await self._fail(child_id, errors.went_away(call.child, call.exposed))

    # -- bookkeeping ------------------------------------------------------------------------

    def _finish(self, child_id: str) -> RelayedCall | None:
        call = self._calls.pop(child_id, None)
        if call is not None:
            self._by_upstream.pop(call.upstream_id, None)
            if call.child_token is not None:
                self._by_token.pop(call.child_token, None)
        return call

    async def _fail(self, child_id: str, failure: Unanswered) -> None:
        call = self._finish(child_id)
        if call is not None:
            await self._answer_failure(call, failure, perf_counter() - call.started)

    async def _answer_failure(self, call: RelayedCall, failure: Unanswered, elapsed: float) -> bool:
        self.gateway._stats[call.child.name].record(elapsed, error=True)
        await self._send({"jsonrpc": "2.0", "id": call.upstream_id, "result": errors.tool_error(failure, "")})
        return True

    async def _send(self, message: dict[str, Any]) -> None:
        if self.write_upstream is None:
            return
        try:
            await self.write_upstream(_dumps(message))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.debug("the client went away before an answer could be written")


def _dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _is_id(value: Any) -> bool:
    """A JSON-RPC request id (a string or an integer), hence usable as a key."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _live(connection: Connection) -> bool:
    return not connection.gone.is_set() and not connection.process.exited.is_set()


async def _then_cancel(wait: Callable[[], Awaitable[Any]], scope: anyio.CancelScope) -> None:
    await wait()
    scope.cancel()


def _unusable(result: Any) -> str | None:
    """Why `result` is not a CallToolResult a client can take, or None (the checks the SDK's
    validation makes that matter to a client, without building the model)."""
    if not isinstance(result, dict):
        return "the result is not an object"
    content = result.get("content", [])
    if not isinstance(content, list) or not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content):
        return "content: not a list of typed blocks"
    if "structuredContent" in result and not isinstance(result["structuredContent"], (dict, type(None))):
        return "structuredContent: not an object"
    if "isError" in result and not isinstance(result["isError"], (bool, type(None))):
        return "isError: not a boolean"
    return None
