"""The change approver: who decides whether a validated change may be applied.

`approval.mode` sets the rule (`auto`, `human`, `deny`); `approval.human_for` globs and the
current strategy's limits (see `strategy`) can force a human. A human answers through MCP
elicitation on the proposing client, or later with the operator token (`approve_change`,
`metasup-mcp approve`, the dashboard), checked by `metasup_mcp.operator_gate`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from metasup_mcp.config import ApprovalSettings, StrategySettings
from metasup_mcp.evolution.strategy import StrategyChoice, over_limits
from metasup_mcp.safety.journal import atomic_write
from metasup_mcp.safety.rules import FileChange, matches_pattern

if TYPE_CHECKING:
    from metasup_mcp.evolution.coordinator import Assessment
    from metasup_mcp.evolution.proposals import Proposal

Verdict = Literal["approve", "deny", "human", "refuse"]
Answer = Literal["accept", "decline", "cancel", "timeout", "unavailable", "deferred"]


# A changed line counts once per this many characters against `max_lines`: a module written on
# one line (joined with `;`, or a string run by exec) is as big a change as the lines it packs.
LINE_WIDTH = 120


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    decided_by: str  # "policy:auto", "policy:deny", "strategy:<name>", ...


@dataclass(frozen=True)
class DiffSummary:
    files: list[dict[str, Any]]  # [{path, added, removed, delete}]

    @property
    def added(self) -> int:
        return sum(f["added"] for f in self.files)

    @property
    def removed(self) -> int:
        return sum(f["removed"] for f in self.files)

    @property
    def measured(self) -> int:
        """Changed lines as the strategy limits count them: a line once per LINE_WIDTH characters."""
        return sum(f.get("measured", f["added"] + f["removed"]) for f in self.files)

    def text(self) -> str:
        rows = [f"  {f['path']}: {'deleted, ' if f['delete'] else ''}+{f['added']} -{f['removed']}" for f in self.files]
        return "\n".join([f"{len(self.files)} file(s), +{self.added} -{self.removed} lines", *rows])


def summarize(root: Path, changes: Sequence[FileChange]) -> tuple[DiffSummary, str]:
    """Lines added and removed per file against what is on disk now, and a unified diff."""
    files, diffs = [], []
    for change in changes:
        before = _read(root / change.path)
        after = [] if change.delete else (change.content or "").splitlines(keepends=True)
        diff = list(difflib.unified_diff(before, after, f"a/{change.path}", f"b/{change.path}", n=2))
        # Counted from the opcodes, not the diff text: there a line of content starting with "++"
        # or "--" would look like a file header and go uncounted.
        gone, new = [], []
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
            if tag != "equal":
                gone += before[i1:i2]
                new += after[j1:j2]
        measured = sum(max(1, -(-len(line.rstrip("\r\n")) // LINE_WIDTH)) for line in gone + new)
        files.append({"path": change.path, "added": len(new), "removed": len(gone), "delete": change.delete,
                      "measured": measured})
        diffs.append("".join(diff))
    return DiffSummary(files), "".join(diffs)


def fingerprints(root: Path, paths: Sequence[str]) -> dict[str, str | None]:
    """What each path holds now (sha256 of its bytes, of a link's target, or "folder"; None:
    absent): kept with a held change, so an approval applies only to the files the diff was of."""
    found: dict[str, str | None] = {}
    for rel in paths:
        path = root / rel
        if path.is_symlink():
            found[rel] = "link:" + hashlib.sha256(os.readlink(path).encode()).hexdigest()
        elif path.is_dir():
            found[rel] = "folder"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = None
    return found


def changed_since(root: Path, before: dict[str, str | None]) -> list[str]:
    """The paths of `before` (from `fingerprints`) that hold something else now."""
    now = fingerprints(root, list(before))
    return [rel for rel in before if now[rel] != before[rel]]


def _read(path: Path) -> list[str]:
    try:  # O_NONBLOCK, regular files only: a fifo planted at the path must not hang the approval
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            return f.read().decode("utf-8", "replace").splitlines(keepends=True)
    except (OSError, ValueError):  # absent, a folder, unreadable: all of it is new
        return []


def decide(
    settings: ApprovalSettings, strategy_settings: StrategySettings, strategy: StrategyChoice,
    changed_paths: Sequence[str], diff: DiffSummary,
) -> Decision:
    """deny refuses; the strategy's limits refuse or ask a human; human_for and human ask; else approve."""
    if settings.mode == "deny":
        return Decision("deny", "approval mode is deny: no change is applied (set approval.mode to auto or human)",
                        "policy:deny")
    over = over_limits(strategy.limits, strategy.name, len(changed_paths), diff.measured)
    if over is not None:
        if strategy_settings.over_limit == "refuse":
            return Decision("refuse", f"{over} (split it, or set strategy.over_limit: human)", f"strategy:{strategy.name}")
        return Decision("human", over, f"strategy:{strategy.name}")
    if settings.mode == "human":
        return Decision("human", "approval mode is human", "policy:human")
    matched = [p for p in changed_paths if any(matches_pattern(p, glob) for glob in settings.human_for)]
    if matched:
        return Decision("human", f"{', '.join(matched)} match approval.human_for", "policy:human_for")
    return Decision("approve", "approval mode is auto", "policy:auto")


@dataclass(frozen=True)
class ApprovalQuestion:
    """What a human is shown when asked to approve: title, steps, the diff summary, why asked."""

    proposal_id: str
    title: str
    steps: list[str]
    diff: DiffSummary
    reason: str

    @classmethod
    def of(cls, proposal: Proposal, assessment: Assessment) -> ApprovalQuestion:
        return cls(proposal.id, proposal.title, list(proposal.steps), assessment.diff, assessment.decision.reason)

    def message(self) -> str:
        """What the supervisor measured comes first; the proposer's own words after, one line each,
        so that a title cannot pose as the diff summary."""
        steps = "".join(f"\n  {n}. {_one_line(step)}" for n, step in enumerate(self.steps, 1)) or " (none given)"
        return (
            f"metasup-mcp asks you to approve change {self.proposal_id}.\n"
            f"What it touches (measured by the supervisor): {self.diff.text()}\n"
            f"Asked because: {self.reason}.\n"
            f"--- as the proposer describes it ---\nTitle: {_one_line(self.title)}\nSteps:{steps}\n---\n"
            "Accept applies it (then it is verified, and rolled back if it fails); decline refuses it."
        )


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class PendingContent:
    """The full content of proposals waiting for a human, one JSON file each in the state folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, proposal_id: str, changes: list[dict[str, Any]], verify: list[dict[str, Any]],
            proposer: str | None, diff: str, base: dict[str, str | None] | None = None) -> None:
        """`base`: the touched files' `fingerprints` when the diff was taken."""
        data = {"changes": changes, "verify": verify, "proposer": proposer, "diff": diff, "stored_at": time.time(),
                "base": base}
        atomic_write(self.folder / f"{proposal_id}.json", json.dumps(data).encode())

    def get(self, proposal_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / f"{proposal_id}.json").read_text())
        except (OSError, ValueError):
            return None

    def drop(self, proposal_id: str) -> None:
        (self.folder / f"{proposal_id}.json").unlink(missing_ok=True)
