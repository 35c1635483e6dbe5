"""`metasup-mcp status`: a running supervisor's status, read from its status endpoint."""

from __future__ import annotations

from pathlib import Path


def status(url: str | None, config: Path, token: str | None, as_json: bool) -> int:
    from metasup_mcp.status_cli import StatusTarget, default_target, run_status

    target = StatusTarget(url) if url else default_target(config)
    if token:
        target = StatusTarget(target.url, token, target.note)
    return run_status(target, as_json=as_json)
