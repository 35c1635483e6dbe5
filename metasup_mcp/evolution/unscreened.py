"""Code a change would restart servers on that nobody has screened: refused before approval.

A change is verified by restarting the servers whose `watch` its paths match
(`Pipeline.affected`). They load everything they watch from disk, so where the disk differs
from last good there (the user's uncommitted work, or their own commit past last good, neither
yet put on trial by the on-disk guard) the restart would verify code nobody screened under the
change's name: caught by the seal as `code_swapped` after the change was committed, or, if
committed, carried into last good. So such a change is refused before it is approved or
written, naming the servers, the files and what screens them; nothing on disk is touched.
Likewise a user's commit past last good in code another running server watches: the change's
commit would carry it into last good though that server never ran it.

Not counted: the change's own paths (it replaces them), a candidate on trial (judged before the
change takes the workspace), servers not running (they run nothing; their own start screens
the edits), and what is not code by the guard's rule (data, ignored and operator-owned files;
an untracked file only under an explicit `watch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.safety.workspace import Workspace

__all__ = ["unscreened_code", "unscreened_reason"]

MAX_LISTED = 10  # files named per server in the reason


def unscreened_code(
    ws: Workspace,
    last_good: str,
    restarted: Sequence[ManagedChild],
    running: Sequence[ManagedChild],
    touched: Iterable[str],
    on_trial: Iterable[str] = (),
) -> dict[str, list[str]]:
    """{server name: code it watches that differs from `last_good` and nobody screened}, leaving
    out `touched` and `on_trial` paths. For `restarted` (the servers the change restarts: they
    load the disk) a difference on disk or in HEAD counts; for the other `running` ones, one HEAD
    holds (a user's commit), which the change's commit would carry into last good unrun."""
    skip = set(touched) | set(on_trial)
    committed: set[str] = set()
    if ws.head() != last_good:
        committed = set(ws.changed_paths(last_good, untracked=False, worktree=False)) - skip
    found: dict[str, list[str]] = {}
    if restarted:
        # New files judged by last good's committed `.gitignore` files alone (Workspace.new_files).
        tracked, untracked = ws.changes_since(last_good, lambda p: any(c.config.watch and c.config.watches(p) for c in restarted))
        new = [p for p in untracked if p not in skip and any(c.config.watch and c.config.watches(p) for c in restarted)]
        new_code = set(new) - ws.ignored_at(last_good, new)
        code = ws.ownership.code_only([p for p in tracked if p not in skip] + sorted(new_code))
        for child in restarted:
            paths = [p for p in code if child.config.watches(p) and (bool(child.config.watch) or p not in new_code)]
            if paths:
                found[child.name] = sorted(paths)
    for child in running:
        paths = ws.ownership.code_only(p for p in committed if child.config.watches(p))
        if paths and child.name not in found:
            found[child.name] = sorted(paths)
    return found


def unscreened_reason(found: dict[str, list[str]]) -> str:
    """The refusal: which servers, which files, and what gets the edits screened."""
    listing = "; ".join(
        f"{name}: {', '.join(paths[:MAX_LISTED])}" + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")
        for name, paths in sorted(found.items())
    )
    restarts = ", ".join(f"restart_server {name}" for name in sorted(found))
    return (
        f"unscreened_edits: this change would restart {', '.join(sorted(found))} on code that differs from last good "
        f"and was never screened ({listing}). Nothing was committed or changed. Screen those edits first: "
        f"{restarts} puts them on trial as an on-disk candidate (edits the rules or the approval mode refuse are "
        "saved under refs/metasup/saved/ and put back); or include them in this change; or stash or revert "
        "them. Then propose again"
    )
