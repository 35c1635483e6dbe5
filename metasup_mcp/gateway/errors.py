"""What a caller gets when its request found no answer: a message a person can act on, and the
same facts as structured data (server, state, reason, whether and when to retry).

`reason` is one of `unavailable` (not running, and not back within `call_wait`), `child_died`
(the process went away with the request in flight), `timeout` (`call_timeout` passed; the
request was cancelled in the child) and `child_error` (the child answered with a JSON-RPC error
or a malformed result). Tool calls get these as tool errors (isError); resource reads and
prompt gets as JSON-RPC errors whose `data` carries the structured part.
"""

from __future__ import annotations

from typing import Any

import anyio
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.children.state import ChildState


class Unanswered(Exception):
    """A forwarded request got no answer from its child; `details` is the structured error."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def unavailable(child: ManagedChild, what: str) -> Unanswered:
    state = child.state
    details: dict[str, Any] = {"server": child.name, "state": state.value, "reason": "unavailable"}
    if child.at_rest:
        hint = f"call start_server with name {child.name!r} (after fixing the cause, if it failed)"
        details.update(retry=False, last_error=child.last_error)
        return Unanswered(f"{what}: server {child.name!r} is {state.value}; {hint}", **details)
    next_start = child.machine.next_start_at
    if child.fails_fast:  # a remote server's open circuit: no waiting, say when it is tried again
        wait = next_start - anyio.current_time() if next_start is not None else 0.0
        details.update(reason="circuit_open", retry=True, retry_after_s=round(max(wait, 1.0), 1),
                       last_error=child.last_error)
        return Unanswered(
            f"{what}: server {child.name!r} is unreachable (circuit open: {child.last_error}); it is "
            f"reconnected in the background: retry in about {details['retry_after_s']:g}s",
            **details,
        )
    wait = next_start - anyio.current_time() if state is ChildState.BACKOFF and next_start is not None else 0.0
    details.update(retry=True, retry_after_s=round(max(wait, 1.0), 1), last_error=child.last_error)
    return Unanswered(
        f"{what}: server {child.name!r} is {state.value} after waiting {child.config.call_wait:g}s (call_wait); "
        f"it is coming back by itself: retry in about {details['retry_after_s']:g}s",
        **details,
    )


def went_away(child: ManagedChild, what: str) -> Unanswered:
    return Unanswered(
        f"{what}: server {child.name!r} went away (crash, restart or stop) while handling this request; it "
        "was not retried. Call again once the server is back (it restarts by itself unless it was stopped "
        "or is fatal)",
        server=child.name, state=child.state.value, reason="child_died", retry=not child.at_rest,
        last_error=child.last_error,
    )


def timed_out(child: ManagedChild, what: str) -> Unanswered:
    return Unanswered(
        f"{what}: no answer from server {child.name!r} within its call_timeout of {child.config.call_timeout:g}s; "
        "the request was cancelled in the server, which stays usable. Raise `call_timeout` for this server "
        "in servers.yaml if the tool is just slow",
        server=child.name, state=child.state.value, reason="timeout", retry=True,
    )


def child_error(child: ManagedChild, what: str, problem: str, code: int | None = None) -> Unanswered:
    details: dict[str, Any] = {"server": child.name, "state": child.state.value, "reason": "child_error"}
    details["retry"] = False
    if code is not None:
        details["code"] = code
    return Unanswered(f"{what}: server {child.name!r} {problem}", **details)


def tool_error(failure: Unanswered, protocol_version: str) -> dict[str, Any]:
    """A CallToolResult (wire form) carrying the failure."""
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": failure.message}],
        "structuredContent": {"error": failure.message, **failure.details},
        "isError": True,
    }
    if protocol_version in MODERN_PROTOCOL_VERSIONS:
        result["resultType"] = "complete"  # required from 2026-07-28
    return result
