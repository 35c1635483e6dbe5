"""One supervised child: its supervision loop, its MCP client session and its health watch.

`supervise()` runs for the life of the supervisor. Each turn of its loop is one incarnation:
spawn, handshake and tool listing, watch (exit, health, probe) until the process dies or a
stop is asked for; then the state machine decides between stopped, backoff, exited and fatal.
"""

from __future__ import annotations

import logging
import math
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.client.session import ElicitationFnT, LoggingFnT, SamplingFnT
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from metasup_mcp.aio import blocking
from metasup_mcp.children.health import HealthFigures, HealthLimits, HealthReason, HealthTracker, TreeSampler
from metasup_mcp.children.process import ChildProcess, SpawnSpec, StderrRing, child_environment, spawn_child
from metasup_mcp.children.sandbox import SandboxPlan
from metasup_mcp.children.state import ChildState, ChildStateMachine, ExitDecision, RestartPolicy
from metasup_mcp.config import HealthChecks, RestartSettings, ServerConfig
from metasup_mcp.redact import redact

logger = logging.getLogger(__name__)

# How long a failed handshake waits to see whether the process died (the likelier story).
HANDSHAKE_EXIT_GRACE = 0.5
# What `last_error` quotes of a failed incarnation's own stderr ("MY_API_KEY is required").
LAST_ERROR_STDERR_LINES = 3
LAST_ERROR_LINE_CHARS = 200

EventKind = Literal["started", "stable", "exited", "health", "tools_changed", "notification"]


@dataclass(frozen=True)
class ChildEvent:
    """What the supervisor hears about a child; `data` carries the details for status and audit."""

    server: str
    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)
    generation: int = 0  # which incarnation of the server it is about


EventSink = Callable[[ChildEvent], None]


@dataclass(frozen=True)
class Supervision:
    """The settings a child shares with every other child unless its own config overrides them."""

    workspace: Path
    instance_id: str
    min_runtime: float
    health: HealthChecks
    restart: RestartSettings
    sandbox: SandboxPlan | None = None  # None: started bare (unit tests of supervision only)


@dataclass
class SessionHooks:
    """Callbacks a child's MCP session forwards to (set by the gateway before children start).

    `None` leaves the capability unadvertised to the child (no sampling, no elicitation).
    """

    sampling: SamplingFnT | None = None
    elicitation: ElicitationFnT | None = None
    logging: LoggingFnT | None = None
    # Every other server notification of a live session (progress, list_changed, ...).
    notification: Callable[[ManagedChild, Any], Awaitable[None]] | None = None
    # Sees each line the child writes before its session does; True takes the line away.
    raw_line: Callable[[bytes], Awaitable[bool]] | None = None


@dataclass
class Connection:
    """A live MCP session to one incarnation; `gone` is set the moment that process dies."""

    session: ClientSession
    process: ChildProcess
    generation: int
    gone: anyio.Event


