"""The evolution breaker: `max_failures` consecutive rolled-back changes pause changes.

Pure bookkeeping. A change that is rolled back (a proposal, an on-disk candidate, or a commit
failing its probation) counts; an accepted one resets the count. Once open, changes are
refused until an operator calls `recover`; the servers keep serving last good meanwhile.
This is not the emergency stop: that is kept for when last good itself cannot be brought
back to health, or git is broken (see `Supervisor`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EvolutionBreaker"]


@dataclass
class EvolutionBreaker:
    max_failures: int
    consecutive_failures: int = 0
    reason: str | None = None  # set while open
    tripped_by: str | None = None  # the change whose rollback opened it

    @property
    def open(self) -> bool:
        return self.reason is not None

    def change_failed(self, change_id: str | None, trigger: str | None) -> str | None:
        """Count a rolled-back change; return the reason when this one opens the breaker."""
        self.consecutive_failures += 1
        if self.open or self.consecutive_failures < self.max_failures:
            return None
        last = f"; the last, {change_id}, failed {trigger}" if change_id else ""
        self.reason = (
            f"{self.consecutive_failures} consecutive changes were rolled back (max_failures "
            f"{self.max_failures}){last}"
        )
        self.tripped_by = change_id
        return self.reason

    def change_accepted(self) -> None:
        if not self.open:
            self.consecutive_failures = 0

    def close(self) -> None:
        self.consecutive_failures = 0
        self.reason = self.tripped_by = None

    def refusal(self) -> str | None:
        if not self.open:
            return None
        return (
            f"changes are paused by the evolution breaker: {self.reason}. The servers keep serving last "
            "good. Find out why they failed (get_change, server_logs), then call `recover` to allow changes again"
        )
