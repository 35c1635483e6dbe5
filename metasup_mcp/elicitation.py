"""Asking the human at the proposing client to approve a change, in both protocol eras.

- Legacy (2025-11-25): a standalone `elicitation/create` request sent while the
  `propose_change` call waits; the pipeline bounds the wait by `approval.timeout`.
- Modern (2026-07-28): no server-to-client requests. The change is held `pending_approval`
  and the call returns an `InputRequiredResult` carrying the form; the client answers by
  retrying the call with `input_responses` and the `request_state` echoed verbatim. That state
  names the proposal and is signed (HMAC, a key of this process), so it cannot be forged to
  answer another change.
- A client that declared no (form) elicitation capability is not asked: the change is held
  for an operator (`approve_change`).

Also the per-connection identity: the SDK rebuilds `ctx.session` for every request, so the
connection it wraps is what tells "the session that proposed" from another one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import weakref
from typing import Any

import mcp_types as types
from mcp.server import ServerRequestContext
from mcp.server.connection import _NoChannelOutbound  # the stateless-HTTP sentinel (SDK 2.3)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from metasup_mcp.evolution.approval import Answer, ApprovalQuestion

APPROVAL_KEY = "approval"  # the key of our one input request
_STATE_PREFIX = "metasup-approval:"
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"note": {"type": "string", "title": "Note (optional)", "description": "Recorded in the audit"}},
}
_KEY = secrets.token_bytes(32)
_identities: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def connection_identity(ctx: ServerRequestContext[Any]) -> str | None:
    """A stable id for the connection behind `ctx`; None where there is none to tell apart.

    SDK 2.3 wraps a `Connection` in each `ctx.session`. A 2025-11-25 session keeps one for its
    life; a 2026-07-28 request gets a fresh one, but on a duplex transport (stdio, memory) they
    share the transport's outbound channel. Stateless HTTP requests share only the SDK's
    no-channel sentinel: nothing identifies their client.
    """
    connection = getattr(ctx.session, "_connection", None)
    if connection is None:
        return None
    if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
        channel = getattr(connection, "outbound", None)
        if channel is None or type(channel) is _NoChannelOutbound:
            return None
        key: Any = channel
    else:
        key = connection
    identity = _identities.get(key)
    if identity is None:
        identity = _identities[key] = f"conn-{secrets.token_hex(8)}"
    return identity


def _can_elicit(ctx: ServerRequestContext[Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    # A bare `elicitation: {}` (before modes existed) means form support; url-only does not.
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


class Elicitation:
    """One `propose_change` request's way to a human."""

    def __init__(self, ctx: ServerRequestContext[Any]) -> None:
        self._ctx = ctx
        self.modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        self.deferred: ApprovalQuestion | None = None  # set when the answer must come by retry

    def asker(self) -> Any:
        """The pipeline's `Asker`, or None when the client cannot elicit."""
        if not _can_elicit(self._ctx):
            return None
        return self._defer if self.modern else self._ask_now

    async def _ask_now(self, question: ApprovalQuestion) -> Answer:
        result = await self._ctx.session.elicit_form(
            question.message(), _SCHEMA, related_request_id=self._ctx.request_id  # type: ignore[arg-type]
        )
        return result.action

    async def _defer(self, question: ApprovalQuestion) -> Answer:
        self.deferred = question
        return "deferred"

    def input_required(self) -> types.InputRequiredResult:
        assert self.deferred is not None
        request = types.ElicitRequest(
            params=types.ElicitRequestFormParams(message=self.deferred.message(), requested_schema=_SCHEMA)  # type: ignore[arg-type]
        )
        return types.InputRequiredResult(
            input_requests={APPROVAL_KEY: request}, request_state=sign(self.deferred.proposal_id)
        )


def resumed(params: types.CallToolRequestParams) -> tuple[str, str] | None:
    """(proposal id, action) when this call is a retry answering our approval request.

    Raises ValueError when the retry carries a state this process did not sign.
    """
    if params.request_state is None or not params.request_state.startswith(_STATE_PREFIX):
        return None
    proposal_id = verify(params.request_state)
    answer = (params.input_responses or {}).get(APPROVAL_KEY)
    action = answer.action if isinstance(answer, types.ElicitResult) else "cancel"
    return proposal_id, action


def sign(proposal_id: str) -> str:
    mac = hmac.new(_KEY, proposal_id.encode(), hashlib.sha256).hexdigest()
    return f"{_STATE_PREFIX}{proposal_id}:{mac}"


def verify(state: str) -> str:
    body = state.removeprefix(_STATE_PREFIX)
    proposal_id, _, mac = body.rpartition(":")
    expected = hmac.new(_KEY, proposal_id.encode(), hashlib.sha256).hexdigest()
    if not proposal_id or not hmac.compare_digest(mac, expected):
        raise ValueError(
            "the request_state of this retry was not issued by this supervisor (or it restarted since); "
            "the change stays pending: approve it with approve_change and the operator token"
        )
    return proposal_id
