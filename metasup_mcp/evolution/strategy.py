"""The strategy selector and the per-strategy change limits (the seed's Evolution Coordinator).

The seed's rules, thresholds from `strategy:` in servers.yaml:
more than `metamorphic_after_failures` consecutive failed changes → `metamorphic` (small, safe
steps); a performance gain under `min_gain` → `exploratory`; otherwise `hybrid`; `training`
whenever `strategy.training` is set. Each strategy bounds how much one change may touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metasup_mcp.config import StrategyLimits, StrategySettings, default_strategy_limits
from metasup_mcp.evolution.performance import Performance

StrategyName = Literal["metamorphic", "exploratory", "hybrid", "training"]


@dataclass(frozen=True)
class StrategyChoice:
    name: StrategyName
    reason: str
    limits: StrategyLimits

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "reason": self.reason, "limits": self.limits.model_dump()}


def select_strategy(settings: StrategySettings, performance: Performance) -> StrategyChoice:
    """The current strategy and why, from the performance tracker's figures."""
    failures = performance.consecutive_failures
    if settings.training:
        name, reason = "training", "strategy.training is set"
    elif failures > settings.metamorphic_after_failures:
        name = "metamorphic"
        reason = f"{failures} consecutive failed changes (more than {settings.metamorphic_after_failures})"
    elif performance.gain is not None and performance.gain < settings.min_gain:
        name = "exploratory"
        reason = f"performance gain {performance.gain:+.3f} ({performance.gain_source}) is under {settings.min_gain}"
    else:
        name = "hybrid"
        reason = (
            "no performance history yet" if performance.gain is None
            else f"performance gain {performance.gain:+.3f} ({performance.gain_source}) is at least {settings.min_gain}"
        )
    return StrategyChoice(name, reason, limits_for(settings, name))  # type: ignore[arg-type]


def limits_for(settings: StrategySettings, name: StrategyName) -> StrategyLimits:
    """The configured limits of `name`, or the built-in ones when the config names others only."""
    return settings.limits.get(name) or default_strategy_limits()[name]


def over_limits(limits: StrategyLimits, strategy: str, files: int, lines: int) -> str | None:
    """Why a change of `files` files and `lines` changed lines exceeds `limits`; None if it does not."""
    if limits.max_files is not None and files > limits.max_files:
        return f"strategy {strategy} allows at most {limits.max_files} files per change; this one touches {files}"
    if limits.max_lines is not None and lines > limits.max_lines:
        return f"strategy {strategy} allows at most {limits.max_lines} changed lines per change; this one changes {lines}"
    return None
