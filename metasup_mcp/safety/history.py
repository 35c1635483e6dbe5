"""The history of last-good moves: a stack kept in the state folder beside the journal.

Accepting a verified commit pushes it; rolling back pops to the target. So
`rollback(previous)` is always "the verified commit before the current last good": after
apply A, rollback(previous), apply B, rollback(previous) goes to where A began, not to A.
Moving to a commit already in the stack truncates the stack after it; moving to one that
is not (an older verified commit) pushes it. The file is rewritten atomically; the ref
`refs/metasup/last-good` follows the top, and `settle` makes them agree after a crash.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from metasup_mcp.safety.journal import atomic_write
from metasup_mcp.safety.workspace import Workspace

__all__ = ["MAX_ENTRIES", "LastGoodHistory", "move_last_good"]

MAX_ENTRIES = 200


class LastGoodHistory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def entries(self) -> list[dict[str, Any]]:
        """Oldest first: `{commit, at, why}`."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [e for e in doc.get("stack", []) if isinstance(e, dict) and isinstance(e.get("commit"), str)]

    def commits(self) -> list[str]:
        return [e["commit"] for e in self.entries()]

    def top(self) -> str | None:
        stack = self.commits()
        return stack[-1] if stack else None

    def previous(self) -> str | None:
        """The verified commit before the current last good, or None."""
        stack = self.commits()
        return stack[-2] if len(stack) >= 2 else None

    def move_to(self, commit: str, why: str) -> None:
        """Last good is now `commit`: pop back to it if it is in the stack, else push it."""
        with self._lock:
            stack = self.entries()
            commits = [e["commit"] for e in stack]
            if commits and commits[-1] == commit:
                return
            if commit in commits:
                del stack[len(commits) - commits[::-1].index(commit):]
            else:
                stack.append({"commit": commit, "at": time.time(), "why": why})
            self._write(stack[-MAX_ENTRIES:])

    def settle(self, ref_value: str | None) -> None:
        """Make the stack agree with the last-good ref (a crash may fall between the two)."""
        if ref_value is not None and self.top() != ref_value:
            self.move_to(ref_value, "found as last good at start")

    def _write(self, stack: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"version": 1, "stack": stack}, indent=1).encode("utf-8"))


def move_last_good(workspace: Workspace, history: LastGoodHistory, commit: str, why: str) -> None:
    """Last good is now `commit`: the ref (and its verified ref), then the stack."""
    workspace.mark_last_good(commit)
    history.move_to(workspace.resolve(commit), why)