class ManagedChild:
    def __init__(self, config: ServerConfig, supervision: Supervision, emit: EventSink) -> None:
        self.config = config
        self.name = config.name
        self._supervision = supervision
        self._emit = emit
        restart = config.restart or supervision.restart
        self.machine = ChildStateMachine(
            RestartPolicy(
                restart_on_failure=config.restart_on_failure,
                min_runtime=config.min_runtime if config.min_runtime is not None else supervision.min_runtime,
                backoff_initial=restart.backoff_initial,
                backoff_max=max(restart.backoff_max, restart.backoff_initial),
                max_restarts=restart.max_restarts,
                restart_window=restart.restart_window,
                stable_after=restart.stable_after,
            ),
            clock=anyio.current_time,
            rng=random.Random(),
            name=config.name,
        )
        self.stderr = StderrRing()
        self.tools: list[types.Tool] = []
        checks = supervision.health
        self._health = HealthTracker(HealthLimits(checks.max_memory_mb, checks.max_cpu_percent, checks.failure_threshold))
        self.last_error: str | None = None
        self.connection: Connection | None = None
        self.pid: int | None = None  # of the current or last incarnation
        self.process: ChildProcess | None = None  # the current or last incarnation (garbage counts)
        self.server_capabilities: types.ServerCapabilities | None = None
        self.generation = 0
        self._want_running = False
        self._start_now = False  # an explicit start or restart skips what is left of a backoff
        self._wake = anyio.Event()  # a request arrived; replaced once consumed
        self._changed = anyio.Event()  # replaced on every state change; see wait_for()
        self._stop_incarnation: anyio.Event | None = None
        self.hooks = SessionHooks()
        # Runs before every spawn (the on-disk guard puts uncommitted edits on trial there).
        self.before_start: Callable[[ManagedChild], Awaitable[None]] | None = None
        self.supervising = False
        self._tools_stale = self._relisting_tools = False  # see _relist_tools
        self.ever_up = False  # completed a handshake once: later starts get handshake_timeout only
        self._stderr_this_run = 0  # lines the current incarnation wrote to stderr
        self._startup_scope: anyio.CancelScope | None = None  # a first start's handshake deadline
        self._startup_limit = 0.0

    @property
    def state(self) -> ChildState:
        return self.machine.state

    @property
    def health(self) -> HealthFigures:
        """The last resource and probe figures (of the current or last incarnation)."""
        return self._health.figures

    async def wait_for(self, predicate: Callable[[ManagedChild], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds after some state change, or the timeout passes."""
        with anyio.move_on_after(timeout):
            while not predicate(self):
                await self._changed.wait()
            return True
        return predicate(self)

    # -- requests (from the manager) -----------------------------------------------------

    def request_start(self) -> None:
        self._want_running = True
        # Skip what is left of a backoff; a live incarnation goes on, and its next crash keeps its backoff.
        self._start_now = self.state not in (ChildState.STARTING, ChildState.RUNNING)
        self._wake.set()

    def request_stop(self) -> None:
        self._want_running = self._start_now = False
        self._interrupt()

    def request_restart(self) -> None:
        """Stop the current incarnation (if any) and start a new one at once, without backoff."""
        self._want_running = self._start_now = True
        self._interrupt()

    def _interrupt(self) -> None:
        self._wake.set()
        if self._stop_incarnation is not None:
            self._stop_incarnation.set()

    # -- the supervision loop ------------------------------------------------------------

    async def supervise(self) -> None:
        """Run for the life of the supervisor, one incarnation per turn."""
        self.supervising = True
        try:
            while True:
                await self._until_start_is_due()
                decision = await self._run_incarnation()
                if decision.state in (ChildState.FATAL, ChildState.EXITED):
                    self._want_running = False
        finally:
            # Cancelled: the incarnation's shielded cleanup has already stopped the process.
            self.supervising = False
            self._notify()

    @property
    def handshake_allowance(self) -> float:
        """The longest a start may take to complete its handshake (seconds): `startup_timeout`
        until the server has come up once (npx/uvx may download first), then `handshake_timeout`."""
        if self.ever_up:
            return self.config.handshake_timeout
        return max(self.config.startup_timeout, self.config.handshake_timeout)

    @property
    def wanted(self) -> bool:
        """Whether the supervisor means this child to be running (start asked, not stopped since)."""
        return self._want_running

    def settled_since(self, generation: int) -> bool:
        """An incarnation newer than `generation` has got past its handshake, or failed it."""
        return self.generation > generation and self.state not in (ChildState.STARTING, ChildState.STOPPING)

    @property
    def fails_fast(self) -> bool:
        """Calls should fail at once instead of waiting for it to come back (a remote server's open circuit)."""
        return False

    def status_extras(self) -> dict[str, Any]:
        """Figures beyond the common ones, for `server_status` (a remote server's url and circuit)."""
        return {}

    @property
    def at_rest(self) -> bool:
        """No process of this child is running, or will run without a new request."""
        return not self.supervising or self.state in (ChildState.STOPPED, ChildState.EXITED, ChildState.FATAL)

    async def _until_start_is_due(self) -> None:
        while True:
            if not self._want_running:
                if self.state is ChildState.BACKOFF:
                    self.machine.begin_stop()
                    self._notify()
                await self._next_request()
                continue
            if self._start_now:
                self._start_now = False
                return
            if self.state is ChildState.BACKOFF:
                assert self.machine.next_start_at is not None
                remaining = self.machine.next_start_at - anyio.current_time()
                if remaining > 0 and await self._next_request(timeout=remaining):
                    continue  # a request arrived mid-backoff: look again
            if self.state in (ChildState.FATAL, ChildState.EXITED):
                self._want_running = False
                continue
            return

    async def _next_request(self, timeout: float = math.inf) -> bool:
        """Wait for a request; True if one came before the timeout."""
        with anyio.move_on_after(timeout):
            await self._wake.wait()
            self._wake = anyio.Event()
            return True
        return False

    async def _run_incarnation(self) -> ExitDecision:
        self.machine.begin_start()
        self.generation += 1
        self.last_error = None
        self._stderr_this_run = 0
        self._notify()
        # Before any await: a stop asked while the hook runs must reach this incarnation.
        stop = self._stop_incarnation = anyio.Event()
        held: str | None = None
        if self.before_start is not None:
            try:
                await self.before_start(self)
            except Exception as exc:  # unscreened edits must not run: fail closed, back off and try again
                logger.exception("%s: before-start hook failed; not starting this incarnation", self.name)
                held = f"not started: the on-disk edits it watches could not be screened ({exc})"[:500]
        returncode: int | None = None
        spec = SpawnSpec(
            name=self.name,
            argv=[self.config.executable, *self.config.args],
            cwd=self._supervision.workspace / (self.config.cwd or ""),
            env=child_environment(self.config.env, self._supervision.instance_id),
            stop_timeout=self.config.stop_timeout,
            sandbox=self._supervision.sandbox,
        )
        try:
            if held is not None:
                raise _Held(held)
            async with spawn_child(spec, self._on_stderr) as streams:
                self.pid = streams.process.pid
                self.process = streams.process
                streams.read.intercept = self.hooks.raw_line
                try:
                    reason = await self._serve(streams.process, streams.read, streams.write, stop)
                except Exception as exc:  # noqa: BLE001 — whatever a child does, the supervisor lives on
                    logger.exception("%s: unexpected error while serving it; stopping this incarnation", self.name)
                    reason = f"internal error while talking to the child: {exc!r}"
            returncode = streams.process.returncode
        except _Held as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"spawn failed: {exc.strerror or exc} ({spec.argv[0]})"
        finally:
            self._stop_incarnation = None
            if self.connection is not None:
                self.connection.gone.set()
                self.connection = None
        return self._conclude(returncode, reason)

    def _conclude(self, returncode: int | None, reason: str) -> ExitDecision:
        """Record how an incarnation ended and let the state machine decide what comes next."""
        reason = redact(reason)  # a handshake error carries the child's own words
        requested = self.state is ChildState.STOPPING and self.machine.pending_health_reason is None
        if not requested:
            self.last_error = self._with_stderr(reason)
        decision = self.machine.process_exited(returncode, reason)
        exit_reason = self.machine.last_exit.reason if self.machine.last_exit else reason
        self._event(
            "exited", returncode=returncode, reason=exit_reason, early=decision.early,
            requested=requested, state=decision.state.value, restart_in=decision.restart_in,
        )
        if decision.state is ChildState.FATAL:
            policy = self.machine.policy
            self.last_error = (
                f"crash loop: more than {policy.max_restarts} restarts within {policy.restart_window:g}s; "
                f"last: {self._with_stderr(exit_reason)}. Fix the cause, then start_server to try again"
            )
        self._notify()
        return decision

    async def _serve(self, process: ChildProcess, read: Any, write: Any, stop: anyio.Event) -> str:
        """Handshake, then watch until the process dies or a stop is asked; return the exit reason."""
        outcome: list[str] = []
        callbacks = {
            key: value
            for key, value in {
                "sampling_callback": self.hooks.sampling,
                "elicitation_callback": self.hooks.elicitation,
                "logging_callback": self.hooks.logging,
            }.items()
            if value is not None
        }
        async with ClientSession(read, write, message_handler=self._on_message, **callbacks) as session:
            async with anyio.create_task_group() as tg:

                def finish(why: str) -> None:
                    outcome.append(why)
                    tg.cancel_scope.cancel()

                tg.start_soon(_then, process.exited.wait, finish, "exited")
                tg.start_soon(_then, stop.wait, finish, "stop")
                tg.start_soon(self._handshake_and_watch, session, process, finish)
        why = outcome[0]
        if why == "stop":
            self.machine.begin_stop()
            self._notify()
            return "stopped by request"
        if why == "exited":
            code = process.returncode
            died = f"exited with code {code}" if code is None or code >= 0 else f"killed by signal {-code}"
            return died if self.state is ChildState.RUNNING else f"{died} before completing the MCP handshake"
        return why

    async def _handshake_and_watch(
        self, session: ClientSession, process: ChildProcess, finish: Callable[[str], None]
    ) -> None:
        failure = await self._handshake(session)
        if failure is not None:
            # A child that crashed makes the handshake fail first; report the crash itself.
            with anyio.move_on_after(HANDSHAKE_EXIT_GRACE):
                await process.exited.wait()
            finish(failure)
            return
        self.connection = Connection(session, process, self.generation, anyio.Event())
        self.ever_up = True
        self.machine.handshake_ok()
        self._event("started", pid=process.pid, tools=len(self.tools))
        self._notify()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._mark_stable)
            verdict, detail = await self._watch_health(process)
            self.machine.health_restart(verdict)
            self._notify()
            if verdict == HealthReason.HUNG:
                # It reads nothing, so closing its stdin would only cost the grace period.
                process.signal_group(signal.SIGTERM)
            finish(f"unhealthy: {detail}")

    async def _handshake(self, session: ClientSession) -> str | None:
        """Initialize and list tools within `handshake_timeout`; return a failure reason or None.

        The legacy `initialize` handshake comes first: it keeps ping, server-to-client requests
        and list_changed, which the gateway relays. A child that refuses it (a server of the
        2026-07-28 era only) is asked `server/discover` instead.
        """
        started = anyio.current_time()
        deadline = anyio.CancelScope(deadline=started + self.config.handshake_timeout)
        if not self.ever_up:  # a first start that keeps writing to stderr may take startup_timeout
            self._startup_scope, self._startup_limit = deadline, started + self.handshake_allowance
        try:
            with deadline:
                try:
                    capabilities = (await session.initialize()).capabilities
                except MCPError as refused:
                    if refused.code == types.CONNECTION_CLOSED:
                        raise
                    logger.info("%s refused initialize (%s); trying server/discover", self.name, refused)
                    capabilities = (await session.discover()).capabilities
                self.server_capabilities = capabilities
                self.tools = await _list_all_tools(session, self.name) if capabilities.tools is not None else []
                return None
        except MCPError as exc:
            return f"handshake: {exc}"
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, ConnectionError) as exc:
            return f"handshake: connection closed ({type(exc).__name__})"
        except ValidationError as exc:  # a child's malformed answer must never reach the supervisor
            return f"handshake: malformed answer ({exc.error_count()} problems: {exc.errors()[0]['msg']})"
        finally:
            self._startup_scope = None
        waited = anyio.current_time() - started
        if waited < self.config.handshake_timeout + 0.5:
            return f"handshake: no answer to initialize/tools/list within {self.config.handshake_timeout:g}s"
        return (
            f"handshake: no answer to initialize/tools/list after {waited:.0f}s of first start "
            f"(silent for handshake_timeout {self.config.handshake_timeout:g}s, or past startup_timeout "
            f"{self.config.startup_timeout:g}s)"
        )

    async def _watch_health(self, process: ChildProcess) -> tuple[str, str]:
        """Sample and probe every `interval`; return (reason, detail) once a restart is due.

        Ticks keep a fixed cadence and each probe runs beside it, so a probe waiting out its
        timeout never delays the next one: a child that stops answering is due within
        `interval × failure_threshold + probe_timeout`.
        """
        checks = self._supervision.health
        tracker = self._health
        tracker.reset()
        # A scan of /proc runs off the event loop; a sample of a known tree is a few small reads
        # (see TreeSampler.blocks), cheaper inline than a worker thread each second per child.
        sampler = await blocking(TreeSampler, process.pid)  # its first reading primes cpu_percent
        due: list[str] = []
        breached = anyio.Event()

        def judge(verdict: str | None) -> None:
            if verdict is not None and not due:
                due.append(verdict)
                breached.set()

        async def probe() -> None:
            probe_ms = await process.ping(checks.probe_timeout)
            if not due:
                judge(tracker.observe_probe(probe_ms is not None, probe_ms))

        async with anyio.create_task_group() as probes:
            tick = anyio.current_time()
            while not due:
                # A late tick runs at once, then the cadence resumes from it (no burst of catch-ups).
                tick = max(tick + checks.interval, anyio.current_time())
                with anyio.move_on_after(tick - anyio.current_time()):
                    await breached.wait()
                if not due:
                    sample = await blocking(sampler.sample) if sampler.blocks else sampler.sample()
                    judge(tracker.observe_sample(sample))
                if not due:
                    probes.start_soon(probe)
            probes.cancel_scope.cancel()
        verdict = due[0]
        detail = _health_detail(verdict, tracker.figures, checks)
        logger.warning("%s: unhealthy (%s), restarting", self.name, detail)
        self._event("health", reason=verdict, detail=detail)
        return verdict, detail

    async def _mark_stable(self) -> None:
        await anyio.sleep(self.machine.policy.min_runtime)
        self._event("stable")

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            logger.debug("%s: transport error: %s", self.name, message)
            return
        try:
            if isinstance(message, types.ToolListChangedNotification) and self.connection is not None:
                await self._relist_tools(self.connection)
            if self.hooks.notification is not None:
                await self.hooks.notification(self, message)
        except (MCPError, ValidationError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            # A notification the child mishandles must not end its session, let alone the supervisor.
            logger.warning("%s: could not act on %s: %s", self.name, type(message).__name__, exc)

    async def _relist_tools(self, connection: Connection) -> None:
        """Re-list tools after `tools/list_changed`, coalesced: each notification runs in its own
        task, so a burst of them gives one listing in flight and at most one more after it."""
        self._tools_stale = True
        if self._relisting_tools:
            return
        self._relisting_tools = True
        try:
            while self._tools_stale and connection is self.connection:
                self._tools_stale = False
                with anyio.move_on_after(self.config.call_timeout):
                    self.tools = await _list_all_tools(connection.session, self.name)
                    self._event("tools_changed", tools=len(self.tools))
        finally:
            self._relisting_tools = False

    def _on_stderr(self, line: str) -> None:
        line = redact(line)  # before it is kept: logs, evidence, proposals and audit all read the ring
        self.stderr.add(line, self.generation)
        self._stderr_this_run += 1
        if self._startup_scope is not None:  # alive and progressing: more time, up to startup_timeout
            self._startup_scope.deadline = min(
                anyio.current_time() + self.config.handshake_timeout, self._startup_limit
            )
        logger.debug("[%s] %s", self.name, line)

    def _with_stderr(self, reason: str) -> str:
        """`reason`, plus the last lines this incarnation wrote to stderr (usually the real cause)."""
        lines = self.stderr.tail(min(self._stderr_this_run, LAST_ERROR_STDERR_LINES))
        quoted = " | ".join(line.strip()[:LAST_ERROR_LINE_CHARS] for line in lines if line.strip())
        return f"{reason}; stderr: {quoted}" if quoted else reason

    def _event(self, kind: EventKind, **data: Any) -> None:
        self._emit(ChildEvent(self.name, kind, data, self.generation))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


async def _then(wait: Callable[[], Awaitable[Any]], finish: Callable[[str], None], why: str) -> None:
    await wait()
    finish(why)


async def _list_all_tools(session: ClientSession, server: str) -> list[types.Tool]:
    """Every page of the child's tools.

    A child that declares `tools` but answers "method not found" has none (its resources and
    prompts stay reachable). A cursor the child already sent ends the listing with what was
    listed so far, and a warning: otherwise a child repeating its `nextCursor` is asked forever.
    """
    tools: list[types.Tool] = []
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        try:
            page = await session.list_tools(params=params)
        except MCPError as exc:
            if exc.code != types.METHOD_NOT_FOUND:
                raise
            logger.warning("%s declares tools but answers tools/list with %r: treated as offering none", server, exc.message)
            return tools
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools
        if cursor in seen:
            logger.warning(
                "%s sent tools/list cursor %.80r twice: listing stopped at %d tools (a bug in the server)",
                server, cursor, len(tools),
            )
            return tools
        seen.add(cursor)


def _health_detail(reason: str, figures: HealthFigures, checks: HealthChecks) -> str:
    n = checks.failure_threshold
    if reason == "memory":
        return f"memory: {figures.rss_mb:.0f} MB over {checks.max_memory_mb:g} MB for {n} samples"
    if reason == "cpu":
        return f"cpu: {figures.cpu_percent:.0f}% over {checks.max_cpu_percent:g}% for {n} samples"
    if reason == "hung":
        return f"hung: no answer to ping within {checks.probe_timeout:g}s, {n} times in a row"
    return reason


class _Held(Exception):
    """This incarnation is not started: the before-start hook (the on-disk guard) failed."""
