"""`metasup-mcp approve ID` / `reject ID`: decide a change waiting for a human, through the
running supervisor's status endpoint, with the operator token."""

from __future__ import annotations

import sys
from pathlib import Path


def decide(change_id: str, approve: bool, note: str, url: str | None, config: Path, token: str | None) -> int:
    from metasup_mcp.approve_cli import identity_key_for, operator_token_for, run_decision
    from metasup_mcp.status_cli import StatusTarget, default_target

    target = StatusTarget(url) if url else default_target(config)
    if token:
        target = StatusTarget(target.url, token, target.note)
    key = identity_key_for(config)
    if key is None and not url and config.is_file():
        # Whatever answers on the configured port would get the token: only a proven supervisor may.
        print(f"metasup-mcp {'approve' if approve else 'reject'}: the supervisor of {config} has not recorded its "
              "status endpoint's key in its state folder: is it running, with status_http enabled? "
              "(the operator token was not sent)", file=sys.stderr)
        return 1
    return run_decision(target, change_id, approve, operator_token_for(config), note, identity_key=key)
