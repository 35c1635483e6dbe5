"""Prometheus metrics for `/metrics`, read from the `Supervisor` at scrape time.

`SupervisorCollector` copies nothing: every scrape asks the owners (`Supervisor.status()`,
`evolution_status()`, the gateway's latency figures) and turns the answers into metric
families. It must be collected on the event loop thread that runs the supervisor.

Gateway latency comes from `supervisor.gateway.latency_histogram(server)`: the gateway's
`Histogram` (`bounds`, cumulative `counts` with one more entry for +Inf, `sum`, `count`); a
`(buckets, sum_seconds, count)` tuple of `(upper_bound, cumulative_count)` buckets is read as
well. A server with no figures yet, or an accessor that fails, leaves the histogram out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from metasup_mcp.children.state import ChildState

logger = logging.getLogger(__name__)

__all__ = ["SupervisorCollector", "render_metrics", "CHILD_STATES"]

CHILD_STATES = [state.value for state in ChildState]
VERDICTS = ("applied", "rolled_back", "rejected")


class SupervisorCollector:
    """A custom collector over one supervisor (duck-typed: `status()`, `evolution_status()`)."""

    def __init__(self, supervisor: Any) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        status = self._supervisor.status()
        yield from _supervisor_metrics(status["supervisor"])
        yield from _server_metrics(status["servers"])
        yield from _evolution_metrics(self._supervisor.evolution_status())
        latency = _latency_metric(self._supervisor, list(status["servers"]))
        if latency is not None:
            yield latency


def render_metrics(supervisor: Any) -> bytes:
    """The Prometheus text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor))
    return generate_latest(registry)


def _supervisor_metrics(block: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("metasup_uptime_seconds", "Seconds since the supervisor started.", value=block["uptime_s"])
    yield GaugeMetricFamily(
        "metasup_emergency", "1 while the supervisor is in emergency mode.", value=int(block["mode"] == "emergency")
    )
    yield GaugeMetricFamily(
        "metasup_consecutive_failures",
        "Consecutive rolled-back changes; changes pause (evolution breaker) at metasup_max_failures.",
        value=block["consecutive_failures"],
    )
    yield GaugeMetricFamily("metasup_max_failures", "Configured max_failures.", value=block["max_failures"])
    synced = block.get("current_commit") is not None and block.get("current_commit") == block.get("last_good_commit")
    yield GaugeMetricFamily(
        "metasup_workspace_at_last_good", "1 when the workspace commit is the last good commit.", value=int(synced)
    )


def _server_metrics(servers: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    state = GaugeMetricFamily("metasup_child_state", "1 for the state each child is in, 0 for the others.",
                              labels=["server", "state"])
    up = GaugeMetricFamily("metasup_child_up", "1 when the child is running (handshake done).", labels=["server"])
    restarts = CounterMetricFamily("metasup_child_restarts", "Starts that followed a failure.", labels=["server"])
    uptime = GaugeMetricFamily("metasup_child_uptime_seconds", "Seconds since the current incarnation started.",
                               labels=["server"])
    rss = GaugeMetricFamily("metasup_child_memory_rss_bytes", "Resident memory of the child's process tree.",
                            labels=["server"])
    cpu = GaugeMetricFamily("metasup_child_cpu_percent", "CPU use of the child's process tree (100 = one core).",
                            labels=["server"])
    probe = GaugeMetricFamily("metasup_child_probe_seconds", "Duration of the last MCP liveness probe.",
                              labels=["server"])
    tools = GaugeMetricFamily("metasup_child_tools", "Tools the child lists.", labels=["server"])
    circuit = GaugeMetricFamily("metasup_child_circuit_open", "1 while a remote server's circuit is open "
                                "(calls fail at once); remote servers only.", labels=["server"])
    for name, server in servers.items():
        for value in CHILD_STATES:
            state.add_metric([name, value], int(server["state"] == value))
        up.add_metric([name], int(server["state"] == ChildState.RUNNING.value))
        restarts.add_metric([name], server["restarts"])
        tools.add_metric([name], server["tools"])
        health = server.get("health") or {}
        _maybe(uptime, name, server.get("uptime_s"))
        _maybe(rss, name, health.get("rss_mb"), scale=1024 * 1024)
        _maybe(cpu, name, health.get("cpu_percent"))
        _maybe(probe, name, health.get("probe_ms"), scale=0.001)
        if server.get("circuit"):
            circuit.add_metric([name], int(server["circuit"]["state"] == "open"))
    yield from (state, up, restarts, uptime, rss, cpu, probe, tools, circuit)


def _maybe(family: GaugeMetricFamily, server: str, value: float | None, scale: float = 1.0) -> None:
    """Add a sample only when the figure has been measured: absent beats a made-up zero."""
    if value is not None and math.isfinite(value):
        family.add_metric([server], value * scale)


def _evolution_metrics(evolution: dict[str, Any]) -> Iterator[Metric]:
    proposals = CounterMetricFamily("metasup_proposals", "Proposals decided, by verdict.", labels=["verdict"])
    for verdict in VERDICTS:
        proposals.add_metric([verdict], evolution.get(verdict) or 0)
    yield proposals
    rollbacks = CounterMetricFamily("metasup_rollbacks", "Rollbacks to the last good commit, by trigger.",
                                    labels=["trigger"])
    for trigger, count in sorted((evolution.get("rollbacks_by_trigger") or {}).items()):
        rollbacks.add_metric([str(trigger)], count)
    yield rollbacks
    yield GaugeMetricFamily("metasup_pending_approvals", "Proposals waiting for a human.",
                            value=evolution.get("pending_approval") or 0)
    if evolution.get("performance_metric") is not None:
        yield GaugeMetricFamily("metasup_benchmark_metric", "The benchmark's metric on the newest applied change.",
                                value=evolution["performance_metric"])


def _latency_metric(supervisor: Any, servers: list[str]) -> HistogramMetricFamily | None:
    accessor = getattr(getattr(supervisor, "gateway", None), "latency_histogram", None)
    if not callable(accessor):
        return None
    family = HistogramMetricFamily(
        "metasup_gateway_call_duration_seconds", "Duration of tool calls routed to each child.", labels=["server"]
    )
    for server in servers:
        try:
            figures = accessor(server)
        except Exception:  # a scrape must never fail because one figure could not be read
            logger.debug("gateway latency for %s unavailable", server, exc_info=True)
            continue
        if figures is not None:
            buckets, total, count = _unpack(figures)
            family.add_metric([server], _with_inf(buckets, count), total)
    return family if family.samples else None


def _unpack(figures: Any) -> tuple[Sequence[tuple[float, float]], float, float]:
    if hasattr(figures, "bounds") and hasattr(figures, "counts"):
        return list(zip(figures.bounds, figures.counts)), figures.sum, figures.count  # zip drops the +Inf count
    buckets, total, count = figures
    return buckets, total, count


def _with_inf(buckets: Sequence[tuple[float, float]], count: float) -> list[tuple[str, float]]:
    """Cumulative buckets as prometheus-client wants them: string bounds, ending in +Inf = count."""
    out = [(_bound(le), cumulative) for le, cumulative in buckets if not math.isinf(float(le))]
    out.append(("+Inf", count))
    return out


def _bound(le: float) -> str:
    return str(float(le))
