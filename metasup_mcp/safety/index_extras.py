"""What the user's index holds that no tree can: unmerged stages (a merge in progress) and the
skip-worktree, assume-unchanged and intent-to-add bits of its entries.

A savepoint keeps them in a tree of their own (the second parent of its index commit), as
`<stage>/<path>` for a stage's entry and `<flag>/<path>` (an empty blob) for a bit, so a
put-back can give the paths it touches their conflict or bits back (see git-update-index(1),
"USING --INDEX-INFO" and "SKIP-WORKTREE BIT"; git-add(1) `--intent-to-add`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "ASSUME_UNCHANGED", "FLAGS", "INTENT_TO_ADD", "SKIP_WORKTREE", "IndexExtras",
    "extras_pathspecs", "extras_tree_lines", "flags_from_ls_files", "parse_extras",
]

STAGES = ("1", "2", "3")
SKIP_WORKTREE, ASSUME_UNCHANGED, INTENT_TO_ADD = "skip-worktree", "assume-unchanged", "intent-to-add"
FLAGS = (SKIP_WORKTREE, ASSUME_UNCHANGED, INTENT_TO_ADD)


class IndexExtras(NamedTuple):
    """`unmerged`: `ls-files --stage` lines (`mode sha stage\\tpath`); `flags`: path → its bits."""

    unmerged: list[str]
    flags: dict[str, frozenset[str]]

    def __bool__(self) -> bool:
        return bool(self.unmerged or self.flags)


def flags_from_ls_files(lines: Iterable[str], empty_blob: str, in_tree: set[str]) -> dict[str, frozenset[str]]:
    """The bits of `ls-files -v --stage` lines (`TAG mode sha stage\\tpath`): tag S/s skip-worktree,
    a lowercase tag assume-unchanged; an empty-blob stage-0 entry write-tree left out of
    `in_tree` (the index's tree) is intent-to-add."""
    found: dict[str, frozenset[str]] = {}
    for line in lines:
        meta, _, path = line.partition("\t")
        tag, _, sha, stage = meta.split()
        bits = set()
        if tag in ("S", "s"):
            bits.add(SKIP_WORKTREE)
        if tag.islower():
            bits.add(ASSUME_UNCHANGED)
        if stage == "0" and sha == empty_blob and path not in in_tree:
            bits.add(INTENT_TO_ADD)
        if bits:
            found[path] = frozenset(bits)
    return found


def extras_tree_lines(extras: IndexExtras, empty_blob: str) -> list[str]:
    """`update-index --index-info` lines building the extras' tree."""
    lines = []
    for line in extras.unmerged:
        meta, _, path = line.partition("\t")
        mode, sha, stage = meta.split()
        lines.append(f"{mode} {sha}\t{stage}/{path}")
    lines += [f"100644 {empty_blob}\t{flag}/{path}" for path, bits in extras.flags.items() for flag in sorted(bits)]
    return lines


def extras_pathspecs(paths: Sequence[str]) -> list[str]:
    """Where the extras' tree would hold anything about `paths`."""
    return [f"{top}/{path}" for path in paths for top in (*STAGES, *FLAGS)]


def parse_extras(ls_tree: Iterable[str]) -> IndexExtras:
    """The extras an `ls-tree -r` of their tree lists (`mode type sha\\ttop/path`)."""
    unmerged: list[str] = []
    flags: dict[str, set[str]] = {}
    for line in ls_tree:
        meta, _, full = line.partition("\t")
        mode, _, sha = meta.split()
        top, _, path = full.partition("/")
        if top in STAGES:
            unmerged.append(f"{mode} {sha} {top}\t{path}")
        elif top in FLAGS:
            flags.setdefault(path, set()).add(top)
    return IndexExtras(unmerged, {p: frozenset(b) for p, b in flags.items()})
