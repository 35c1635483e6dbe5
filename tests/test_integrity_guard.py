"""The integrity guard's check is cheap (a stat) where nothing changed, and still finds every change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metasup_mcp.safety import integrity
from metasup_mcp.safety.integrity import IntegrityGuard


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_file_hashed_as_sealed_is_trusted_by_its_stat_until_anything_rewrites_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_bytes(b"[core]\n")
    guard = IntegrityGuard([config])
    guard.seal()
    monkeypatch.setattr(integrity, "RACY_NS", -60_000_000_000)  # as if hashed long after it was written
    assert guard.check() is None and config in guard._digests._known
    hashed: list[Path] = []
    monkeypatch.setattr(integrity, "_fingerprint", lambda path, appended: hashed.append(path) or "x")
    assert guard.check() is None and hashed == [], "an unchanged stat is not hashed again"
    monkeypatch.undo()
    _rewrite_keeping_size_and_mtime(config, b"[c0re]\n")  # the ctime moves: no process can set it back
    found = guard.check()
    assert found is not None and "content changed" in str(found)


def test_a_file_changed_within_the_racy_window_is_hashed_every_time(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_bytes(b"[core]\n")
    guard = IntegrityGuard([config])
    guard.seal()
    assert guard.check() is None and config not in guard._digests._known, "written just now: its stat proves nothing"
    _rewrite_keeping_size_and_mtime(config, b"[c0re]\n")
    assert guard.check() is not None
