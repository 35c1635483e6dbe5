"""`metasup-mcp audit verify`: check the audit log's hash chain."""

from __future__ import annotations

import sys
from pathlib import Path


def audit_verify(log: Path) -> int:
    """Exit 0 when every line of the hash chain checks out, 1 naming the first bad line."""
    from metasup_mcp.safety.audit import verify_audit_log

    verdict = verify_audit_log(log)
    if verdict.ok:
        print(f"{log}: OK, {verdict.entries} entries, hash chain intact")
        return 0
    print(f"{log}: FAILED after {verdict.entries} good entries: {verdict.problem}", file=sys.stderr)
    return 1
