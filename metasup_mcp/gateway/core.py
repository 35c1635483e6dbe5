"""`Gateway`: the children's tools, resources and prompts, served upstream under their namespaces.

Listing: every child's offer is kept in an `Offer` and merged into one `Index` (see `catalog`).
A child's offer is re-listed after each start and whenever it says its lists changed; one that
is stopped, exited or fatal offers nothing. `list_changed` goes upstream only when the merged
lists differ. While a child restarts, its last offer stays listed.

Routing: a call looks its exposed name up in the index (one dict lookup), takes the child's
live connection (or waits up to `call_wait` for one) and forwards the request under the
child's own name. The answer is passed back as the dict the SDK validated, not rebuilt into a
model and dumped again. Every call runs in a cancel scope that ends it at `call_timeout` or
the moment the child's process dies (a watcher per incarnation cancels the calls in flight
when `gone` is set). A call is never retried behind the caller's back.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable
from time import perf_counter
from types import SimpleNamespace
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.methods import serialize_server_result
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter, ValidationError

from metasup_mcp.children.child import ChildEvent, Connection, ManagedChild
from metasup_mcp.children.manager import ServerManager
from metasup_mcp.children.process import UNUSABLE_ANSWER
from metasup_mcp.children.state import ChildState
from metasup_mcp.gateway import errors
from metasup_mcp.gateway.catalog import ClaimBook, Index, Kind, Offer, build_index
from metasup_mcp.gateway.errors import Unanswered
from metasup_mcp.gateway.fastpath import FastPath
from metasup_mcp.gateway.listing import list_offer
from metasup_mcp.gateway.naming import MAX_NAME_LENGTH, address_uri, readdress_links, resolve_uri, resource_key
from metasup_mcp.gateway.stats import CallStats, Histogram
from metasup_mcp.gateway.upstream import Upstream, Via, session_hooks

logger = logging.getLogger(__name__)

# The request context of the supervisor's own calls (verify and replay): no upstream session.
_INTERNAL: Any = SimpleNamespace(session=None, request_id=None, protocol_version="2025-11-25", meta=None)
# The result as the SDK validated it, unconverted (no model built, none dumped again).
_RAW: TypeAdapter[Any] = TypeAdapter(Any)


class Gateway:
    def __init__(self, manager: ServerManager, max_tool_name: int = MAX_NAME_LENGTH) -> None:
        self._max_tool_name = max_tool_name
        self._children: dict[str, ManagedChild] = {child.name: child for child in manager}
        self._servers = [child.config for child in manager]
        # config.py refuses two servers with one key, and namespaces too long for any tool.
        self._by_key = {server.resource_key: server.name for server in self._servers}
        self.upstream = Upstream()
        self._offers = {name: Offer() for name in self._children}
        self._stats = {name: CallStats() for name in self._children}
        self._pending: dict[str, set[str]] = {name: set() for name in self._children}
        self._wake = {name: anyio.Event() for name in self._children}
        self._busy: set[str] = set()  # children being re-listed right now
        self._listed_once: set[str] = set()  # children listed live at least once (see first_listing)
        self._relisted = anyio.Event()  # set, and replaced, after every re-listing
        self._inflight: dict[str, dict[anyio.CancelScope, tuple[Via | None, Connection]]] = {n: {} for n in self._children}
        self._watched: set[tuple[str, int]] = set()  # (server, generation) with a death watcher
        self._claims = ClaimBook()
        self._reserved_tools: frozenset[str] = frozenset()
        self._reserved_prompts: frozenset[str] = frozenset()
        self._index = Index()
        self._index_version = 0  # counts rebuilds of the index
        self._tool_list_wire: tuple[tuple[int, str], dict[str, Any]] | None = None  # see tool_list_wire
        self._reported: dict[str, str | None] = {name: None for name in self._children}
        self._tg: TaskGroup | None = None
        # Told of each successful call to a readOnlyHint tool (the replay sample; None: off).
        self.on_read_only_result: Callable[[str, dict[str, Any] | None, dict[str, Any]], None] | None = None
        self._read_only: tuple[Index | None, frozenset[str]] = (None, frozenset())
        self._scopes: dict[str, anyio.CancelScope] = {}  # per child: its refresh and watch tasks
        self.fastpath = FastPath(self)  # the raw relay of tools/call on the stdio wire
        for child in manager:
            self._hook(child)

    # -- lifecycle and events (from the Supervisor) ----------------------------------------

    async def run(self) -> None:
        """Keep every child's offer current; runs until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                tg.start_soon(self.fastpath.run, name="gateway raw relay timeouts")
                for child in self._children.values():
                    self._watch(child)
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def _watch(self, child: ManagedChild) -> None:
        assert self._tg is not None
        scope = self._scopes[child.name] = anyio.CancelScope()

        async def keep_current() -> None:
            with scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_current, child, name=f"gateway refresh {child.name}")
                    tg.start_soon(self._watch_rest, child, name=f"gateway watch {child.name}")

        self._tg.start_soon(keep_current)

    def _hook(self, child: ManagedChild) -> None:
        """Route what `child` asks of the upstream client, and its raw answers, through us."""
        via, mark = functools.partial(self._via, child), functools.partial(self._mark, child.name)
        child.hooks = session_hooks(child.name, self.upstream, via, mark)
        child.hooks.raw_line = functools.partial(self.fastpath.on_child_line, child.name)

    def attach(self, child: ManagedChild) -> None:
        """Serve `child` from now on (a reload's new or restored server): it is listed once it starts."""
        name = child.name
        self._children[name] = child
        self._servers = [*(s for s in self._servers if s.name != name), child.config]
        self._by_key = {server.resource_key: server.name for server in self._servers}
        self._offers[name], self._stats[name], self._pending[name] = Offer(), CallStats(), set()
        self._wake[name], self._inflight[name], self._reported[name] = anyio.Event(), {}, None
        self._hook(child)
        if self._tg is not None:
            self._watch(child)

    def detach(self, name: str) -> None:
        """Stop serving `name` (stopped first by its owner): its offer leaves the lists, announced upstream."""
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        self._children.pop(name, None)
        self._servers = [s for s in self._servers if s.name != name]
        self._by_key = {server.resource_key: server.name for server in self._servers}
        for table in (self._offers, self._stats, self._pending, self._wake, self._inflight, self._reported):
            table.pop(name, None)  # type: ignore[attr-defined]
        self._busy.discard(name)
        self._listed_once.discard(name)
        changed = self._reindex()
        if changed and self._tg is not None:
            self._tg.start_soon(self.upstream.announce, changed)

    def on_child_event(self, event: ChildEvent) -> None:
        if event.kind == "started":
            self._mark(event.server, "all")
        elif event.kind == "tools_changed":
            self._mark(event.server, "tools")
        elif event.kind == "exited":
            self._mark(event.server, "state")

    def reserve(self, tools: Iterable[str] = (), prompts: Iterable[str] = ()) -> None:
        """Names the supervisor serves itself: a child offering one of them is refused it."""
        self._reserved_tools, self._reserved_prompts = frozenset(tools), frozenset(prompts)
        changed = self._reindex()
        if changed and self._tg is not None:
            self._tg.start_soon(self.upstream.announce, changed)

    async def first_listing(self) -> None:
        """Wait until every child still on its first start has been listed (or failed), each for at
        most its `call_wait`. Clients that list once, right after connecting, then see the
        children's tools; later listings never wait (a restarting child stays listed)."""
        deadline = None
        while True:
            waiting = [c for c in self._children.values() if c.name not in self._listed_once and _first_start(c)]
            if not waiting:
                return
            if deadline is None:
                deadline = anyio.current_time() + max(c.config.call_wait for c in waiting)
            relisted = self._relisted
            with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                await relisted.wait()
            if scope.cancelled_caught:
                return

    @property
    def settled(self) -> bool:
        """No re-listing is pending or running: the lists served are as current as they get."""
        return not self._busy and not any(self._pending.values())

    # -- what the upstream client lists (built once per change, served as they are) --------

    def tools(self) -> list[types.Tool]:
        return self._index.tool_list

    def tool_list_wire(self, own: Callable[[], list[types.Tool]], version: str) -> dict[str, Any]:
        """`tools/list`'s result in wire form for `version`, the supervisor's `own` tools first:
        built once per change of the lists and served as it is. The SDK's per-request check
        and serialisation of a result cost 26 ms for 1,000 tools; an unchanged list needs it
        once (see `mcp_server.SupervisorSurface`, which serves it to legacy-era clients)."""
        key = (self._index_version, version)
        cached = self._tool_list_wire
        if cached is None or cached[0] != key:
            dumped = types.ListToolsResult(tools=[*own(), *self._index.tool_list]).model_dump(
                by_alias=True, mode="json", exclude_none=True
            )
            cached = self._tool_list_wire = (key, serialize_server_result("tools/list", version, dumped))
        return cached[1]

    def prompts(self) -> list[types.Prompt]:
        return self._index.prompt_list

    def resources(self) -> list[types.Resource]:
        return self._index.resource_list

    def resource_templates(self) -> list[types.ResourceTemplate]:
        return self._index.template_list

    # -- routing ---------------------------------------------------------------------------

    async def call_tool(
        self, ctx: ServerRequestContext[Any], name: str, arguments: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Forward a call of an exposed tool; None if no child offers `name`.

        Failures come back as tool errors (isError) whose structuredContent says which server,
        its state, and whether and when to retry (see `errors`).
        """
        route = self._index.tools.get(name)
        if route is None:
            await self.first_listing()  # a call right after start-up may precede the listing
            if (route := self._index.tools.get(name)) is None:
                return None
        child, stats = self._children[route.server], self._stats[route.server]
        stats.calls += 1
        started = perf_counter()
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name=route.name, arguments=arguments, meta=_forwarded_meta(ctx.meta))
        )
        progress = ctx.session.report_progress if _wants_progress(ctx.meta) else None
        try:
            raw = await self._forward(ctx, child, request, name, progress)
        except Unanswered as failure:
            stats.record(perf_counter() - started, error=True)
            return errors.tool_error(failure, ctx.protocol_version)
        except anyio.get_cancelled_exc_class():
            stats.cancelled += 1
            raise
        stats.record(perf_counter() - started, error=bool(raw.get("isError")))
        if raw.get("content"):
            readdress_links(raw["content"], resource_key(child.config))
        if self.on_read_only_result is not None and not raw.get("isError") and name in self.read_only_tools():
            self.on_read_only_result(name, arguments, raw)
        return raw

    # -- behaviour: the safety loop's own calls and the replay sample (evolution/behaviour.py) --

    def read_only_tools(self, servers: Iterable[str] | None = None) -> frozenset[str]:
        """Exposed names of tools annotated `readOnlyHint: true` (of `servers`, if given).
        Computed once per index: it is asked on every forwarded call."""
        index = self._index
        if self._read_only[0] is not index:
            marked = frozenset(
                t.name for t in index.tool_list if t.annotations is not None and t.annotations.read_only_hint
            )
            self._read_only = (index, marked)
        if servers is None:
            return self._read_only[1]
        wanted = set(servers)
        return frozenset(n for n in self._read_only[1] if index.tools[n].server in wanted)

    async def call_internal(self, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """Call an exposed tool for the supervisor itself (no upstream request): the raw result, or a
        tool error saying why it got none. Not counted in the call statistics, never sampled."""
        route = self._index.tools.get(name)
        if route is None:
            return {"content": [{"type": "text", "text": f"no running server offers the tool {name!r}"}],
                    "isError": True}
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=route.name, arguments=arguments))
        try:
            return await self._forward(_INTERNAL, self._children[route.server], request, name, None)
        except Unanswered as failure:
            return {"content": [{"type": "text", "text": failure.message}], "isError": True}

    async def read_resource(self, ctx: ServerRequestContext[Any], uri: str) -> dict[str, Any] | None:
        """Read a re-addressed resource from its child; None if `uri` is not one of ours."""
        resolved = resolve_uri(uri)
        if resolved is None:
            return None
        key, original = resolved
        server = self._by_key.get(key)
        if server is None:
            raise MCPError(types.INVALID_PARAMS, f"no server addresses its resources as {key!r}: {uri}")
        request = types.ReadResourceRequest(
            params=types.ReadResourceRequestParams(uri=original, meta=_forwarded_meta(ctx.meta))
        )
        raw = await self._forward_or_raise(ctx, self._children[server], request, uri)
        for contents in raw.get("contents") or ():
            if isinstance(contents.get("uri"), str):
                contents["uri"] = address_uri(key, contents["uri"])
        return raw

    async def get_prompt(
        self, ctx: ServerRequestContext[Any], name: str, arguments: dict[str, str] | None
    ) -> dict[str, Any] | None:
        """Get an exposed prompt from its child; None if no child offers `name`."""
        route = self._index.prompts.get(name)
        if route is None:
            await self.first_listing()
            if (route := self._index.prompts.get(name)) is None:
                return None
        request = types.GetPromptRequest(
            params=types.GetPromptRequestParams(name=route.name, arguments=arguments, meta=_forwarded_meta(ctx.meta))
        )
        return await self._forward_or_raise(ctx, self._children[route.server], request, name)

    async def complete(
        self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> dict[str, Any] | None:
        """Forward `completion/complete` for a child's prompt or resource template under the
        child's own name or URI; None if the reference is not a child's. A child that does not
        declare `completions` gets no request: it has no suggestions."""
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            route = self._index.prompts.get(ref.name)
            if route is None:
                return None
            server, own_ref, what = route.server, ref.model_copy(update={"name": route.name}), ref.name
        else:
            what = ref.uri
            resolved = resolve_uri(ref.uri)
            if resolved is None or (server := self._by_key.get(resolved[0])) is None:
                return None
            own_ref = ref.model_copy(update={"uri": resolved[1]})
        child = self._children[server]
        if child.server_capabilities is not None and child.server_capabilities.completions is None:
            return {"completion": {"values": []}}
        request = types.CompleteRequest(
            params=params.model_copy(update={"ref": own_ref, "meta": _forwarded_meta(ctx.meta)})
        )
        return await self._forward_or_raise(ctx, child, request, f"completion of {what}")

    async def _forward_or_raise(
        self, ctx: ServerRequestContext[Any], child: ManagedChild, request: Any, what: str
    ) -> dict[str, Any]:
        try:
            return await self._forward(ctx, child, request, what, None)
        except Unanswered as failure:
            raise MCPError(types.INTERNAL_ERROR, failure.message, failure.details) from None

    async def _forward(
        self, ctx: ServerRequestContext[Any], child: ManagedChild, request: Any, what: str, progress: Any
    ) -> dict[str, Any]:
        connection = child.connection
        if connection is None or not _live(connection):
            connection = await self._await_connection(child, what)
        scope = anyio.CancelScope(deadline=anyio.current_time() + child.config.call_timeout)
        calls = self._inflight[child.name]
        # The supervisor's own calls have no upstream request: the child's side traffic goes nowhere special.
        calls[scope] = (Via(ctx.session, ctx.request_id) if ctx.session is not None else None, connection)
        if self._tg is not None and (child.name, connection.generation) not in self._watched:
            self._watched.add((child.name, connection.generation))
            self._tg.start_soon(self._cancel_on_death, child.name, connection)
        try:
            with scope:
                raw = await connection.session.send_request(request, _RAW, progress_callback=progress)
                if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
                    raw.setdefault("resultType", "complete")  # required from 2026-07-28; children may be older
                return raw
        except MCPError as exc:
            if exc.data == UNUSABLE_ANSWER:
                raise errors.child_error(child, what, f"sent an answer the supervisor cannot use: {exc.message}") from None
            if exc.code != types.CONNECTION_CLOSED:
                raise errors.child_error(child, what, f"answered with an error: {exc.message}", exc.code) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "result"
            raise errors.child_error(
                child, what, f"sent a malformed answer ({exc.error_count()} problems; {where}: {first['msg']})"
            ) from None
        finally:
            del calls[scope]
        if scope.cancelled_caught and _live(connection):
            raise errors.timed_out(child, what)
        raise errors.went_away(child, what)

    async def _await_connection(self, child: ManagedChild, what: str) -> Connection:
        """The child's live connection, waiting up to `call_wait` if it is on its way back."""
        if not child.at_rest and not child.fails_fast:
            await child.wait_for(
                lambda c: (c.connection is not None and _live(c.connection)) or c.at_rest, child.config.call_wait
            )
        connection = child.connection
        if connection is not None and _live(connection):
            return connection
        raise errors.unavailable(child, what)

    async def _cancel_on_death(self, server: str, connection: Connection) -> None:
        await connection.gone.wait()
        self._watched.discard((server, connection.generation))
        for scope, (_, owner) in list(self._inflight[server].items()):
            if owner is connection:
                scope.cancel()

    # -- keeping the index current ---------------------------------------------------------

    def _mark(self, server: str, what: str) -> None:
        if server in self._pending:
            self._pending[server].add(what)
            self._wake[server].set()

    async def _keep_current(self, child: ManagedChild) -> None:
        self._mark(child.name, "all")
        while True:
            await self._wake[child.name].wait()
            self._wake[child.name] = anyio.Event()
            what, self._pending[child.name] = self._pending[child.name], set()
            self._busy.add(child.name)
            try:
                offer = await self._current_offer(child, what)
                if child.connection is not None and _live(child.connection) and "all" in what:
                    self._listed_once.add(child.name)
                if offer != self._offers[child.name]:
                    self._offers[child.name] = offer
                    changed = self._reindex()
                    if changed:
                        await self.upstream.announce(changed)
                else:  # a restart cleared the child's last_error: show its naming problems again
                    self._report(child, self._index.problems.get(child.name, []))
            except Exception as exc:
                logger.warning("gateway: re-listing %s failed (%s); keeping its previous offer", child.name, exc)
            finally:
                self._busy.discard(child.name)
                self._relisted.set()
                self._relisted = anyio.Event()

    async def _watch_rest(self, child: ManagedChild) -> None:
        """Catch a child coming to rest without an event (a stop during backoff, say)."""
        while True:
            resting = child.at_rest
            await child.wait_for(lambda c: c.at_rest != resting, math.inf)
            self._mark(child.name, "state")

    async def _current_offer(self, child: ManagedChild, what: set[str]) -> Offer:
        previous = self._offers[child.name]
        if child.at_rest:
            return Offer()
        connection = child.connection
        if connection is None or not _live(connection):
            return previous  # restarting: its tools stay listed
        capabilities = child.server_capabilities or types.ServerCapabilities()
        return await list_offer(connection.session, capabilities, child.tools, previous, what, child.name)

    def _reindex(self) -> set[Kind]:
        before = self._index
        self._index_version += 1
        self._index = build_index(
            self._servers, self._offers, self._reserved_tools, self._reserved_prompts, self._claims,
            self._max_tool_name,
        )
        for name, problems in self._index.problems.items():
            self._report(self._children[name], problems)
        return self._index.changed(before)

    def _report(self, child: ManagedChild, problems: list[str]) -> None:
        """Show naming problems in the server's status `last_error` and, once each, in the log."""
        text = "; ".join(problems) or None
        previous = self._reported[child.name]
        if text != previous:
            for problem in problems:
                logger.warning("gateway: %s", problem)
        if text is not None and child.last_error is None:
            child.last_error = text
        elif text is None and previous is not None and child.last_error == previous:
            child.last_error = None
        self._reported[child.name] = text

    # -- status ----------------------------------------------------------------------------

    def server_status(self, name: str) -> dict[str, Any]:
        """Exposed tools, calls, errors and latency (count, mean, p50, p99 over recent calls)."""
        return {
            "exposed_tools": self._index.exposed_tools.get(name, 0),
            **self._stats[name].summary(),
            "problems": list(self._index.problems.get(name, [])),
        }

    def latency_histogram(self, name: str) -> Histogram:
        """Cumulative latency buckets of `name`'s tool calls (seconds; see `stats.LATENCY_BUCKETS`)."""
        return self._stats[name].histogram()

    def recent_latencies(self, name: str) -> list[float]:
        """The latencies (seconds) of `name`'s last tool calls, oldest first."""
        return self._stats[name].recent_latencies()

    # -- what children ask of the upstream client (see upstream.session_hooks) ---------------

    def _via(self, child: ManagedChild) -> Via | None:
        """The most recent upstream request in flight to `child`, if any."""
        calls = self._inflight[child.name]
        return next(reversed(calls.values()))[0] if calls else None


def _live(connection: Connection) -> bool:
    """Its process is still there (`exited` is seen within 50 ms; `gone` only after teardown)."""
    return not connection.gone.is_set() and not connection.process.exited.is_set()


def _first_start(child: ManagedChild) -> bool:
    """On its first start (no failure yet): worth waiting for before a first listing."""
    return child.state in (ChildState.STARTING, ChildState.RUNNING) and child.machine.restarts == 0


def _wants_progress(meta: Any) -> bool:
    """The caller sent a progress token (parsed `_meta` names it `progress_token`)."""
    return bool(meta) and (meta.get("progress_token") is not None or meta.get("progressToken") is not None)


# Keys of `_meta` the supervisor sets itself on the hop to the child: the progress token (its
# own, so that progress is routed back here) and the reserved 2026-07-28 keys (per connection).
_OWN_META = ("progress_token", "progressToken")
_RESERVED_META_PREFIX = "io.modelcontextprotocol/"


def _forwarded_meta(meta: Any) -> dict[str, Any] | None:
    """The caller's request `_meta` as the child should see it (`traceparent` and the like pass)."""
    if not meta:
        return None
    kept = {k: v for k, v in meta.items() if k not in _OWN_META and not k.startswith(_RESERVED_META_PREFIX)}
    return kept or None
