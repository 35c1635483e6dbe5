"""A remote child: an MCP server reached over streamable HTTP (`url:` instead of `command:`).

It is supervised like a local child with the same state machine, gateway and status, except:
an incarnation is a connection, not a process (no pid, no psutil figures); liveness is the
MCP ping every `health_checks.interval` (any JSON-RPC answer counts); a lost connection is
an exit and is reconnected with the restart backoff, never given up on (a remote outage is
not a crash loop); and a `CircuitBreaker` opens after `health_checks.failure_threshold`
consecutive failed connections, so calls fail at once until a reconnect succeeds.
It runs no workspace code: the on-disk guard and change trials leave it alone.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from typing import Any

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError
from mcp.shared._httpx_utils import create_mcp_http_client

from metasup_mcp.children.breaker import CircuitBreaker
from metasup_mcp.children.child import EventSink, ManagedChild, Supervision
from metasup_mcp.children.health import HealthReason
from metasup_mcp.children.state import ExitDecision
from metasup_mcp.config import ServerConfig, shown_url

logger = logging.getLogger(__name__)

# Connecting is quick or it is not happening; reading may wait on a long tool call.
CONNECT_TIMEOUT = 5.0


class RemoteLink:
    """Stands in for `ChildProcess` in a `Connection`: `exited` is set when the connection ends."""

    pid = None
    returncode = None
    garbage_lines = 0
    last_garbage = None

    def __init__(self) -> None:
        self.exited = anyio.Event()

    def signal_group(self, sig: signal.Signals) -> None:
        """Nothing to signal: ending the incarnation closes the connection."""


class RemoteChild(ManagedChild):
    def __init__(self, config: ServerConfig, supervision: Supervision, emit: EventSink) -> None:
        super().__init__(config, supervision, emit)
        self.machine.policy = dataclasses.replace(self.machine.policy, max_restarts=sys.maxsize)
        self.breaker = CircuitBreaker(supervision.health.failure_threshold, anyio.current_time)

    @property
    def fails_fast(self) -> bool:
        return self.breaker.is_open

    def status_extras(self) -> dict[str, Any]:
        return {"url": shown_url(self.config.url or ""), "circuit": self.breaker.snapshot()}

    async def _run_incarnation(self) -> ExitDecision:
        self.machine.begin_start()
        self.generation += 1
        self.last_error = None
        self._notify()
        stop = self._stop_incarnation = anyio.Event()
        link = RemoteLink()
        self.process, self.pid = link, None  # type: ignore[assignment]
        try:
            timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=self.config.call_timeout + CONNECT_TIMEOUT)
            async with create_mcp_http_client(headers=dict(self.config.headers), timeout=timeout) as client:
                async with streamable_http_client(self.config.url or "", http_client=client) as (read, write):
                    reason = await self._serve(link, read, write, stop)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 — an unreachable or misbehaving server is an exit, never a crash
            reason = f"connection lost: {_describe(exc)}"
        finally:
            link.exited.set()
            self._stop_incarnation = None
            if self.connection is not None:
                self.connection.gone.set()
                self.connection = None
        if self.config.url:  # an HTTP error names the URL it failed on, key and all
            reason = reason.replace(self.config.url, shown_url(self.config.url))
        if reason != "stopped by request":
            self.stderr.add(f"[metasup-mcp] {shown_url(self.config.url or '')}: {reason}")
            if self.breaker.record_failure(reason):
                logger.warning("%s: circuit open after %d failures in a row: %s", self.name, self.breaker.failures, reason)
                self._event("health", reason="circuit_open", detail=reason)
        return self._conclude(None, reason)

    def _on_handshake(self) -> None:
        self.stderr.add(f"[metasup-mcp] connected to {shown_url(self.config.url or '')}")
        if self.breaker.record_success():
            logger.info("%s: reconnected, circuit closed", self.name)

    async def _watch_health(self, process: Any) -> tuple[str, str]:
        """Ping every `interval`; after `failure_threshold` unanswered pings in a row, reconnect."""
        assert self.connection is not None  # set by the handshake before the watch starts
        session = self.connection.session
        self._on_handshake()
        checks = self._supervision.health
        tracker = self._health
        tracker.reset()
        while True:
            await anyio.sleep(checks.interval)
            probe_ms = await _probe(session, checks.probe_timeout)
            verdict = tracker.observe_probe(probe_ms is not None, probe_ms)
            if verdict is not None:
                detail = f"no answer to ping within {checks.probe_timeout:g}s, {checks.failure_threshold} times in a row"
                logger.warning("%s: unresponsive (%s), reconnecting", self.name, detail)
                self._event("health", reason=HealthReason.HUNG, detail=detail)
                return verdict, f"hung: {detail}"


def _describe(exc: BaseException) -> str:
    """The innermost meaningful error of a (possibly grouped) transport failure, in one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _probe(session: ClientSession, timeout: float) -> float | None:
    """MCP liveness: any JSON-RPC answer, an error included, proves the server is answering.

    Returns the round trip in ms, or None when no answer came within `timeout` seconds.
    """
    started = anyio.current_time()
    try:
        with anyio.fail_after(timeout):
            await session.send_ping()
    except (MCPError, ValidationError):
        pass  # "method not found", or a malformed answer, is an answer too
    except TimeoutError:
        return None
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
        return None
    return round((anyio.current_time() - started) * 1000, 2)
