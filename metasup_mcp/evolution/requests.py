"""What a change request carries, and the error a refused or interrupted one raises."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from metasup_mcp.evolution.approval import Answer, ApprovalQuestion

Progress = Callable[[str], Awaitable[None]]
# Asks the human at the proposing client to approve: accept, decline, cancel, unavailable, or
# deferred (the client answers later by retrying its call: the 2026-07-28 input-required flow).
Asker = Callable[[ApprovalQuestion], Awaitable[Answer]]


class ChangeError(Exception):
    """A change or rollback request refused or cut short; the message says why and what to do."""


@dataclass(frozen=True)
class ChangeRequest:
    title: str
    description: str = ""
    steps: Sequence[str] = ()
    changes: Sequence[dict[str, Any]] = ()
    dry_run: bool = False
    verify: Sequence[dict[str, Any]] = ()  # behaviour checks: [{tool, arguments, expect, match}]
    proposer: str | None = None  # the proposing connection's identity: it can never approve this change
    ask: Asker | None = None  # how to reach a human now (MCP elicitation); None: the client cannot
