"""Code a change would restart servers on that nobody has screened: refused before approval.

A change is verified by restarting the servers whose `watch` its paths match
(`Pipeline.affected`). They load everything they watch from disk, so where the disk differs
from last good there (the user's uncommitted work, or their own commit past last good, neither
yet put on trial by the on-disk guard; or an edit git's stat cache cannot see) the restart
would verify code nobody screened under the change's name: caught by the seal as
`code_swapped` after the change was committed, or, if committed, carried into last good. So
such a change is refused before it is approved or written, naming the servers, the files and
what screens them; nothing on disk is touched.

Likewise a user's commit past last good in code any other server watches, running or stopped:
the change's commit would carry it into last good though that server never ran it (a stopped
server's own start would screen nothing then: HEAD would be last good). A stopped server's
uncommitted edits do not count: the change commits only its own paths, so they stay on disk,
unscreened, until that server's start screens them.

Not counted: the change's own paths (it replaces them), a candidate on trial (judged before the
change takes the workspace), and what is not code (watched.py: data, ignored and operator-owned
files; an untracked file only under an explicit `watch`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.evolution.content_check import ContentCheck
from metasup_mcp.evolution.watched import code_by_server, differing_from, new_code_filter
from metasup_mcp.safety.workspace import Workspace

__all__ = ["unscreened_code", "unscreened_reason"]

MAX_LISTED = 10  # files named per server in the reason


def unscreened_code(
    ws: Workspace,
    last_good: str,
    restarted: Sequence[ManagedChild],
    servers: Sequence[ManagedChild],
    touched: Iterable[str],
    on_trial: Iterable[str] = (),
    content: ContentCheck | None = None,
) -> dict[str, list[str]]:
    """{server name: code it watches that differs from `last_good` and nobody screened}, leaving
    out `touched` and `on_trial` paths. For `restarted` (the servers the change restarts: they
    load the disk) a difference on disk (seen by `content` too, else a fresh `ContentCheck`) or
    in HEAD counts; for the other `servers` (every server, running or stopped), one HEAD holds
    (a user's commit), which the change's commit would carry into last good unrun."""
    skip = set(touched) | set(on_trial)
    found: dict[str, list[str]] = {}
    if restarted:
        watched = lambda p: any(c.config.watches(p) for c in restarted)  # noqa: E731
        tracked, untracked = differing_from(ws, content or ContentCheck(ws), last_good, watched, new_code_filter(restarted))
        code = code_by_server(
            ws, restarted, [p for p in tracked if p not in skip], [p for p in untracked if p not in skip], last_good
        )
        found.update((name, paths) for name, paths in code.items() if paths)
    if ws.head() != last_good:
        committed = [p for p in ws.changed_paths(last_good, untracked=False, worktree=False) if p not in skip]
        for name, paths in code_by_server(ws, servers, committed, [], None).items():
            if paths and name not in found:
                found[name] = paths
    return found


def unscreened_reason(found: dict[str, list[str]], stopped: Collection[str] = ()) -> str:
    """The refusal: which servers, which files, and what gets the edits screened (`start_server`
    for a server in `stopped`, `restart_server` for the others)."""
    listing = "; ".join(
        f"{name}: {', '.join(paths[:MAX_LISTED])}" + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")
        for name, paths in sorted(found.items())
    )
    remedies = ", ".join(f"{'start_server' if name in stopped else 'restart_server'} {name}" for name in sorted(found))
    return (
        f"unscreened_edits: code of {', '.join(sorted(found))} differs from last good and was never screened "
        f"({listing}); this change would restart onto it or carry it into last good. Nothing was committed or "
        f"changed. Screen those edits first: "
        f"{remedies} puts them on trial as an on-disk candidate (edits the rules or the approval mode refuse are "
        "saved under refs/metasup/saved/ and put back); or include them in this change; or stash or revert "
        "them. Then propose again"
    )
