"""The evolution breaker (max_failures rolled-back changes pause changes, servers untouched), restore from a backup bundle when git itself
fails, and `metasup-mcp audit verify` over the trail all of it leaves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import anyio
import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution.pipeline import ChangeRequest
from tests.conftest import fixture_server
from tests.safety_support import app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio


async def test_max_failures_rolled_back_changes_pause_changes_while_every_server_keeps_serving_last_good(
    tmp_path, make_config, supervisor_factory
):
    innocent = fixture_server("other", watch=["other/"])
    config = app_config(make_config, tmp_path, extra_servers=[innocent], max_failures=3)
    broken = {"path": "server.py", "content": "raise SystemExit('broken at import')\n"}
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "1"
        other = sup.child("other")
        await other.wait_for(lambda c: c.state is ChildState.RUNNING, 10)
        pid = other.pid
        workspace = sup.settings.workspace
        (workspace / "scratch.txt").write_text("unsaved\n")
        results = [await sup.propose_change(ChangeRequest(f"bad {n}", changes=[broken])) for n in range(3)]
        assert [r.verdict for r in results] == ["rolled_back"] * 3
        assert not any("BREAKER" in reason for r in results[:2] for reason in r.reasons)
        assert any("EVOLUTION BREAKER OPEN" in reason and "recover" in reason for reason in results[2].reasons)
        assert sup.supervisor_block()["mode"] == "changes_paused"
        # Nobody was stopped: the servers keep serving last good.
        assert other.state is ChildState.RUNNING and other.pid == pid
        assert await served_version(sup) == "1"
        assert git(workspace, "rev-parse", "HEAD") == sup.supervisor_block()["last_good_commit"]
        assert (workspace / "scratch.txt").read_text() == "unsaved\n", "untracked work is never touched"
        await sup.restart_server("other")  # servers stay the operator's to control
        refused = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": with_version("2")}]))
        assert refused.verdict == "rejected" and "`recover`" in refused.reasons[0] and "breaker" in refused.reasons[0]
        assert any(e["event"] == "breaker_open" for e in sup.audit_tail(50))
        await sup.recover()
        assert sup.mode == "normal" and sup.consecutive_failures == 0
        applied = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": with_version("2")}]))
        assert applied.verdict == "applied"
        assert await served_version(sup) == "2"


async def test_an_accepted_change_resets_the_count_of_rolled_back_ones(tmp_path, make_config, supervisor_factory):
    config = app_config(make_config, tmp_path, max_failures=2)
    broken = {"path": "server.py", "content": "raise SystemExit(1)\n"}
    async with supervisor_factory(config) as sup:
        assert (await sup.propose_change(ChangeRequest("bad", changes=[broken]))).verdict == "rolled_back"
        good = {"path": "server.py", "content": with_version("2")}
        assert (await sup.propose_change(ChangeRequest("good", changes=[good]))).verdict == "applied"
        assert sup.consecutive_failures == 0
        assert (await sup.propose_change(ChangeRequest("bad again", changes=[broken]))).verdict == "rolled_back"
        assert sup.mode == "normal" and sup.consecutive_failures == 1


async def test_a_workspace_git_can_no_longer_read_is_restored_from_the_newest_bundle(tmp_path, make_config, supervisor_factory):
    config = app_config(make_config, tmp_path)
    async with supervisor_factory(config) as sup:
        applied = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": with_version("2")}]))
        assert applied.verdict == "applied"
        await sup.changes.backup_now()
    workspace = tmp_path / "workspace"
    shutil.rmtree(workspace / ".git" / "objects")
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "2"
        assert sup.supervisor_block()["last_good_commit"] == applied.commit
        assert any(e["event"] == "restored_from_backup" for e in sup.events)


async def test_audit_verify_passes_on_the_trail_and_names_a_tampered_line(tmp_path, make_config, supervisor_factory):
    config = app_config(make_config, tmp_path)
    async with supervisor_factory(config) as sup:
        await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": with_version("2")}]))
        await sup.propose_change(ChangeRequest("bad", changes=[{"path": "server.py", "content": "raise SystemExit(1)\n"}]))
    verify = [sys.executable, "-m", "metasup_mcp.cli", "audit", "verify", "--config", str(config)]
    ok = subprocess.run(verify, capture_output=True, text=True)
    assert ok.returncode == 0 and "hash chain intact" in ok.stdout, ok.stderr

    log = tmp_path / "state" / "audit.jsonl"
    lines = log.read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert {"proposal", "apply", "accepted", "rollback"} <= set(events)
    tampered = json.loads(lines[2])
    tampered["data"]["tampered"] = True
    lines[2] = json.dumps(tampered)
    log.write_text("\n".join(lines) + "\n")
    bad = subprocess.run(verify, capture_output=True, text=True)
    assert bad.returncode == 1 and "line 3" in bad.stderr, bad.stderr
