"""The supervisor's own clients, as far as the gateway talks to them unasked.

`list_changed` goes to every client on the initialize handshake (legacy era) over its
connection's standalone channel, and to modern-era (2026-07-28) clients through
`subscriptions/listen` streams fed by `bus`. A child's log messages and its elicitation and
sampling requests go to the client whose call is in flight to that child (`Via`), or, when
none is, to the most recent legacy client.

Modern-era clients cannot receive server-to-client requests at all: a child's elicitation or
sampling request is then answered with an error that says so (the child sees it as the user's
client declining), rather than left hanging.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

import anyio
import mcp_types as types
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError

from metasup_mcp.children.child import ManagedChild, SessionHooks
from metasup_mcp.gateway.catalog import Kind

logger = logging.getLogger(__name__)

_EVENTS: dict[str, ServerEvent] = {
    "tools": ToolsListChanged(), "prompts": PromptsListChanged(), "resources": ResourcesListChanged()
}
_ResultT = TypeVar("_ResultT", bound=BaseModel)
_LEVELS: tuple[str, ...] = get_args(types.LoggingLevel)  # least severe first
_ELICITATION = types.ClientCapabilities(elicitation=types.ElicitationCapability())
_SAMPLING = types.ClientCapabilities(sampling=types.SamplingCapability())


@dataclass(frozen=True, slots=True)
class Via:
    """The upstream request a child's call belongs to: where its side traffic goes."""

    session: ServerSession
    request_id: types.RequestId | None


class Upstream:
    def __init__(self) -> None:
        # Connections end by themselves (client gone); weak references let them go.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._latest: weakref.ref[Any] | None = None
        self.bus = InMemorySubscriptionBus()
        self._min_level = 0  # index into _LEVELS; set by the client's logging/setLevel

    def set_level(self, level: types.LoggingLevel) -> None:
        """The client's `logging/setLevel`: child log messages below `level` are dropped."""
        self._min_level = _LEVELS.index(level)

    @property
    def legacy_client_connected(self) -> bool:
        """A client on the initialize handshake (legacy era) is connected."""
        return self._latest is not None and self._latest() is not None

    def attach(self, session: ServerSession) -> None:
        """Remember the connection `session` belongs to (called on handshake and on listings)."""
        connection = _connection_of(session)
        if connection is not None and connection.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._connections.add(connection)
            self._latest = weakref.ref(connection)

    async def announce(self, kinds: set[Kind]) -> None:
        """Tell every client that these lists changed."""
        for connection in list(self._connections):
            for kind in sorted(kinds):
                await connection.notify(f"notifications/{kind}/list_changed", None)  # never raises
        for kind in sorted(kinds):
            await self.bus.publish(_EVENTS[kind])

    async def log(self, server: str, params: types.LoggingMessageNotificationParams, via: Via | None) -> None:
        """Pass a child's log message on, its logger name prefixed with the server's name."""
        name = f"{server}/{params.logger}" if params.logger else server
        logger.debug("log from %s (%s): %s", server, params.level, params.data)
        if params.level not in _LEVELS or _LEVELS.index(params.level) < self._min_level:
            return
        if via is not None:
            try:
                await _undeprecated(via.session.send_log_message, params.level, params.data, name, via.request_id)
            except Exception as exc:  # the caller may be gone; a log line is not worth failing for
                logger.debug("dropped a log message of %s: %s", server, exc)
            return
        for connection in list(self._connections):
            await _undeprecated(connection.log, params.level, params.data, name)  # never raises

    async def ask(
        self, server: str, what: str, request: Any, result_type: type[_ResultT], capability: types.ClientCapabilities,
        via: Via | None,
    ) -> _ResultT | types.ErrorData:
        """Relay a child's elicitation or sampling request; every failure becomes an answer."""
        target: Any = via.session if via is not None else (self._latest() if self._latest else None)
        if target is None:
            return _refusal(f"server {server!r} asked for {what}, but no client is connected to relay it to")
        version = target.protocol_version
        if version in MODERN_PROTOCOL_VERSIONS:
            return _refusal(
                f"server {server!r} asked for {what}, but the client speaks MCP {version}, where servers cannot send "
                "requests to clients; metasup relays it only to clients on the initialize handshake (2025-11-25)"
            )
        supported = (
            target.check_client_capability(capability) if via is not None else target.check_capability(capability)
        )
        if not supported:
            return _refusal(f"server {server!r} asked for {what}, which the connected client does not support")
        try:
            if via is not None:
                metadata = ServerMessageMetadata(related_request_id=via.request_id)
                return await via.session.send_request(request, result_type, metadata=metadata)
            return await target.send_request(request, result_type=result_type)
        except MCPError as exc:
            return exc.error
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return _refusal(f"the client went away before answering {what} for server {server!r}")
        except ValidationError as exc:
            problem = f"{exc.error_count()} errors"
            return _refusal(f"the client's answer to {what} for server {server!r} is malformed: {problem}")


def session_hooks(
    server: str, upstream: Upstream, via: Callable[[], Via | None], mark: Callable[[str], None]
) -> SessionHooks:
    """The callbacks of one child's MCP session: its sampling and elicitation requests and its
    log messages go upstream (through the call in flight to it, `via()`), and its resource and
    prompt list changes ask for a re-listing (`mark(kind)`)."""

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
        tools_mode = params.tools is not None or params.tool_choice is not None
        result_type = types.CreateMessageResultWithTools if tools_mode else types.CreateMessageResult
        request = types.CreateMessageRequest(params=params)
        return await upstream.ask(server, "sampling", request, result_type, _SAMPLING, via())

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> Any:
        request = types.ElicitRequest(params=params)
        return await upstream.ask(server, "elicitation", request, types.ElicitResult, _ELICITATION, via())

    async def log(params: types.LoggingMessageNotificationParams) -> None:
        await upstream.log(server, params, via())

    async def notification(_: ManagedChild, message: Any) -> None:
        if isinstance(message, types.ResourceListChangedNotification):
            mark("resources")
        elif isinstance(message, types.PromptListChangedNotification):
            mark("prompts")

    return SessionHooks(sampling=sampling, elicitation=elicitation, logging=log, notification=notification)


def _refusal(message: str) -> types.ErrorData:
    logger.info("%s", message)
    return types.ErrorData(code=types.INVALID_REQUEST, message=message)


def _undeprecated(method: Any, *args: Any) -> Any:
    """Call an SDK coroutine function that warns because logging is deprecated in 2026-07-28
    (not in the legacy era it serves here); the warning fires when the coroutine is made."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        return method(*args)


def _connection_of(session: ServerSession) -> Any:
    # The SDK (2.3) gives request handlers no public handle on their connection: `ctx.session`
    # is rebuilt per request and only wraps it. The connection is what outlives the request.
    return getattr(session, "_connection", None)
