"""`metasup-mcp demo` runs its whole narrated tour against a real supervisor and exits 0."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_end_to_end_and_exits_zero():
    result = subprocess.run(
        [sys.executable, "-m", "metasup_mcp.cli", "demo"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "textkit is running again: new pid" in out
    assert "flaky: fatal" in out
    assert "verdict applied" in out and "textkit__shout -> IT WORKS!" in out
    assert "the client got notifications/tools/list_changed: textkit__shout appeared" in out
    assert "verdict rolled_back, trigger early_exit" in out and "evidence: ModuleNotFoundError" in out
    assert "metasup-mcp audit verify: OK" in out and "hash chain intact" in out
    assert "dashboard: http://127.0.0.1:" in out and "notes running" in out
    assert "Demo finished in " in out.splitlines()[-1]
