"""`Proposal`: one change an agent asked for, with its stage history; and its persistent store.

Each proposal is one JSON file in `<state_dir>/proposals/`, rewritten atomically at every
stage, so `get_change` and `list_changes` survive restarts and a crash mid-pipeline leaves
the last stage reached on disk for start-up recovery to finish.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from metasup_mcp.safety.journal import atomic_write

logger = logging.getLogger(__name__)

Status = Literal[
    "queued", "validating", "approving", "pending_approval", "applying", "verifying",
    "applied", "rolled_back", "rejected", "valid",
]
FINAL: frozenset[str] = frozenset({"applied", "rolled_back", "rejected", "valid"})


class StageRecord(BaseModel):
    stage: str
    at: float
    detail: str = ""


class CheckOutcome(BaseModel):
    name: str
    ok: bool
    duration_s: float
    output_tail: str = ""


class ChangeSummary(BaseModel):
    """What a change touches; the content itself lives in the commit."""

    path: str
    delete: bool = False
    bytes: int = 0


class Proposal(BaseModel):
    id: str
    title: str
    description: str = ""
    steps: list[str] = []
    changes: list[ChangeSummary] = []
    dry_run: bool = False
    status: Status = "queued"
    verdict: str | None = None
    trigger: str | None = None
    reasons: list[str] = []
    base_commit: str | None = None
    commit: str | None = None
    rejected_ref: str | None = None
    snapshot_ref: str | None = None
    checks: list[CheckOutcome] = []
    restarted: list[str] = []
    stages: list[StageRecord] = []
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    verify_s: float | None = None
    lines_added: int = 0
    lines_removed: int = 0
    strategy: str | None = None  # the strategy in force when it was decided
    approval: dict[str, Any] | None = None  # {decision, decided_by, reason, at}: who or what decided
    expires_at: float | None = None  # a pending_approval proposal is refused after this
    verify: list[dict[str, Any]] = []  # the agent's behaviour checks ({tool, arguments, expect, match})
    behaviour: list[dict[str, Any]] = []  # what the verify calls and the replay found
    metric: float | None = None  # the benchmark's metric on this commit
    gain: float | None = None  # against the previous last good (fraction; negative: worse)

    def mark(self, status: Status, detail: str = "") -> None:
        self.status = status
        self.stages.append(StageRecord(stage=status, at=time.time(), detail=detail))
        if status in FINAL:
            self.verdict = status
            self.finished_at = time.time()

    def result(self) -> dict[str, Any]:
        """The `propose_change` answer: `{id, verdict, commit, reasons[], checks[]}` plus context."""
        return {
            "id": self.id,
            "verdict": self.verdict or self.status,
            "commit": self.commit,
            "reasons": self.reasons,
            "checks": [check.model_dump() for check in self.checks],
            "trigger": self.trigger,
            "restarted": self.restarted,
            "rejected_ref": self.rejected_ref,
            "approval": self.approval,
            "behaviour": self.behaviour,
            "metric": self.metric,
            "expires_at": self.expires_at,
        }


def new_proposal_id(prefix: str = "p") -> str:
    """`p-<UTC time>-<6 hex>` (`c-…` for on-disk candidates): sortable, unique, a valid ref name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


class ProposalStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._proposals: dict[str, Proposal] = {}
        for path in sorted(folder.glob("p-*.json")):
            try:
                proposal = Proposal.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                logger.warning("ignoring unreadable proposal file %s: %s", path, exc)
                continue
            self._proposals[proposal.id] = proposal

    def save(self, proposal: Proposal) -> None:
        self._proposals[proposal.id] = proposal
        atomic_write(self.folder / f"{proposal.id}.json", proposal.model_dump_json(indent=1).encode())

    def get(self, proposal_id: str) -> Proposal | None:
        return self._proposals.get(proposal_id)

    def list(self, status: str | None = None, limit: int = 50) -> list[Proposal]:
        """Newest first."""
        chosen = [p for p in self._proposals.values() if status is None or p.status == status]
        chosen.sort(key=lambda p: p.created_at, reverse=True)
        return chosen[:limit]

    def all(self) -> list[Proposal]:
        return list(self._proposals.values())
