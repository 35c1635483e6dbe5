"""What counts as a server's code, and where it differs from a commit: one rule for every check.

The on-disk guard screens it before a start, a proposal is refused while it is unscreened
(unscreened.py), and the seal holds it through a change's verification (seal.py): all three
ask the same question here, so a path one calls code the others never call data.

Code a server watches is a path under its `watch` globs (no `watch`: every path), never data,
ignored or operator-owned files (`Ownership.never_code`). An untracked file counts only under
an explicit `watch` (with none, a stray TODO.txt is the user's, not code), and never one the
ignore rules of the commit it is judged against ignore (a child deleting `.gitignore` on disk
does not turn `venv/` or `.env` into code).

Where it differs is what git reports (`Workspace.changes_since`) plus what git's stat cache
cannot see: an edit of the same size in the same second, or with mtime set back
(`ContentCheck`, content_check.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from metasup_mcp.children.child import ManagedChild
from metasup_mcp.config import ServerConfig
from metasup_mcp.evolution.content_check import ContentCheck
from metasup_mcp.safety.workspace import Workspace

__all__ = ["code_by_server", "differing_from", "new_code_filter", "watches_code"]


def watches_code(config: ServerConfig, path: str, untracked: bool, link: bool = False) -> bool:
    """Whether `path` (untracked or not) is code the server `config` runs, by its `watch` alone.
    `link`: `path` is a symlink on disk, code too when a watch names anything under it (`ext`
    for `watch: [ext/]`: the server loads `ext/evil.py` through it)."""
    named = config.watches(path) or (link and config.watches(path + "/"))
    return named and (not untracked or bool(config.watch))


def new_code_filter(children: Sequence[ManagedChild]) -> Callable[[str], bool] | None:
    """Whether an untracked path may be code of one of `children` (named by an explicit `watch`),
    for `differing_from`'s `new`; None when none has one (no untracked file is code then)."""
    watching = [c for c in children if c.config.watch]
    return (lambda p: any(c.config.watches(p) for c in watching)) if watching else None


def code_by_server(
    ws: Workspace, children: Sequence[ManagedChild], tracked: Sequence[str], untracked: Sequence[str], ignored_by: str | None
) -> dict[str, list[str]]:
    """{server name: the changed paths that are its code, sorted} for each of `children`.

    `tracked`, `untracked`: changed paths as `differing_from` splits them. `ignored_by`: the
    commit whose ignore rules judge untracked files (one `git check-ignore`), or None to take
    them as listed (the caller's look already applied rules it trusts)."""
    links = {p for p in {*tracked, *untracked}
             if any(not c.config.watches(p) and c.config.watches(p + "/") for c in children)
             and os.path.islink(ws.root / p)}
    new = sorted({p for p in untracked if any(watches_code(c.config, p, True, p in links) for c in children)})
    if ignored_by is not None and new:
        new = sorted(set(new) - ws.ignored_at(ignored_by, new))
    fresh = set(new)
    code = ws.ownership.code_only(sorted({*tracked, *new}))
    return {c.name: [p for p in code if watches_code(c.config, p, p in fresh, p in links)] for c in children}


def differing_from(
    ws: Workspace,
    content: ContentCheck,
    commit: str,
    wanted: Callable[[str], bool],
    new: Callable[[str], bool] | None,
) -> tuple[list[str], list[str]]:
    """(tracked paths where HEAD or the disk differs from `commit`, untracked files not ignored),
    the tracked ones including those `wanted` (and never data) whose content differs though
    git's stat cache says not. `new` (see `new_code_filter`): the untracked files it names are
    judged by `commit`'s committed ignore rules alone (`Workspace.new_files`), not by rules a
    child can write on disk; None: git's own rules."""
    tracked, untracked = ws.changes_since(commit, new)
    never_code = ws.ownership.never_code
    hidden = content.differing(commit, lambda p: not never_code(p) and wanted(p))
    return sorted({*tracked, *hidden}), untracked
