"""What the restarted servers ran must be exactly the commit that becomes last good.

Verification proves the code the servers loaded, while last good records a commit. A writer
that swaps the code on disk before the restart (and perhaps puts it back before acceptance)
would make a commit last good that never ran. So, right before the restart, the code the
restarted servers watch must be on disk as the commit has it, and its files are sealed (inode,
size, mtime and ctime: a process can reset mtime, not ctime); right before acceptance the seal
must still hold. Either failing rolls the change back with trigger `code_swapped`.

Code is what the on-disk guard screens: tracked files under the servers' `watch` (untracked
ones only under an explicit `watch`), never data, ignored or operator-owned files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.safety.workspace import Workspace

__all__ = ["CodeSeal", "seal_code"]

Stat = tuple[int, int, int, int] | None


def _stat(path: str) -> Stat:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True)
class CodeSeal:
    root: str
    stats: dict[str, Stat]

    def broken(self) -> list[str]:
        """Paths written, created or removed since the seal was made."""
        return sorted(p for p, before in self.stats.items() if _stat(os.path.join(self.root, p)) != before)


def _watched(children: Sequence[ManagedChild], path: str, untracked: bool) -> bool:
    return any(c.config.watches(path) and (c.config.watch or not untracked) for c in children)


def seal_code(ws: Workspace, commit: str, children: Sequence[ManagedChild]) -> tuple[CodeSeal, list[str]]:
    """(a seal over the code `children` watch, the paths where the disk differs from `commit`)."""
    files = ws.ownership.code_only([p for p in ws.tracked_files(commit) if _watched(children, p, False)])
    root = str(ws.root)
    # Sealed before the content is compared: a write between the two is seen by one or the other.
    seal = CodeSeal(root, {p: _stat(os.path.join(root, p)) for p in files})
    tracked, untracked = ws.changes_since(commit, lambda p: _watched(children, p, True))  # by trusted ignore rules
    differing = ws.ownership.code_only(
        [p for p in tracked if _watched(children, p, False)] + [p for p in untracked if _watched(children, p, True)]
    )
    return seal, sorted(differing)
