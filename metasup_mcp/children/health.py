"""Resource sampling of a child's process tree, and the breach counting that turns
samples and probe outcomes into a restart decision.

`TreeSampler` is the only part that touches the OS (psutil); `HealthTracker` is pure.
The MCP liveness probe itself lives with the session code; only its outcome comes here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

import psutil

__all__ = [
    "HealthFigures",
    "HealthLimits",
    "HealthReason",
    "HealthTracker",
    "ResourceSample",
    "TreeSampler",
]

log = logging.getLogger(__name__)

_MB = 1024 * 1024


@dataclass(frozen=True)
class ResourceSample:
    rss_mb: float  # summed over the live processes of the tree
    cpu_percent: float  # summed, in percent of one CPU, so it can exceed 100
    alive: bool  # the root process: running and not a zombie
    processes: int


class TreeSampler:
    """Samples a process and all its descendants.

    Process objects are kept between samples because psutil measures CPU between two
    calls on the same object; a process first seen in a sample contributes 0 % CPU to it.
    Descendants that outlive the root (orphans re-parented elsewhere) are still counted
    while we know them: they are part of the tree the supervisor has to account for.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._procs: dict[int, psutil.Process] = {}
        self._sampled = False
        try:
            self._root: psutil.Process | None = self._track(psutil.Process(pid))
        except psutil.Error:
            self._root = None

    def _track(self, proc: psutil.Process) -> psutil.Process:
        # The first cpu_percent() call only sets the baseline for the next one.
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
        self._procs[proc.pid] = proc
        return proc

    def _root_alive(self) -> bool:
        if self._root is None:
            return False
        try:
            # is_running() compares the create time, so a reused pid reads as gone.
            return self._root.is_running() and self._root.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _discover(self) -> None:
        if self._root is None:
            return
        # A new sampler scans afresh (a tree is complete from its first sample); later samples
        # share a scan with every other child's sampler of the last PROCESS_TABLE_MAX_AGE.
        fresh = not self._sampled
        self._sampled = True
        for pid in PROCESS_TABLE.descendants(self.pid, max_age=0.0 if fresh else PROCESS_TABLE_MAX_AGE):
            if pid in self._procs:
                continue  # a reused pid reads as not running in _measure, and is found afresh next time
            with contextlib.suppress(psutil.Error):
                self._track(psutil.Process(pid))

    @property
    def blocks(self) -> bool:
        """The next sample scans /proc (milliseconds: run it off the event loop); otherwise it
        reads a few small /proc files per process of the tree, cheaper than a thread hop."""
        return not self._sampled or PROCESS_TABLE.stale(PROCESS_TABLE_MAX_AGE)

    def sample(self) -> ResourceSample:
        alive = self._root_alive()
        if alive:
            self._discover()
        rss = cpu = 0.0
        for pid, proc in list(self._procs.items()):
            figures = self._measure(proc)
            if figures is None:
                del self._procs[pid]
            else:
                rss += figures[0]
                cpu += figures[1]
        return ResourceSample(rss_mb=rss, cpu_percent=cpu, alive=alive, processes=len(self._procs))

    def _measure(self, proc: psutil.Process) -> tuple[float, float] | None:
        """(rss_mb, cpu_percent) of one process, or None once it is dead or a zombie."""
        try:
            if not proc.is_running():
                return None
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None
                return proc.memory_info().rss / _MB, proc.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            # Counted but not measured: better than hiding a process we cannot read.
            log.debug("access denied sampling pid %d of the tree of %d", proc.pid, self.pid)
            return 0.0, 0.0


# How old a scan of the process table may be for a sampler's next sample. One scan reads every
# /proc/<pid>/stat (about 2 ms for 100 processes here); psutil's children(recursive=True) does
# that per call, which for 50 children sampled each second cost a sixth of a core. A tree
# is resampled each health interval (1 s by default), so a scan of up to 1 s serves it.
PROCESS_TABLE_MAX_AGE = 1.0


