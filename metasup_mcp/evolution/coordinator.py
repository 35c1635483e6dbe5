"""The seed's evolution coordinator: performance tracker, strategy selector, change approver.

It composes `performance` (figures from the proposal history; the benchmark), `strategy`
(which strategy now, and why; its limits) and `approval` (who decides). The pipeline asks it
at the approval stage and after a verified commit; the status asks it for the strategy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metasup_mcp.config import CheckSpec, SupervisorConfig
from metasup_mcp.evolution.approval import Decision, DiffSummary, decide, summarize
from metasup_mcp.children.sandbox import SandboxPlan
from metasup_mcp.evolution.checks import check_input_globs, guarded_check_inputs, run_checks
from metasup_mcp.evolution.performance import MetricStore, Performance, measure, parse_metric, relative_gain
from metasup_mcp.evolution.proposals import ProposalStore
from metasup_mcp.evolution.strategy import StrategyChoice, select_strategy
from metasup_mcp.safety.rules import FileChange

__all__ = ["Assessment", "BenchmarkOutcome", "Coordinator", "Performance", "measure"]


@dataclass(frozen=True)
class Assessment:
    """What the approver made of one validated change."""

    decision: Decision
    strategy: StrategyChoice
    diff: DiffSummary
    diff_text: str


@dataclass(frozen=True)
class BenchmarkOutcome:
    metric: float | None
    baseline: float | None
    gain: float | None
    output: str
    regression: str | None  # why the change must be rolled back (trigger `regression`); None if not


class Coordinator:
    def __init__(self, settings: SupervisorConfig, store: ProposalStore, metrics: MetricStore) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.check_inputs = check_input_globs(settings.checks, settings.check_inputs)
        self.sandbox: SandboxPlan | None = None  # what the benchmark runs in (set by the Supervisor)

    def performance(self) -> Performance:
        return measure(self.store.all())

    def strategy(self) -> StrategyChoice:
        return select_strategy(self.settings.strategy, self.performance())

    def assess(self, root: Path, changes: Sequence[FileChange]) -> Assessment:
        strategy = self.strategy()
        diff, text = summarize(root, changes)
        decision = decide(self.settings.approval, self.settings.strategy, strategy, [c.path for c in changes], diff)
        guarded = guarded_check_inputs([c.path for c in changes], self.check_inputs)
        if decision.verdict == "approve" and guarded:  # a change must not rewrite what judges it
            reason = f"{', '.join(guarded)} decide what the checks test (check_inputs): a human must approve"
            decision = Decision("human", reason, "policy:check_inputs")
        return Assessment(decision, strategy, diff, text)

    # -- the benchmark ---------------------------------------------------------------------

    async def measure_commit(self, commit: str, root: Path, env: dict[str, str]) -> tuple[float | None, str]:
        """Run the benchmark on the workspace as it is now (at `commit`); remember its metric."""
        bench = self.settings.benchmark
        assert bench is not None
        spec = CheckSpec(name="benchmark", run=bench.run, timeout=bench.timeout)
        # Python validates cached bytecode by source mtime (whole seconds) and size: an edit of the
        # same size within a second would be measured on the old code. A fresh cache each run.
        with tempfile.TemporaryDirectory(prefix="metasup-bench-") as cache:
            (outcome,) = await run_checks([spec], root, [], {**env, "PYTHONPYCACHEPREFIX": cache}, self.sandbox)
        if not outcome.ok:
            metric = None
        elif bench.metric == "wall_time":
            metric = outcome.duration_s
        else:
            metric = parse_metric(outcome.output_tail)
        if metric is not None:
            self.metrics.put(commit, metric)
        return metric, outcome.output_tail

    async def judge(self, commit: str, baseline_commit: str, root: Path, env: dict[str, str]) -> BenchmarkOutcome:
        """The benchmark on a verified `commit` against the previous last good's metric."""
        bench = self.settings.benchmark
        assert bench is not None
        baseline = self.metrics.get(baseline_commit)
        metric, output = await self.measure_commit(commit, root, env)
        if metric is None:
            why = (f"the benchmark failed:\n{output[-1000:]}" if self.settings.benchmark.metric == "wall_time"
                   else f"the benchmark gave no number on its last output line:\n{output[-1000:]}")
            return BenchmarkOutcome(None, baseline, None, output, why)
        if baseline is None:
            return BenchmarkOutcome(metric, None, None, output, None)
        gain = relative_gain(bench, baseline, metric)
        regression = None
        if -gain > bench.max_regression:
            regression = (
                f"benchmark metric {metric:g} is {-gain:.1%} worse than last good's {baseline:g} "
                f"(benchmark.max_regression is {bench.max_regression:.1%})"
            )
        return BenchmarkOutcome(metric, baseline, gain, output, regression)
