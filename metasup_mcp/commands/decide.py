"""`metasup-mcp approve ID` / `reject ID`: decide a change waiting for a human, through the
running supervisor's status endpoint, with the operator token."""

from __future__ import annotations

from pathlib import Path


def decide(change_id: str, approve: bool, note: str, url: str | None, config: Path, token: str | None) -> int:
    from metasup_mcp.approve_cli import operator_token_for, run_decision
    from metasup_mcp.status_cli import StatusTarget, default_target

    target = StatusTarget(url) if url else default_target(config)
    if token:
        target = StatusTarget(target.url, token, target.note)
    return run_decision(target, change_id, approve, operator_token_for(config), note)