class ProcessTable:
    """Parent -> children of every process, from one /proc scan shared by all samplers.

    Thread-safe: samplers run in worker threads. Where /proc cannot be read (not Linux), it
    asks psutil per root instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: dict[int, list[int]] = {}
        self._scanned_at = -math.inf

    def stale(self, max_age: float) -> bool:
        return time.monotonic() - self._scanned_at > max_age

    def descendants(self, pid: int, max_age: float) -> list[int]:
        with self._lock:
            if time.monotonic() - self._scanned_at > max_age:
                scanned = _scan_proc()
                if scanned is None:
                    return _psutil_descendants(pid)
                self._children, self._scanned_at = scanned, time.monotonic()
            children = self._children
        found: list[int] = []
        todo = [pid]
        while todo:
            for child in children.get(todo.pop(), ()):
                found.append(child)
                todo.append(child)
        return found


def _scan_proc() -> dict[int, list[int]] | None:
    children: dict[int, list[int]] = {}
    try:
        entries = os.scandir("/proc")
    except OSError:
        return None
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    data = stat.read()
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                ppid = int(data[data.rindex(b")") + 2 :].split(None, 2)[1])
            except (OSError, ValueError, IndexError):
                continue  # gone since the listing
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _psutil_descendants(pid: int) -> list[int]:
    try:
        return [proc.pid for proc in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


PROCESS_TABLE = ProcessTable()


class HealthReason(StrEnum):
    MEMORY = "memory"
    CPU = "cpu"
    HUNG = "hung"


@dataclass(frozen=True)
class HealthLimits:
    max_memory_mb: float | None = 4096.0  # None disables the check
    max_cpu_percent: float | None = 90.0
    failure_threshold: int = 3  # consecutive breaches before a restart is due

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold}")


@dataclass(frozen=True)
class HealthFigures:
    """The last figures, for status; None until first measured."""

    rss_mb: float | None
    cpu_percent: float | None
    probe_ms: float | None
    processes: int | None


class HealthTracker:
    """Counts consecutive breaches per check; a good reading resets only its own count.

    `observe_sample` and `observe_probe` return the reason once a count reaches the
    threshold, and keep returning it while the breach lasts; call `reset()` when the
    child is restarted. Memory wins over CPU when both are due in one sample.
    """

    def __init__(self, limits: HealthLimits) -> None:
        self.limits = limits
        self.memory_breaches = 0
        self.cpu_breaches = 0
        self.probe_failures = 0
        self._sample: ResourceSample | None = None
        self._probe_ms: float | None = None

    def reset(self) -> None:
        self.memory_breaches = self.cpu_breaches = self.probe_failures = 0
        self._sample = None
        self._probe_ms = None

    @property
    def figures(self) -> HealthFigures:
        s = self._sample
        return HealthFigures(
            rss_mb=s.rss_mb if s else None,
            cpu_percent=s.cpu_percent if s else None,
            probe_ms=self._probe_ms,
            processes=s.processes if s else None,
        )

    @property
    def restart_due(self) -> HealthReason | None:
        n = self.limits.failure_threshold
        if self.memory_breaches >= n:
            return HealthReason.MEMORY
        if self.cpu_breaches >= n:
            return HealthReason.CPU
        if self.probe_failures >= n:
            return HealthReason.HUNG
        return None

    def observe_sample(self, sample: ResourceSample) -> HealthReason | None:
        if not sample.alive:
            # A dead child is the exit handler's business, not a resource breach.
            return self.restart_due
        self._sample = sample
        mem, cpu = self.limits.max_memory_mb, self.limits.max_cpu_percent
        over_mem = mem is not None and sample.rss_mb > mem
        over_cpu = cpu is not None and sample.cpu_percent > cpu
        self.memory_breaches = self.memory_breaches + 1 if over_mem else 0
        self.cpu_breaches = self.cpu_breaches + 1 if over_cpu else 0
        return self.restart_due

    def observe_probe(self, ok: bool, elapsed_ms: float | None = None) -> HealthReason | None:
        """Record a liveness probe: ok is any JSON-RPC answer in time, error or not.

        A failed probe clears probe_ms: a timeout's duration says nothing about the child.
        """
        self._probe_ms = elapsed_ms if ok else None
        self.probe_failures = 0 if ok else self.probe_failures + 1
        return self.restart_due
