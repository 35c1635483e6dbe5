"""Per-server call figures: counts, a bounded window of recent latencies, a latency histogram.

Recording a call is O(log buckets) and allocation-free, so it stays off the hot path's bill.
Percentiles are computed when asked (status), over the last `WINDOW` calls.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass
from typing import Any

# Upper bounds in seconds, Prometheus-style; a final +Inf bucket is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)
WINDOW = 1024  # recent latencies kept for mean and percentiles


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts: `counts[i]` calls took at most `bounds[i]` seconds; the last
    entry (bound +Inf) equals `count`. The shape `prometheus_client` and OpenMetrics expect."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int


class CallStats:
    """The figures of one server's calls through the gateway."""

    __slots__ = ("calls", "relayed", "errors", "cancelled", "_recent", "_buckets", "_sum", "_count")

    def __init__(self) -> None:
        self.calls = 0  # started
        self.errors = 0  # tool errors, child errors, deaths, timeouts, unavailable
        self.cancelled = 0  # by the caller
        self.relayed = 0  # of `calls`, those relayed as raw lines (gateway/fastpath.py)
        self._recent: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0
        self._count = 0

    def record(self, seconds: float, error: bool) -> None:
        """One finished call (answered, failed or timed out) and how long it took."""
        if error:
            self.errors += 1
        self._recent.append(seconds)
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum += seconds
        self._count += 1

    def recent_latencies(self) -> list[float]:
        """The last (up to `WINDOW`) latencies in seconds, oldest first."""
        return list(self._recent)

    def histogram(self) -> Histogram:
        cumulative, running = [], 0
        for n in self._buckets:
            running += n
            cumulative.append(running)
        return Histogram(LATENCY_BUCKETS, tuple(cumulative), self._sum, self._count)

    def summary(self) -> dict[str, Any]:
        recent = sorted(self._recent)
        latency: dict[str, Any] = {"count": len(recent), "mean_ms": None, "p50_ms": None, "p99_ms": None}
        if recent:
            latency.update(
                mean_ms=round(sum(recent) / len(recent) * 1000, 3),
                p50_ms=round(_percentile(recent, 0.50) * 1000, 3),
                p99_ms=round(_percentile(recent, 0.99) * 1000, 3),
            )
        return {
            "calls": self.calls, "relayed": self.relayed, "errors": self.errors, "cancelled": self.cancelled,
            "latency": latency,
        }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n*q), at least 1
    return ordered[int(rank) - 1]
