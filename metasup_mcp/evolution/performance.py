"""The performance tracker: figures derived from the proposal history, and the benchmark.

Everything is derived from the proposal history at the time of asking; nothing is counted
separately, so the figures can never drift from what the store says happened. The benchmark
is a command the operator configures (`benchmark.run`); the supervisor runs it itself on each
verified commit and reads the number on its last output line; never a number an agent reports.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metasup_mcp.config import BenchmarkSettings
from metasup_mcp.evolution.proposals import Proposal
from metasup_mcp.safety.journal import atomic_write

logger = logging.getLogger(__name__)

_WINDOW = 10  # proposals per window when measuring the success-rate trend
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Performance:
    proposals: int
    applied: int
    rolled_back: int
    rejected: int
    success_rate: float | None  # applied / (applied + rolled_back): of the changes that ran
    gain: float | None  # the latest benchmark gain, else the success-rate trend (see gain_source)
    rollbacks_by_trigger: dict[str, int]
    mean_verify_s: float | None
    consecutive_failures: int = 0  # rolled-back changes since the last applied one
    gain_source: str = "none"  # "benchmark" or "success rate trend"
    metric: float | None = None  # the benchmark metric of the newest applied change that has one
    recent: list[dict[str, object]] = field(default_factory=list)  # the last few, for status


def measure(history: Sequence[Proposal]) -> Performance:
    ran = sorted((p for p in history if p.verdict in ("applied", "rolled_back")), key=lambda p: p.created_at)
    verdicts = Counter(p.verdict for p in history)
    verify_times = [p.verify_s for p in ran if p.verify_s is not None]
    benchmarked = [p for p in ran if p.verdict == "applied" and p.gain is not None]
    measured = [p for p in ran if p.verdict == "applied" and p.metric is not None]
    if benchmarked:
        gain, source = benchmarked[-1].gain, "benchmark"
    else:
        gain = _trend(ran)
        source = "success rate trend" if gain is not None else "none"
    return Performance(
        proposals=len(history),
        applied=verdicts["applied"],
        rolled_back=verdicts["rolled_back"],
        rejected=verdicts["rejected"],
        success_rate=_rate(ran),
        gain=gain,
        rollbacks_by_trigger=dict(Counter(p.trigger or "unknown" for p in ran if p.verdict == "rolled_back")),
        mean_verify_s=round(sum(verify_times) / len(verify_times), 3) if verify_times else None,
        consecutive_failures=_trailing_failures(ran),
        gain_source=source,
        metric=measured[-1].metric if measured else None,
        recent=[_row(p) for p in ran[-5:]],
    )


def _row(p: Proposal) -> dict[str, object]:
    return {"id": p.id, "verdict": p.verdict, "trigger": p.trigger, "verify_s": p.verify_s,
            "lines": p.lines_added + p.lines_removed, "files": len(p.changes), "metric": p.metric, "gain": p.gain}


def _trailing_failures(ran: Sequence[Proposal]) -> int:
    count = 0
    for proposal in reversed(ran):
        if proposal.verdict != "rolled_back":
            break
        count += 1
    return count


def _rate(ran: Sequence[Proposal]) -> float | None:
    return round(sum(p.verdict == "applied" for p in ran) / len(ran), 3) if ran else None


def _trend(ran: Sequence[Proposal]) -> float | None:
    if len(ran) < 2 * _WINDOW:
        return None
    recent, before = _rate(ran[-_WINDOW:]), _rate(ran[-2 * _WINDOW : -_WINDOW])
    assert recent is not None and before is not None
    return round(recent - before, 3)


# -- the benchmark --------------------------------------------------------------------------


def parse_metric(output: str) -> float | None:
    """The number on the last non-empty output line (the last number on it); None if none."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return None
    numbers = _NUMBER.findall(lines[-1])
    if not numbers:
        return None
    value = float(numbers[-1])
    return value if math.isfinite(value) else None


def relative_gain(settings: BenchmarkSettings, baseline: float, metric: float) -> float:
    """How much better `metric` is than `baseline`, as a fraction (negative: worse)."""
    if baseline == 0:
        return 0.0 if metric == baseline else math.copysign(1.0, metric if settings.higher_is_better else -metric)
    change = (metric - baseline) / abs(baseline)
    return round(change if settings.higher_is_better else -change, 6)


def benchmark_files(settings: BenchmarkSettings, workspace: Path) -> list[Path]:
    """The workspace paths the benchmark command names (its program and non-option arguments):
    protected, so that a change cannot rewrite the benchmark to report what it likes."""
    argv = shlex.split(settings.run) if isinstance(settings.run, str) else list(settings.run)
    named = [arg for arg in argv if not arg.startswith("-") and arg not in ("python", "python3")]
    return [(workspace / arg).resolve() for arg in named if (workspace / arg).resolve().is_relative_to(workspace)]


class MetricStore:
    """Benchmark metrics by commit, in the state folder (operator-owned, outside the workspace)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = json.loads(path.read_text())
            self._metrics: dict[str, float] = {str(k): float(v) for k, v in loaded.items()}
        except FileNotFoundError:
            self._metrics = {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            logger.warning("ignoring unreadable benchmark metrics %s: %s", path, exc)
            self._metrics = {}

    def get(self, commit: str) -> float | None:
        return self._metrics.get(commit)

    def put(self, commit: str, metric: float) -> None:
        self._metrics[commit] = metric
        atomic_write(self.path, json.dumps(self._metrics, indent=1).encode())
