"""HealthTracker (pure) and TreeSampler against real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from metasup_mcp.children.health import (
    HealthFigures,
    HealthLimits,
    HealthReason,
    HealthTracker,
    ResourceSample,
    TreeSampler,
)

# -- HealthTracker ---------------------------------------------------------------------


def sample(rss_mb: float = 50.0, cpu: float = 5.0, alive: bool = True) -> ResourceSample:
    return ResourceSample(rss_mb=rss_mb, cpu_percent=cpu, alive=alive, processes=1)


def tracker(threshold: int = 3, **limits: float | None) -> HealthTracker:
    merged: dict[str, float | None] = {"max_memory_mb": 100.0, "max_cpu_percent": 90.0, **limits}
    return HealthTracker(HealthLimits(failure_threshold=threshold, **merged))


def test_memory_over_the_limit_for_threshold_samples_in_a_row_is_due() -> None:
    t = tracker()
    assert t.observe_sample(sample(rss_mb=150)) is None
    assert t.observe_sample(sample(rss_mb=150)) is None
    assert t.observe_sample(sample(rss_mb=150)) is HealthReason.MEMORY
    assert t.restart_due is HealthReason.MEMORY


def test_a_good_memory_sample_resets_the_memory_count() -> None:
    t = tracker()
    t.observe_sample(sample(rss_mb=150))
    t.observe_sample(sample(rss_mb=150))
    t.observe_sample(sample(rss_mb=80))
    assert t.memory_breaches == 0
    assert t.observe_sample(sample(rss_mb=150)) is None


def test_exactly_at_the_limit_is_not_a_breach() -> None:
    t = tracker(threshold=1)
    assert t.observe_sample(sample(rss_mb=100, cpu=90)) is None


def test_cpu_over_the_limit_for_threshold_samples_in_a_row_is_due() -> None:
    t = tracker(threshold=2)
    assert t.observe_sample(sample(cpu=95)) is None
    assert t.observe_sample(sample(cpu=180)) is HealthReason.CPU


def test_each_check_keeps_its_own_count() -> None:
    t = tracker(threshold=2)
    t.observe_sample(sample(rss_mb=150, cpu=95))
    assert t.observe_sample(sample(rss_mb=50, cpu=95)) is HealthReason.CPU
    assert t.memory_breaches == 0


def test_memory_wins_when_memory_and_cpu_are_due_together() -> None:
    t = tracker(threshold=1)
    assert t.observe_sample(sample(rss_mb=150, cpu=95)) is HealthReason.MEMORY


def test_a_limit_of_none_disables_that_check() -> None:
    t = tracker(threshold=1, max_memory_mb=None, max_cpu_percent=None)
    assert t.observe_sample(sample(rss_mb=10_000, cpu=800)) is None


def test_failed_probes_in_a_row_mean_the_child_is_hung() -> None:
    t = tracker(threshold=3)
    assert t.observe_probe(False) is None
    assert t.observe_probe(False) is None
    assert t.observe_probe(False) is HealthReason.HUNG


def test_an_answered_probe_resets_the_hung_count() -> None:
    t = tracker(threshold=2)
    t.observe_probe(False)
    t.observe_probe(True, 3.0)
    assert t.observe_probe(False) is None


def test_a_dead_sample_is_not_a_breach_and_keeps_the_last_figures() -> None:
    t = tracker(threshold=1)
    t.observe_sample(sample(rss_mb=40, cpu=2))
    assert t.observe_sample(sample(rss_mb=0, cpu=0, alive=False)) is None
    assert t.figures.rss_mb == 40


def test_the_last_figures_are_kept_for_status() -> None:
    t = tracker()
    assert t.figures == HealthFigures(None, None, None, None)
    t.observe_sample(sample(rss_mb=42.5, cpu=7.0))
    t.observe_probe(True, 12.0)
    assert t.figures == HealthFigures(42.5, 7.0, 12.0, 1)
    t.observe_probe(False, 5000.0)
    assert t.figures.probe_ms is None


def test_reset_forgets_counts_and_figures() -> None:
    t = tracker(threshold=1)
    t.observe_sample(sample(rss_mb=150))
    t.observe_probe(False)
    t.reset()
    assert t.restart_due is None
    assert t.figures == HealthFigures(None, None, None, None)


def test_a_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        HealthLimits(failure_threshold=0)


# -- TreeSampler on real processes -----------------------------------------------------

Spawn = Callable[[str], "subprocess.Popen[str]"]

WAIT_ON_STDIN = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"

ALLOCATE_100_MB = """
import sys
data = b"x" * (100 * 1024 * 1024)  # bytes() writes every page, so all of it is resident
print("ready", flush=True)
sys.stdin.read()
"""

BUSY_LOOP = "print('ready', flush=True)\nwhile True:\n    pass\n"

WITH_GRANDCHILD = """
import subprocess, sys
g = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
print(g.pid, flush=True)
sys.stdin.readline()
g.kill()
g.wait()
print("reaped", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start python children in their own process group; kill every group at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(code: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def started(spawn: Spawn, code: str) -> tuple[subprocess.Popen[str], str]:
    proc = spawn(code)
    assert proc.stdout is not None
    first_line = proc.stdout.readline().strip()  # returns at once on EOF if it died
    assert first_line, f"child exited early with {proc.poll()}"
    return proc, first_line


def poll_sample(
    sampler: TreeSampler, until: Callable[[ResourceSample], bool], timeout: float = 10.0
) -> ResourceSample:
    """Sample every 50 ms until the predicate holds; fail with the last sample."""
    deadline = time.monotonic() + timeout
    while True:
        got = sampler.sample()
        if until(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last sample {got}")
        time.sleep(0.05)  # the sampling interval: cpu_percent measures between calls


def test_a_child_holding_100_mb_shows_rss_over_80_mb(spawn: Spawn) -> None:
    proc, _ = started(spawn, ALLOCATE_100_MB)
    got = TreeSampler(proc.pid).sample()
    assert got.alive and got.processes == 1
    assert got.rss_mb > 80


def test_a_busy_looping_child_shows_cpu_over_50_percent(spawn: Spawn) -> None:
    proc, _ = started(spawn, BUSY_LOOP)
    sampler = TreeSampler(proc.pid)
    got = poll_sample(sampler, lambda s: s.cpu_percent > 50)
    assert got.alive


def test_an_idle_child_shows_little_cpu(spawn: Spawn) -> None:
    proc, _ = started(spawn, WAIT_ON_STDIN)
    sampler = TreeSampler(proc.pid)
    got = poll_sample(sampler, lambda s: True)
    assert got.cpu_percent < 50


def test_a_grandchild_is_counted_and_dropped_once_it_dies(spawn: Spawn) -> None:
    proc, _ = started(spawn, WITH_GRANDCHILD)
    assert proc.stdin is not None and proc.stdout is not None
    sampler = TreeSampler(proc.pid)
    both = sampler.sample()
    assert both.alive and both.processes == 2
    proc.stdin.write("kill\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "reaped"
    alone = sampler.sample()
    assert alone.alive and alone.processes == 1
    assert alone.rss_mb < both.rss_mb


def test_a_grandchild_that_outlives_the_root_is_still_counted(spawn: Spawn) -> None:
    proc, grandchild_pid = started(spawn, WITH_GRANDCHILD)
    sampler = TreeSampler(proc.pid)
    assert sampler.sample().processes == 2
    proc.kill()
    proc.wait()
    got = sampler.sample()
    assert not got.alive
    assert got.processes == 1, f"grandchild {grandchild_pid} should still be counted"


def test_a_killed_and_reaped_child_reads_as_dead_without_raising(spawn: Spawn) -> None:
    proc, _ = started(spawn, WAIT_ON_STDIN)
    sampler = TreeSampler(proc.pid)
    assert sampler.sample().alive
    proc.kill()
    proc.wait()
    assert sampler.sample() == ResourceSample(0.0, 0.0, alive=False, processes=0)
    assert not sampler.sample().alive  # and keeps saying so


def test_a_zombie_root_reads_as_dead(spawn: Spawn) -> None:
    proc, _ = started(spawn, WAIT_ON_STDIN)
    sampler = TreeSampler(proc.pid)
    proc.kill()  # not reaped yet: it stays a zombie until proc.wait()
    got = poll_sample(sampler, lambda s: not s.alive)
    assert got.processes == 0
    assert proc.poll() is not None  # only now is it reaped


def test_a_pid_that_no_longer_exists_reads_as_dead(spawn: Spawn) -> None:
    proc, _ = started(spawn, WAIT_ON_STDIN)
    proc.kill()
    proc.wait()
    assert not TreeSampler(proc.pid).sample().alive
