"""Resource sampling of a child's process tree, and the breach counting that turns
samples and probe outcomes into a restart decision.

`TreeSampler` and `ProcessTable` are the only parts that touch the OS (/proc; psutil where it is
missing); `HealthTracker` is pure. The MCP liveness probe itself lives with the process code
(`ChildProcess.ping`); only its outcome comes here.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class ProcStat:
    """What one read of /proc/<pid>/stat says about a process."""

    state: str  # "R", "S", ..., "Z" (zombie), "X" (dead)
    cpu_ticks: int  # user + system, in clock ticks
    start: int  # start time in clock ticks since boot: with the pid, the process's identity
    rss_pages: int


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HAVE_PROC_STAT = os.path.exists(f"/proc/{os.getpid()}/stat")


def read_stat(pid: int) -> ProcStat | None:
    """One process's figures, or None once it is gone (`/proc`, else psutil)."""
    if not _HAVE_PROC_STAT:
        return _psutil_stat(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields from `state` on.
        fields = data[data.rindex(b")") + 2 :].split()
        return ProcStat(fields[0].decode(), int(fields[11]) + int(fields[12]), int(fields[19]), int(fields[21]))
    except (OSError, ValueError, IndexError):
        return None


def _psutil_stat(pid: int) -> ProcStat | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            state = "Z" if proc.status() == psutil.STATUS_ZOMBIE else "R"
            return ProcStat(
                state, round((times.user + times.system) * _CLOCK_TICKS), round(proc.create_time() * _CLOCK_TICKS),
                proc.memory_info().rss // _PAGE,
            )
    except psutil.Error:
        return None


@dataclass(slots=True)
class _Seen:
    start: int
    cpu_ticks: int
    at: float  # monotonic seconds of that reading


class TreeSampler:
    """Samples a process and all its descendants.

    Each process is read once per sample (`/proc/<pid>/stat`: state, CPU ticks, start time,
    resident pages); CPU is measured between two samples, so a process first seen in a sample
    contributes 0 % CPU to it. A pid whose start time changed is a new process (pid reuse).
    Descendants that outlive the root (orphans re-parented elsewhere) are still counted while
    we know them: they are part of the tree the supervisor has to account for.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._seen: dict[int, _Seen] = {}
        self._sampled = False
        root = read_stat(pid)
        self._root_start = root.start if root is not None else None
        if root is not None:
            self._seen[pid] = _Seen(root.start, root.cpu_ticks, time.monotonic())

    def _discover(self) -> None:
        # A new sampler scans afresh (a tree is complete from its first sample); later samples
        # share a scan with every other child's sampler of the last PROCESS_TABLE_MAX_AGE.
        fresh = not self._sampled
        self._sampled = True
        for pid in PROCESS_TABLE.descendants(self.pid, max_age=0.0 if fresh else PROCESS_TABLE_MAX_AGE):
            if pid not in self._seen and (stat := read_stat(pid)) is not None:
                self._seen[pid] = _Seen(stat.start, stat.cpu_ticks, time.monotonic())

    @property
    def blocks(self) -> bool:
        """The next sample scans /proc (milliseconds: run it off the event loop); otherwise it
        reads one small /proc file per process of the tree, cheaper than a thread hop."""
        return not self._sampled or PROCESS_TABLE.stale(PROCESS_TABLE_MAX_AGE)

    def sample(self) -> ResourceSample:
        root = read_stat(self.pid) if self._root_start is not None else None
        alive = root is not None and root.start == self._root_start and root.state not in ("Z", "X")
        if alive:
            self._discover()
        rss = cpu = 0.0
        now = time.monotonic()
        for pid, seen in list(self._seen.items()):
            stat = root if pid == self.pid else read_stat(pid)
            if stat is None or stat.start != seen.start or stat.state in ("Z", "X"):
                del self._seen[pid]  # gone, a zombie, or its pid reused (found afresh next time)
                continue
            rss += stat.rss_pages * _PAGE / _MB
            if now > seen.at:
                cpu += (stat.cpu_ticks - seen.cpu_ticks) / _CLOCK_TICKS / (now - seen.at) * 100
            seen.cpu_ticks, seen.at = stat.cpu_ticks, now
        return ResourceSample(rss_mb=rss, cpu_percent=cpu, alive=alive, processes=len(self._seen))


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
