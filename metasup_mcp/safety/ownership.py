"""Who owns each path of the workspace (see docs/safety-model.md).

- **Operator-owned**: the config file, the state folder (journal, audit, proposals, backups),
  the safety-rules file, the operator token file and the supervisor's own package. Never
  staged, committed, reverted or deleted by the supervisor, whatever `.gitignore` says.
- **Data**: `data_paths` (files servers write at run time), ignored files and untracked files
  outside code. Never committed, never reset, never cleaned.
- **Code**: the rest of what a proposal changes, and the changed files under the `watch`
  globs of the servers on trial. Only code is staged, committed and rolled back.

Ignored and untracked are git's answers (`Workspace.ignored`); this module answers the
questions that need no git.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metasup_mcp.safety.rules import is_git_path

__all__ = ["Ownership", "glob_matches"]


def glob_matches(path: str, entry: str) -> bool:
    """`entry` ending in `/` is a folder prefix; anything else a glob or an exact path."""
    if entry.endswith("/"):
        return path.startswith(entry) or path == entry[:-1]
    return path == entry or fnmatch.fnmatchcase(path, entry)


@dataclass(frozen=True)
class Ownership:
    root: Path
    operator_owned: tuple[Path, ...] = ()
    data_paths: tuple[str, ...] = ()
    _owned_rels: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        rels: list[str] = []
        roots = {Path(self.root).absolute(), Path(self.root).resolve()}
        for owned in self.operator_owned:
            for candidate in {Path(owned).absolute(), Path(owned).resolve()}:
                for root in roots:
                    try:
                        rel = candidate.relative_to(root).as_posix()
                    except ValueError:
                        continue
                    if rel != ".":
                        rels += [rel, rel + "/"]
        object.__setattr__(self, "_owned_rels", tuple(dict.fromkeys(rels)))

    def is_operator_owned(self, rel: str) -> bool:
        return any(rel == owned or (owned.endswith("/") and rel.startswith(owned)) for owned in self._owned_rels)

    def lies_inside(self, path: Path) -> bool:
        """Whether an absolute `path` lies inside the workspace."""
        root = Path(self.root).resolve()
        return path.resolve() == root or root in path.resolve().parents

    def is_data(self, rel: str) -> bool:
        return any(glob_matches(rel, entry) for entry in self.data_paths)

    def never_code(self, rel: str) -> bool:
        """Operator-owned, declared data, or inside `.git`: never staged, whatever else is true."""
        return is_git_path(rel) or self.is_operator_owned(rel) or self.is_data(rel)

    def code_only(self, paths: Iterable[str]) -> list[str]:
        return [p for p in paths if not self.never_code(p)]

    def owned_inside(self) -> Sequence[str]:
        """Operator-owned paths inside the workspace, relative (folders end in `/`)."""
        return tuple(r for r in self._owned_rels if r.endswith("/"))
