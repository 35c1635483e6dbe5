"""The seed's evolution coordinator: strategy selector, change approver, performance tracker.

Everything here is derived from the proposal history at the time of asking; nothing is
counted separately, so the figures can never drift from what the store says happened.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from metasup_mcp.config import ApprovalSettings
from metasup_mcp.evolution.proposals import Proposal

Strategy = Literal["metamorphic", "exploratory", "hybrid"]
Decision = Literal["approve", "deny", "human"]
_WINDOW = 10  # proposals per window when measuring the trend


@dataclass(frozen=True)
class Performance:
    proposals: int
    applied: int
    rolled_back: int
    rejected: int
    success_rate: float | None  # applied / (applied + rolled_back): of the changes that ran
    gain: float | None  # success rate of the last window minus the one before
    rollbacks_by_trigger: dict[str, int]
    mean_verify_s: float | None


def measure(history: Sequence[Proposal]) -> Performance:
    ran = sorted((p for p in history if p.verdict in ("applied", "rolled_back")), key=lambda p: p.created_at)
    verdicts = Counter(p.verdict for p in history)
    verify_times = [p.verify_s for p in ran if p.verify_s is not None]
    return Performance(
        proposals=len(history),
        applied=verdicts["applied"],
        rolled_back=verdicts["rolled_back"],
        rejected=verdicts["rejected"],
        success_rate=_rate(ran),
        gain=_gain(ran),
        rollbacks_by_trigger=dict(Counter(p.trigger or "unknown" for p in ran if p.verdict == "rolled_back")),
        mean_verify_s=round(sum(verify_times) / len(verify_times), 3) if verify_times else None,
    )


def _rate(ran: Sequence[Proposal]) -> float | None:
    return round(sum(p.verdict == "applied" for p in ran) / len(ran), 3) if ran else None


def _gain(ran: Sequence[Proposal]) -> float | None:
    if len(ran) < 2 * _WINDOW:
        return None
    recent, before = _rate(ran[-_WINDOW:]), _rate(ran[-2 * _WINDOW : -_WINDOW])
    assert recent is not None and before is not None
    return round(recent - before, 3)


def select_strategy(consecutive_failures: int, performance: Performance) -> Strategy:
    """The seed's rule: many failures → safe metamorphic steps; stagnation → explore; else hybrid."""
    if consecutive_failures > 3:
        return "metamorphic"
    if performance.gain is not None and performance.gain < 0.05 and (performance.success_rate or 0) < 0.9:
        return "exploratory"
    return "hybrid"


def decide_approval(settings: ApprovalSettings, changed_paths: Sequence[str]) -> Decision:
    """auto approves unless a path matches `human_for`; human always asks; deny refuses."""
    if settings.mode == "deny":
        return "deny"
    if settings.mode == "human":
        return "human"
    if any(fnmatch.fnmatch(path, pattern) for path in changed_paths for pattern in settings.human_for):
        return "human"
    return "approve"
