"""`metasup-mcp approve ID` / `reject ID`: an operator's decision on a held change, sent to a
running supervisor's status endpoint (`POST /supervisor/changes/<id>/approve|reject`).

The operator token comes from METASUP_OPERATOR_TOKEN, else from `approval.operator_token_file`
of servers.yaml; it travels in the request body, never on the command line or in a URL.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TextIO

from metasup_mcp.config import OPERATOR_TOKEN_ENV, ConfigError, load_config
from metasup_mcp.operator_gate import operator_token
from metasup_mcp.status_cli import StatusTarget

DECISION_TIMEOUT = 600.0  # an approved change is applied and verified before the answer comes


def operator_token_for(config_path: Path) -> str | None:
    """The operator token as the config's supervisor finds it (its token file, else the variable);
    the variable alone when there is no usable config."""
    if config_path.is_file():
        try:
            return operator_token(load_config(config_path).supervisor.approval)
        except ConfigError:
            pass
    return os.environ.get(OPERATOR_TOKEN_ENV) or None


def run_decision(
    target: StatusTarget, proposal_id: str, approve: bool, operator_token: str | None, note: str = "",
    out: TextIO | None = None, identity_key: bytes | None = None,
) -> int:
    """POST the decision. With `identity_key` (from the supervisor's state folder), the endpoint
    must first prove it holds it: a program squatting the status port never gets the token."""
    out = out or sys.stdout
    verb = "approve" if approve else "reject"
    if not operator_token:
        return _fail(verb, f"no operator token: set {OPERATOR_TOKEN_ENV} or approval.operator_token_file in --config")
    base = target.url.rstrip("/")
    if identity_key is not None:
        problem = _not_the_supervisor(base, identity_key, target)
        if problem is not None:
            return _fail(verb, f"{problem}; the operator token was not sent")
    body = json.dumps({"token": operator_token, "note": note}).encode()
    request = target.request(f"/supervisor/changes/{urllib.parse.quote(proposal_id, safe='')}/{verb}", body,
                             {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=DECISION_TIMEOUT) as response:
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            message = exc.reason
        return _fail(verb, f"{message} (HTTP {exc.code})")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return _fail(verb, f"no supervisor is answering at {base} ({getattr(exc, 'reason', exc)}){target.note}")
    reasons = "; ".join(result.get("reasons") or [])
    print(f"{result['id']}: {result['verdict']}" + (f": {reasons}" if reasons else ""), file=out)
    return 0 if not approve or result["verdict"] == "applied" else 1  # approved but rolled back: 1


def identity_key_for(config_path: Path) -> bytes | None:
    """The running supervisor's identity key from its state folder; None without one."""
    from metasup_mcp.http_status import IDENTITY_KEY_FILE

    if not config_path.is_file():
        return None
    try:
        state_dir = load_config(config_path).supervisor.state_dir
        return bytes.fromhex((state_dir / IDENTITY_KEY_FILE).read_text().strip()) if state_dir else None
    except (ConfigError, OSError, ValueError):
        return None


def _not_the_supervisor(base: str, key: bytes, target: StatusTarget) -> str | None:
    from metasup_mcp.http_status import identity_proof

    nonce = secrets.token_hex(16)
    request = target.request(f"/supervisor/identity?nonce={nonce}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            proof = json.loads(response.read()).get("proof", "")
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError, AttributeError) as exc:
        return f"{base} did not prove it is the supervisor of this config ({getattr(exc, 'reason', exc)}){target.note}"
    if not isinstance(proof, str) or not hmac.compare_digest(proof, identity_proof(key, nonce)):
        return (f"{base} is not the supervisor of this config (another program may hold its port: "
                "check status_http.port and the supervisor's log)")
    return None


def _fail(verb: str, message: str) -> int:
    print(f"metasup-mcp {verb}: {message}", file=sys.stderr)
    return 1
