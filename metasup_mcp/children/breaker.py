"""A circuit breaker for one remote server: closed while it answers, open after repeated failures.

Pure and clock-injected. `record_failure()` after each failed connection or lost session,
`record_success()` after a completed handshake. While open, the gateway fails calls at once
instead of waiting `call_wait` for a server that is known to be unreachable; the child's own
reconnect attempts (with the restart backoff) are the half-open probes that close it again.
The pattern: M. Nygard, *Release It!* (2007), "Circuit Breaker".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

CircuitState = Literal["closed", "open"]


@dataclass
class CircuitBreaker:
    threshold: int  # consecutive failures that open the circuit (≥ 1)
    clock: Callable[[], float]
    failures: int = 0
    opened_at: float | None = None
    opened: int = 0  # how many times it has opened
    last_failure: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {self.threshold}")

    @property
    def state(self) -> CircuitState:
        return "open" if self.opened_at is not None else "closed"

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def record_failure(self, reason: str) -> bool:
        """Count a failure; True when this one opened the circuit."""
        self.failures += 1
        self.last_failure = reason
        if self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = self.clock()
            self.opened += 1
            return True
        return False

    def record_success(self) -> bool:
        """Reset the count; True when this closed an open circuit."""
        was_open = self.opened_at is not None
        self.failures, self.opened_at = 0, None
        return was_open

    def snapshot(self) -> dict[str, Any]:
        open_for = round(self.clock() - self.opened_at, 1) if self.opened_at is not None else None
        return {"state": self.state, "consecutive_failures": self.failures, "open_for_s": open_for,
                "times_opened": self.opened, "last_failure": self.last_failure}
