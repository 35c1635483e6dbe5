"""Emergency after max_failures (with its rollback), restore from a backup bundle when git itself
fails, and `metasup-mcp audit verify` over the trail all of it leaves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import anyio
import pytest

from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.supervisor import SupervisorError
from tests.conftest import fixture_server
from tests.safety_support import app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio


async def test_max_failures_stops_everything_and_rolls_back_to_last_good(tmp_path, make_config, supervisor_factory):
    crashing = fixture_server("broken", "--crash-on-start")
    # min_runtime 5s: app's first `stable` (which resets the failure count) comes after broken's 3 failures.
    config = app_config(make_config, tmp_path, extra_servers=[crashing], max_failures=3, min_runtime="5s")
    async with supervisor_factory(config) as sup:
        workspace = sup.settings.workspace
        (workspace / "scratch.txt").write_text("unsaved\n")
        with anyio.fail_after(20):
            while not (sup.mode == "emergency" and any(e["event"] == "emergency_done" for e in sup.events)):
                await anyio.sleep(0.1)
        assert all(child.at_rest for child in sup.manager)
        assert git(workspace, "status", "--porcelain") == "?? scratch.txt"
        assert (workspace / "scratch.txt").read_text() == "unsaved\n", "untracked work is never swept into a candidate"
        assert git(workspace, "rev-parse", "HEAD") == sup.supervisor_block()["last_good_commit"]
        with pytest.raises(SupervisorError, match="emergency"):
            await sup.start_server("app")
        refused = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": with_version("2")}]))
        assert refused.verdict == "rejected" and "recover" in refused.reasons[0]
        await sup.recover()
        assert sup.mode == "normal"
        assert await served_version(sup) == "1"


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

