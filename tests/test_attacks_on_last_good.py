"""Hostile writers against the one road to last good: what the restarted servers ran must be
exactly the commit that becomes last good."""

from __future__ import annotations

import anyio
import pytest

from metasup_mcp.evolution.pipeline import ChangeRequest
from tests.conftest import eventually
from tests.safety_support import app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio

BROKEN = "raise SystemExit('broken at import')\n"
SLOW_CHECK = {"name": "slow", "run": ["python", "-c", "import time; time.sleep(1.5)"], "timeout": "30s"}


async def test_code_swapped_on_disk_before_the_restart_never_makes_the_unrun_commit_last_good(
    tmp_path, make_config, supervisor_factory
):
    config = app_config(make_config, tmp_path, checks=[SLOW_CHECK])
    async with supervisor_factory(config) as sup, anyio.create_task_group() as tg:
        initial = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        results = []

        async def propose() -> None:
            change = {"path": "server.py", "content": BROKEN}
            results.append(await sup.propose_change(ChangeRequest("broken", changes=[change])))

        tg.start_soon(propose)
        await eventually(lambda: any(p.status == "verifying" for p in sup.changes.list()), timeout=10)
        (workspace / "server.py").write_text(with_version("swapped"))  # a child hides the broken commit
        await eventually(lambda: results, timeout=20)
        (result,) = results
        assert result.verdict == "rolled_back" and result.trigger == "code_swapped", (result.verdict, result.trigger, result.reasons)
        assert sup.supervisor_block()["last_good_commit"] == initial == git(workspace, "rev-parse", "HEAD")
        assert await served_version(sup) == "1"


