"""Pure parts: the evolution breaker's count, and the events timeline built from audit entries."""

from __future__ import annotations

from metasup_mcp import timeline
from metasup_mcp.evolution.breaker import EvolutionBreaker


def test_the_breaker_opens_at_max_failures_rolled_back_changes_and_names_recover() -> None:
    breaker = EvolutionBreaker(max_failures=3)
    assert breaker.change_failed("p-1", "early_exit") is None
    assert breaker.change_failed("p-2", "compile") is None
    reason = breaker.change_failed("p-3", "check:tests")
    assert reason is not None and "3 consecutive changes were rolled back" in reason and "p-3" in reason
    assert breaker.open and breaker.tripped_by == "p-3"
    assert breaker.change_failed("p-4", "compile") is None  # already open: reported once
    refusal = breaker.refusal()
    assert refusal is not None and "`recover`" in refusal and "keep serving last good" in refusal
    breaker.change_accepted()  # nothing is accepted while open; the count stays
    assert breaker.open
    breaker.close()
    assert not breaker.open and breaker.consecutive_failures == 0 and breaker.refusal() is None


def test_an_accepted_change_resets_the_breakers_count() -> None:
    breaker = EvolutionBreaker(max_failures=2)
    breaker.change_failed("p-1", "compile")
    breaker.change_accepted()
    assert breaker.change_failed("p-2", "compile") is None and not breaker.open


def test_the_timeline_reads_rollbacks_of_every_source_from_audit_entries() -> None:
    entries = [
        {"ts": "2026-11-30T10:00:00+00:00", "event": "proposal", "data": {"id": "p-1"}},
        {"ts": "2026-11-30T10:00:01+00:00", "event": "rollback",
         "data": {"id": "p-1", "trigger": "early_exit", "bad_commit": "b" * 40, "to": "a" * 40,
                  "evidence": "app: exited with code 1\n--- stderr tail ---\nboom"}},
        {"ts": "2026-11-30T10:00:02+00:00", "event": "rollback",
         "data": {"source": "operator", "trigger": "manual", "reason": "undo", "bad_commit": "c" * 40, "to": "a" * 40}},
        {"ts": "2026-11-30T10:00:03+00:00", "event": "breaker_open", "data": {"reason": "3 consecutive"}},
        {"ts": "2026-11-30T10:00:04+00:00", "event": "revert", "data": {"paths": ["servers.yaml"]}},
    ]
    events = timeline.from_audit(entries)
    assert [e["event"] for e in events] == ["rollback", "rollback", "breaker_open", "protected_revert"]
    proposal, manual = events[0], events[1]
    assert (proposal["source"], proposal["from"], proposal["reason"]) == ("proposal", "b" * 40, "app: exited with code 1")
    assert (manual["source"], manual["trigger"], manual["reason"]) == ("operator", "manual", "undo")
    assert events[3]["detail"] == "servers.yaml"
    assert events[0]["at"] < events[1]["at"]


def test_the_timeline_keeps_only_transient_kinds_from_memory_newest_first() -> None:
    durable = [{"at": 10.0, "event": "rollback"}]
    memory = [{"at": 5.0, "event": "failed_start", "server": "a"}, {"at": 20.0, "event": "rollback"},
              {"at": 30.0, "event": "health_restart", "server": "a"}]
    merged = timeline.merge(durable, memory, limit=10)
    assert [(e["at"], e["event"]) for e in merged] == [(30.0, "health_restart"), (10.0, "rollback"), (5.0, "failed_start")]
    assert timeline.merge(durable, memory, limit=10, kind="rollback") == [{"at": 10.0, "event": "rollback"}]
