"""The evolution coordinator: strategy transitions driven by real proposal histories, the
benchmark's regression rollback, and the per-strategy change limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metasup_mcp.config import BenchmarkSettings, ConfigError, StrategySettings, load_config
from metasup_mcp.evolution.performance import Performance, parse_metric, relative_gain
from metasup_mcp.evolution.strategy import select_strategy
from metasup_mcp.metrics import render_metrics
from metasup_mcp.supervisor import ChangeRequest, Supervisor
from tests.safety_support import workspace_template
from tests.test_gateway_support import write_config

pytestmark = pytest.mark.anyio

APP = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py"]}
BENCH = "import score\nprint('measuring...')\nprint('ops/s:', score.SCORE)\n"


def scored_workspace(tmp_path: Path) -> str:
    template = workspace_template(tmp_path)
    (template / "score.py").write_text("SCORE = 100\n")
    (template / "bench.py").write_text(BENCH)
    return str(template)


def score(value: int | str) -> ChangeRequest:
    return ChangeRequest(f"score {value}", changes=[{"path": "score.py", "content": f"SCORE = {value}\n"}])


def supervisor(tmp_path: Path, **overrides: Any) -> Supervisor:
    path = write_config(
        tmp_path, [APP], workspace_template=scored_workspace(tmp_path),
        benchmark={"run": ["python", "bench.py"], "timeout": "20s", "max_regression": "10%"}, **overrides,
    )
    return Supervisor(load_config(path))


async def test_strategy_follows_the_history_good_regressing_broken(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    async with sup.running(autostart=False):
        assert sup.evolution_status()["strategy_reason"] == "no performance history yet"

        better = await sup.propose_change(score(110))  # +10 % against the measured baseline (100)
        assert better.verdict == "applied" and better.metric == 110 and better.gain == pytest.approx(0.10)
        status = sup.evolution_status()
        assert status["strategy"] == "hybrid" and "+0.100 (benchmark)" in status["strategy_reason"]

        slower = await sup.propose_change(score(104))  # -5.5 %: within max_regression, but no gain
        assert slower.verdict == "applied" and slower.gain is not None and slower.gain < 0
        status = sup.evolution_status()
        assert status["strategy"] == "exploratory" and "is under 0.05" in status["strategy_reason"]
        assert status["performance_metric"] == 104

        regressed = await sup.propose_change(score(80))  # -23 %: rolled back
        assert regressed.verdict == "rolled_back" and regressed.trigger == "regression"
        assert "worse than last good's 104" in regressed.reasons[-1]
        assert (Path(sup.settings.workspace) / "score.py").read_text() == "SCORE = 104\n"

        for _ in range(3):
            broken = await sup.propose_change(score("(((("))
            assert broken.verdict == "rolled_back" and broken.trigger == "compile"
        status = sup.evolution_status()
        assert status["strategy"] == "metamorphic" and status["consecutive_failed_changes"] == 4
        assert "4 consecutive failed changes (more than 3)" in status["strategy_reason"]
        assert sup.supervisor_block()["strategy"] == "metamorphic"
        assert status["rollbacks_by_trigger"] == {"regression": 1, "compile": 3}
        scraped = render_metrics(sup).decode()
        assert "metasup_benchmark_metric 104.0" in scraped and "metasup_pending_approvals 0.0" in scraped

        wide = await sup.propose_change(ChangeRequest("wide", changes=[
            {"path": f"m{n}.py", "content": "X = 1\n"} for n in range(3)
        ]))
        assert wide.verdict == "rejected" and "strategy metamorphic allows at most 2 files" in wide.reasons[0]
        assert wide.approval is not None and wide.approval["decided_by"] == "strategy:metamorphic"


async def test_a_benchmark_without_a_number_rolls_back_and_the_benchmark_itself_is_protected(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    async with sup.running(autostart=False):
        silent = await sup.propose_change(score("None"))
        rewrite = await sup.propose_change(ChangeRequest("a better benchmark", changes=[
            {"path": "bench.py", "content": "print(10**9)\n"}
        ]))
    assert silent.verdict == "rolled_back" and silent.trigger == "regression"
    assert "no number on its last output line" in silent.reasons[-1]
    assert rewrite.verdict == "rejected" and rewrite.reasons[0].startswith("protected: bench.py")


async def test_over_the_strategy_limit_a_human_can_be_asked_instead(tmp_path: Path) -> None:
    sup = supervisor(
        tmp_path, strategy={"training": True, "over_limit": "human", "limits": {"training": {"max_lines": 1}}}
    )
    async with sup.running(autostart=False):
        held = await sup.propose_change(ChangeRequest("two lines", changes=[
            {"path": "notes.txt", "content": "one\ntwo\n"}
        ]))
        small = await sup.propose_change(ChangeRequest("one line", changes=[{"path": "n.txt", "content": "x\n"}]))
    assert held.verdict is None and held.status == "pending_approval"
    assert "strategy training allows at most 1 changed lines per change; this one changes 2" in held.reasons[0]
    assert small.verdict == "applied" and small.strategy == "training"


def test_the_seed_rules_with_configurable_thresholds() -> None:
    def perf(failures: int = 0, gain: float | None = None) -> Performance:
        return Performance(0, 0, 0, 0, None, gain, {}, None, consecutive_failures=failures, gain_source="benchmark")

    default = StrategySettings()
    assert select_strategy(default, perf()).name == "hybrid"
    assert select_strategy(default, perf(failures=3)).name == "hybrid"
    assert select_strategy(default, perf(failures=4)).name == "metamorphic"
    assert select_strategy(default, perf(gain=0.04)).name == "exploratory"
    assert select_strategy(default, perf(gain=0.05)).name == "hybrid"
    strict = StrategySettings(metamorphic_after_failures=0, min_gain=0.2)
    assert select_strategy(strict, perf(failures=1)).name == "metamorphic"
    assert select_strategy(strict, perf(gain=0.1)).name == "exploratory"
    assert select_strategy(StrategySettings(training=True), perf(failures=9)).name == "training"
    only_one = StrategySettings(limits={"metamorphic": {"max_files": 1}})  # type: ignore[dict-item]
    assert select_strategy(only_one, perf()).limits.max_files == 5  # hybrid keeps its built-in limits


def test_the_metric_is_the_last_number_on_the_last_output_line() -> None:
    assert parse_metric("warming up 3\nresult: 1.5e3 ops/s (n=10)\n\n") == 10
    assert parse_metric("12.5\n") == 12.5
    assert parse_metric("ok\n") is None and parse_metric("") is None and parse_metric("nan\n") is None
    lower = BenchmarkSettings(run="x", higher_is_better=False)
    assert relative_gain(lower, 100, 90) == pytest.approx(0.1)
    assert relative_gain(BenchmarkSettings(run="x"), 100, 90) == pytest.approx(-0.1)


def test_benchmark_and_token_settings_are_checked_with_the_key_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, [], benchmark={"run": "x", "max_regression": "ten"})
    with pytest.raises(ConfigError, match=r"benchmark.max_regression.*not a fraction"):
        load_config(path)
    inside = write_config(tmp_path, [], approval={"operator_token_file": str(tmp_path / "workspace" / "token")})
    with pytest.raises(ConfigError, match="operator_token_file.*inside the workspace"):
        load_config(inside)
    assert load_config(write_config(tmp_path, [], benchmark={"run": "x", "max_regression": "15%"})).supervisor.benchmark.max_regression == 0.15  # type: ignore[union-attr]


async def test_a_change_on_one_long_line_counts_as_the_lines_it_would_take(tmp_path: Path) -> None:
    """max_lines cannot be sidestepped by writing a whole module on one line (`;`, exec of a
    string): a line counts once per LINE_WIDTH characters."""
    sup = supervisor(
        tmp_path, strategy={"training": True, "over_limit": "human", "limits": {"training": {"max_lines": 5}}}
    )
    packed = ";".join(f"X{n} = {n}" for n in range(200)) + "\n"  # ~1,800 characters, one line
    async with sup.running(autostart=False):
        held = await sup.propose_change(ChangeRequest("one line", changes=[{"path": "packed.py", "content": packed}]))
    assert held.status == "pending_approval", held.reasons
    assert "strategy training allows at most 5 changed lines" in held.reasons[0]


def test_lines_that_look_like_diff_headers_are_counted_too(tmp_path: Path) -> None:
    from metasup_mcp.evolution.approval import summarize
    from metasup_mcp.safety.rules import FileChange

    (tmp_path / "q.sql").write_text("-- old\n--- older\nselect 1;\n")
    diff, _ = summarize(tmp_path, [FileChange("q.sql", "++x\n+++ y\nselect 1;\n")])
    assert (diff.added, diff.removed) == (2, 2)


async def test_a_change_cannot_print_its_way_past_a_wall_time_benchmark(tmp_path: Path) -> None:
    """The code under test runs in the benchmark's process: with `metric: output` an atexit hook
    could print a number of its own last; `wall_time` is the supervisor's clock around the command.
    The timed work is half a second so that a loaded machine's start-up noise (tens of ms, more in
    the sandbox) is a small share of it, as it must be for any wall-time benchmark."""
    template = Path(scored_workspace(tmp_path))
    (template / "score.py").write_text(timed_score(100, 0.5))
    path = write_config(
        tmp_path, [APP], workspace_template=str(template),
        benchmark={"run": ["python", "bench.py"], "timeout": "20s", "max_regression": "100%", "metric": "wall_time"},
    )
    sup = Supervisor(load_config(path))
    boasting_and_slow = timed_score(10**9, 2.5) + "atexit.register(print, 'ops/s: 1e-9')\n"
    async with sup.running(autostart=False):
        same = await sup.propose_change(ChangeRequest("same", changes=[{"path": "score.py", "content": timed_score(101, 0.5)}]))
        slow = await sup.propose_change(ChangeRequest("faster, it says", changes=[{"path": "score.py", "content": boasting_and_slow}]))
    assert same.verdict == "applied" and same.metric is not None and 0.5 <= same.metric < 2.5, same.reasons
    assert slow.verdict == "rolled_back" and slow.trigger == "regression"
    assert slow.metric is None or slow.metric >= 2.5
    assert "worse than last good's" in slow.reasons[-1]


def timed_score(value: int, seconds: float) -> str:
    return f"import atexit, time\nSCORE = {value}\ntime.sleep({seconds})\n"


def test_a_wall_time_benchmark_is_lower_is_better_and_says_so_when_told_otherwise(tmp_path: Path) -> None:
    timed = load_config(write_config(tmp_path, [], benchmark={"run": "x", "metric": "wall_time"})).supervisor.benchmark
    assert timed is not None and timed.higher_is_better is False
    contradicted = write_config(tmp_path, [], benchmark={"run": "x", "metric": "wall_time", "higher_is_better": True})
    with pytest.raises(ConfigError, match="wall_time is in seconds, lower is better"):
        load_config(contradicted)
