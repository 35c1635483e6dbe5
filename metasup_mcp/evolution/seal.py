"""What the restarted servers ran must be exactly the commit that becomes last good.

Verification proves the code the servers loaded, while last good records a commit. A writer
that swaps the code on disk before the restart (and perhaps puts it back before acceptance)
would make a commit last good that never ran. So, right before the restart, the code the
restarted servers watch must be on disk as the commit has it, and its files are sealed (inode,
size, mtime and ctime: a process can reset mtime, not ctime); right before acceptance the seal
must still hold. Either failing rolls the change back with trigger `code_swapped`.

Code is what the on-disk guard screens (watched.py): tracked files under the servers' `watch`
(untracked ones only under an explicit `watch`), never data, ignored or operator-owned files;
differing by content too, where git's stat cache cannot see an edit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.evolution.content_check import ContentCheck
from metasup_mcp.evolution.watched import code_by_server, differing_from, new_code_filter, watches_code
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


def seal_code(
    ws: Workspace, commit: str, children: Sequence[ManagedChild], content: ContentCheck | None = None
) -> tuple[CodeSeal, list[str]]:
    """(a seal over the code `children` watch, the paths where the disk differs from `commit`,
    by git and by content: `content`, else a fresh `ContentCheck`)."""
    if not children:  # a change no server watches restarts nothing: there is no code to seal
        return CodeSeal(str(ws.root), {}), []
    files = [p for p in ws.tracked_files(commit) if any(watches_code(c.config, p, False) for c in children)]
    files = ws.ownership.code_only(files)
    root = str(ws.root)
    # Sealed before the content is compared: a write between the two is seen by one or the other.
    seal = CodeSeal(root, {p: _stat(os.path.join(root, p)) for p in files})
    watched = lambda p: any(c.config.watches(p) for c in children)  # noqa: E731
    tracked, untracked = differing_from(ws, content or ContentCheck(ws), commit, watched, new_code_filter(children))
    differing = set().union(*code_by_server(ws, children, tracked, untracked, commit).values())
    return seal, sorted(differing)