async def test_code_rewritten_while_on_trial_then_restored_is_rolled_back(tmp_path, make_config, supervisor_factory):
    config = app_config(make_config, tmp_path, min_runtime="2s")
    v2 = with_version("2")
    async with supervisor_factory(config) as sup, anyio.create_task_group() as tg:
        initial = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        results = []

        async def propose() -> None:
            results.append(await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": v2}])))

        tg.start_soon(propose)
        await eventually(lambda: any("restarting" in (p.model_dump()["stages"][-1].get("detail") or "") or p.restarted
                                     for p in sup.changes.list()), timeout=10)
        await anyio.sleep(0.3)  # the restarted server has loaded the code: now swap and restore it
        (workspace / "server.py").write_text(with_version("other"))
        (workspace / "server.py").write_text(v2)
        await eventually(lambda: results, timeout=20)
        (result,) = results
        assert result.verdict == "rolled_back" and result.trigger == "code_swapped", (result.verdict, result.trigger, result.reasons)
        assert sup.supervisor_block()["last_good_commit"] == initial


async def test_a_proposal_racing_an_on_disk_trial_never_carries_the_unjudged_candidate_into_last_good(
    tmp_path, make_config, supervisor_factory
):
    other = {"name": "other", "command": "python", "args": ["-u", "other.py"], "watch": ["other.py"]}
    config = app_config(make_config, tmp_path, extra_servers=[other], min_runtime="3s")
    (tmp_path / "template" / "other.py").write_text(with_version("1"))
    crashing = with_version("disk", "import os, threading\nthreading.Timer(1.0, lambda: os._exit(5)).start()\n")
    async with supervisor_factory(config) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(crashing)
        await sup.restart_server("app")  # on trial: it will die after 1 s, within min_runtime
        assert sup.changes.guard is not None and sup.changes.guard.trial is not None
        change = {"path": "other.py", "content": with_version("2")}
        result = await sup.propose_change(ChangeRequest("other v2", changes=[change]))
        assert result.verdict == "applied" and result.restarted == ["other"]
        last_good = sup.supervisor_block()["last_good_commit"]
        assert "VERSION = \"disk\"" not in git(workspace, "show", f"{last_good}:server.py"), "carried in unjudged"
        assert git(workspace, "show", f"{last_good}:other.py") == with_version("2").strip()
        assert [e["data"]["trigger"] for e in sup.audit_tail(100) if e["data"].get("source") == "on-disk"] == ["early_exit"]
        assert initial != last_good


async def test_an_on_disk_trial_whose_server_was_stopped_is_withdrawn_not_carried_by_the_next_change(
    tmp_path, make_config, supervisor_factory
):
    other = {"name": "other", "command": "python", "args": ["-u", "other.py"], "watch": ["other.py"]}
    config = app_config(make_config, tmp_path, extra_servers=[other], min_runtime="3s")
    (tmp_path / "template" / "other.py").write_text(with_version("1"))
    async with supervisor_factory(config) as sup:
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(with_version("unjudged"))
        await sup.restart_server("app")
        await sup.stop_server("app")  # stopped before its trial could judge the edit
        result = await sup.propose_change(ChangeRequest("other v2", changes=[{"path": "other.py", "content": with_version("2")}]))
        assert result.verdict == "applied"
        last_good = sup.supervisor_block()["last_good_commit"]
        assert "unjudged" not in git(workspace, "show", f"{last_good}:server.py"), "carried in unjudged"
        withdrawn = [e for e in sup.audit_tail(100) if e["event"] == "rollback" and e["data"].get("source") == "on-disk"]
        assert [e["data"]["trigger"] for e in withdrawn] == ["interrupted"]
        assert "unjudged" in git(workspace, "show", f"{withdrawn[0]['data']['saved_ref']}:server.py")  # nothing lost
        await sup.start_server("app")
        assert await served_version(sup) == "1"


async def test_an_emergency_stop_during_an_on_disk_trial_puts_the_workspace_on_last_good_and_keeps_the_edit(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(app_config(make_config, tmp_path, min_runtime="3s")) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(with_version("unjudged"))
        await sup.restart_server("app")
        assert sup.changes.guard is not None and sup.changes.guard.trial is not None
        await sup.emergency_stop("operator pulled the plug")
        assert all(c.at_rest for c in sup.manager)
        assert git(workspace, "rev-parse", "HEAD") == initial == sup.supervisor_block()["last_good_commit"]
        assert "unjudged" not in (workspace / "server.py").read_text()
        saved = [e["data"]["saved_ref"] for e in sup.audit_tail(100) if e["event"] == "rollback" and e["data"].get("saved_ref")]
        assert any("unjudged" in git(workspace, "show", f"{ref}:server.py", check=False) for ref in saved)
        await sup.recover()
        assert await served_version(sup) == "1"
        assert not [e for e in sup.audit_tail(100) if e["event"] == "candidate_accepted"]


async def test_recovery_never_falls_back_to_a_commit_that_failed_its_probation(tmp_path, make_config, supervisor_factory):
    flag = tmp_path / "flag"
    config = app_config(make_config, tmp_path)
    refusing = with_version("1", f"import pathlib, sys\nif pathlib.Path({str(flag)!r}).exists(): sys.exit('flag set')\n")
    (tmp_path / "template" / "server.py").write_text(refusing)
    delayed = with_version("2", "import os, threading\nthreading.Timer(2.0, lambda: os._exit(5)).start()\n")
    async with supervisor_factory(config) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        failed = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": delayed}]))
        assert failed.verdict == "applied"
        await eventually(lambda: sup.get_change(failed.id).verdict == "rolled_back", timeout=15)
        await eventually(lambda: sup.supervisor_block()["probation"] is None and sup.child("app").connection, timeout=10)
        assert sup.supervisor_block()["last_good_commit"] == initial
        flag.write_text("last good can no longer start\n")  # something outside git broke it
        result = await sup.propose_change(ChangeRequest("v3", changes=[{"path": "server.py", "content": BROKEN}]))
        assert result.verdict == "rolled_back", result.reasons
        assert sup.supervisor_block()["last_good_commit"] != failed.commit, "a commit that failed probation is last good"
        assert sup.mode == "emergency" and any("EMERGENCY STOP" in r for r in result.reasons)


async def test_a_server_starting_while_another_candidate_is_on_trial_never_runs_its_own_unscreened_edits(
    tmp_path, make_config, supervisor_factory
):
    other = {"name": "other", "command": "python", "args": ["-u", "other.py"], "watch": ["other.py"]}
    config = app_config(make_config, tmp_path, extra_servers=[other], min_runtime="3s")
    (tmp_path / "template" / "other.py").write_text(with_version("1"))
    async with supervisor_factory(config) as sup:
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(with_version("disk"))
        await sup.restart_server("app")
        assert sup.changes.guard is not None and sup.changes.guard.trial is not None
        (workspace / "other.py").write_text(with_version("unscreened"))
        await sup.restart_server("other")
        child = sup.child("other")
        assert child.connection is not None
        served = (await child.connection.session.call_tool("version", {})).content[0].text
        assert served == "1", "other runs edits nobody screened"
        [refused] = [e for e in sup.audit_tail(100) if e["event"] == "candidate_refused"]
        assert refused["data"]["paths"] == ["other.py"]
        assert "unscreened" in git(workspace, "show", f"{refused['data']['saved_ref']}:other.py")
