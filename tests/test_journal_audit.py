"""The transaction journal and the hash-chained audit log, across re-opening and damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from metasup_mcp.safety import audit as audit_mod
from metasup_mcp.safety.audit import GENESIS, AuditError, AuditLog, entry_hash, load_key, verify_audit_log
from metasup_mcp.safety.journal import CorruptJournal, Journal, JournalError, JournalRecord

# --- journal ---------------------------------------------------------------------------


def test_a_begun_transaction_is_pending_with_its_steps_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.json"
    journal = Journal(path)
    assert journal.pending() is None
    journal.begin("p-1", title="add cache", base="abc123")
    journal.step("snapshot", ref="refs/metasup/snapshots/x-1")
    journal.step("applied", files=["a.py"], where=tmp_path)  # a Path is stored as text

    record = Journal(path).pending()  # a new process after a crash
    assert isinstance(record, JournalRecord)
    assert (record.txn_id, record.data) == ("p-1", {"title": "add cache", "base": "abc123"})
    assert [s.name for s in record.steps] == ["snapshot", "applied"]
    assert record.last_step is not None and record.last_step.data == {"files": ["a.py"], "where": str(tmp_path)}
    assert record.steps[0].at <= record.steps[1].at


def test_finishing_clears_the_record_and_may_be_repeated(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    journal.begin("p-2")
    journal.finish("accepted")
    assert journal.pending() is None and not (tmp_path / "journal.json").exists()
    journal.finish("accepted")  # recovery may finish twice
    journal.begin("p-3")
    assert isinstance(journal.pending(), JournalRecord)


def test_steps_need_a_transaction_and_transactions_do_not_overlap(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    with pytest.raises(JournalError, match="begin"):
        journal.step("applied")
    journal.begin("p-4")
    with pytest.raises(JournalError, match="p-4"):
        journal.begin("p-5")


def test_every_write_leaves_either_the_old_or_the_new_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(tmp_path / "journal.json")
    journal.begin("p-6")
    journal.step("snapshot")

    def crash(*_: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        journal.step("applied")
    monkeypatch.undo()
    record = journal.pending()
    assert isinstance(record, JournalRecord) and [s.name for s in record.steps] == ["snapshot"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]  # no temp file left


@pytest.mark.parametrize(
    "garbage",
    [b"{\"txn_id\": \"p-7\", \"ste", b"\xff\xfe", b"[1, 2]", b'{"version": 1, "txn_id": 3, "data": {}, "steps": []}'],
    ids=["truncated", "not utf-8", "wrong type", "wrong field type"],
)
def test_a_corrupt_journal_is_reported_and_moved_aside_not_raised(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "journal.json"
    path.write_bytes(garbage)
    journal = Journal(path)
    result = journal.pending()
    assert isinstance(result, CorruptJournal) and result.problem
    assert result.moved_to is not None and result.moved_to.read_bytes() == garbage
    assert journal.pending() is None  # start-up goes on
    journal.begin("p-8")
    assert isinstance(journal.pending(), JournalRecord)


# --- audit log -------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_the_chain_continues_across_reopening_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    first = log.append("proposal.received", id="p-1")
    log.append("proposal.applied", id="p-1", commit="abc")
    reopened = AuditLog(path)
    third = reopened.append("proposal.accepted", id="p-1", note="ünïcode ok")
    assert first["prev"] == GENESIS and first["seq"] == 1
    assert third["seq"] == 3 and third["prev"] == json.loads(_lines(path)[1])["hash"]
    assert [json.loads(line)["event"] for line in _lines(path)] == ["proposal.received", "proposal.applied", "proposal.accepted"]
    assert verify_audit_log(path) == audit_mod.AuditVerdict(True, 3, None, None)


def test_an_entry_hash_covers_everything_but_itself(tmp_path: Path) -> None:
    entry = AuditLog(tmp_path / "a.jsonl").append("x", n=1, where=tmp_path)
    key = load_key(tmp_path / "a.jsonl")
    assert entry["data"] == {"n": 1, "where": str(tmp_path)}
    assert entry["hash"] == entry_hash(entry, key) == entry_hash({k: v for k, v in entry.items() if k != "hash"}, key)


def _fill(path: Path, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append("tick", i=i)


def test_verify_names_a_tampered_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    lines = _lines(path)
    lines[2] = lines[2].replace('"i":2', '"i":99')
    path.write_text("".join(lines), encoding="utf-8")
    verdict = verify_audit_log(path)
    assert (verdict.ok, verdict.first_bad_line, verdict.entries) == (False, 3, 2)
    assert verdict.problem is not None and "line 3" in verdict.problem and "edited" in verdict.problem


def test_verify_catches_an_edit_whose_hash_was_recomputed_at_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 4)
    lines = _lines(path)
    forged = json.loads(lines[1])
    forged["data"]["i"] = 42
    forged["hash"] = entry_hash(forged, load_key(path))  # even with the key
    lines[1] = json.dumps(forged) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    verdict = verify_audit_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 3)
    assert verdict.problem is not None and "prev" in verdict.problem


def _rechain_without_the_key(path: Path, keep: int, edit: dict[int, int]) -> None:
    """What a child that can write the log does: re-compute every hash it can, and the head too."""
    prev, out = GENESIS, []
    for raw in _lines(path)[:keep]:
        entry = json.loads(raw)
        if entry["seq"] in edit:
            entry["data"]["i"] = edit[entry["seq"]]
        entry["prev"] = prev
        entry["hash"] = prev = entry_hash(entry)
        out.append(json.dumps(entry) + "\n")
    path.write_text("".join(out), encoding="utf-8")


def test_a_log_rewritten_with_a_recomputed_chain_fails_verify_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 4)
    _rechain_without_the_key(path, keep=4, edit={2: 42})
    verdict = verify_audit_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 1)
    assert "key" in (verdict.problem or "")


def test_cutting_off_the_newest_entries_fails_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    path.write_text("".join(_lines(path)[:3]), encoding="utf-8")
    verdict = verify_audit_log(path)
    assert not verdict.ok and verdict.entries == 3
    assert "entry 5 was written" in (verdict.problem or "") and "cut off" in (verdict.problem or "")


def test_an_emptied_log_or_a_lost_head_or_key_fails_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 2)
    head = path.with_name("audit.jsonl.head")
    saved = head.read_text()
    head.unlink()
    assert "head record" in (verify_audit_log(path).problem or "")
    head.write_text(saved)
    path.write_bytes(b"")
    assert "cut off" in (verify_audit_log(path).problem or "")


def test_the_key_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 1)
    key = path.with_name("audit.jsonl.key")
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    key.unlink()
    assert "key" in (verify_audit_log(path).problem or "")


def test_verify_names_the_gap_left_by_a_deleted_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    lines = _lines(path)
    del lines[1]
    path.write_text("".join(lines), encoding="utf-8")
    verdict = verify_audit_log(path)
    assert (verdict.ok, verdict.first_bad_line, verdict.entries) == (False, 2, 1)
    assert verdict.problem is not None and "removed" in verdict.problem


def test_verify_reports_a_missing_log_and_accepts_an_empty_one(tmp_path: Path) -> None:
    assert not verify_audit_log(tmp_path / "none.jsonl").ok
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert verify_audit_log(tmp_path / "empty.jsonl") == audit_mod.AuditVerdict(True, 0, None, None)


def test_a_torn_last_line_is_dropped_and_its_loss_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"seq":3,"ts":"2024-')  # the crash came mid-write
    assert verify_audit_log(path).first_bad_line == 3
    entry = AuditLog(path).append("after.restart")
    events = [json.loads(line)["event"] for line in _lines(path)]
    assert events == ["tick", "tick", "audit.torn_tail_dropped", "after.restart"] and entry["seq"] == 4
    assert verify_audit_log(path).ok


def test_appending_after_a_garbage_last_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 1)
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(AuditError, match="metasup-mcp audit verify"):
        AuditLog(path).append("x")


def test_resuming_the_chain_reads_only_the_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 2000)
    size = path.stat().st_size
    read: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting_pread)
    entry = AuditLog(path).append("tick", i=2000)
    assert entry["seq"] == 2001 and sum(read) < size // 10
    monkeypatch.undo()
    assert verify_audit_log(path) == audit_mod.AuditVerdict(True, 2001, None, None)


def test_tail_returns_the_newest_entries_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    assert AuditLog(path).tail(3) == []
    _fill(path, 500)
    assert [e["data"]["i"] for e in AuditLog(path).tail(3)] == [497, 498, 499]
    assert len(AuditLog(path).tail(1000)) == 500
