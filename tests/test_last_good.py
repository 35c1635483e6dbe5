"""One road to last good: probation after acceptance, falling back along the verified history when
last good itself cannot serve, the emergency stop when nothing can, a change in flight cut short
by an emergency stop, and a Python change that no `watch` covers."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.supervisor import SupervisorError
from tests.conftest import eventually
from tests.safety_support import SERVER_SOURCE, app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio

BROKEN = {"path": "server.py", "content": "raise SystemExit('broken at import')\n"}


def refusing_if(flag: Path, version: str) -> str:
    """Server code of `version` that will not start while `flag` exists (as if a dependency broke)."""
    return with_version(version, f"import pathlib, sys\nif pathlib.Path({str(flag)!r}).exists(): sys.exit('flag set')\n")


async def test_a_change_that_dies_after_min_runtime_but_within_stable_after_is_rolled_back(
    tmp_path, make_config, supervisor_factory
):
    config = app_config(make_config, tmp_path)
    delayed = with_version("2", "import os, threading\nthreading.Timer(2.0, lambda: os._exit(5)).start()\n")
    async with supervisor_factory(config) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        applied = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": delayed}]))
        assert applied.verdict == "applied"  # healthy for min_runtime (1 s)
        await eventually(lambda: sup.supervisor_block()["last_good_commit"] == initial, timeout=15)
        assert await served_version(sup) == "1"
        stored = sup.get_change(applied.id)
        assert stored.verdict == "rolled_back" and stored.trigger == "probation"
        assert any("probation" in reason for reason in stored.reasons)
        assert sup.consecutive_failures == 1  # it counts towards the evolution breaker


async def test_last_good_that_cannot_serve_again_falls_back_along_the_verified_history(
    tmp_path, make_config, supervisor_factory
):
    flag = tmp_path / "flag"
    config = app_config(make_config, tmp_path)
    async with supervisor_factory(config) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        v2 = await sup.propose_change(ChangeRequest("v2", changes=[{"path": "server.py", "content": refusing_if(flag, "2")}]))
        assert v2.verdict == "applied" and await served_version(sup) == "2"
        flag.write_text("v2 can no longer start\n")
        bad = await sup.propose_change(ChangeRequest("v3", changes=[BROKEN]))
        assert bad.verdict == "rolled_back"
        assert sup.mode == "normal"
        assert sup.supervisor_block()["last_good_commit"] == initial
        assert git(sup.settings.workspace, "rev-parse", "HEAD") == initial
        assert await served_version(sup) == "1"
        assert any(e["event"] == "rollback" and e["data"].get("source") == "recovery" for e in sup.audit_tail(30))


async def test_when_last_good_cannot_be_brought_back_to_health_it_is_an_emergency_stop_and_the_result_says_so(
    tmp_path, make_config, supervisor_factory
):
    flag = tmp_path / "flag"
    config = app_config(make_config, tmp_path)
    (tmp_path / "template" / "server.py").write_text(refusing_if(flag, "1"))
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "1"
        flag.write_text("nothing can start\n")
        result = await sup.propose_change(ChangeRequest("v2", changes=[BROKEN]))
        assert result.verdict == "rolled_back"
        assert any("EMERGENCY STOP" in reason and "`recover`" in reason for reason in result.reasons)
        assert sup.mode == "emergency" and "cannot be brought back to health" in sup.emergency_reason
        await eventually(lambda: all(c.at_rest for c in sup.manager), timeout=10)
        with pytest.raises(SupervisorError, match="emergency"):
            await sup.start_server("app")
        flag.unlink()
        await sup.recover()
        assert await served_version(sup) == "1"


async def test_a_change_in_flight_when_emergency_stop_arrives_is_rolled_back_never_accepted(
    tmp_path, make_config, supervisor_factory
):
    slow_check = {"name": "slow", "run": ["python", "-c", "import time; time.sleep(30)"], "timeout": "60s"}
    config = app_config(make_config, tmp_path, checks=[slow_check])
    async with supervisor_factory(config) as sup, anyio.create_task_group() as tg:
        last_good = sup.supervisor_block()["last_good_commit"]
        results = []

        async def propose() -> None:
            change = {"path": "server.py", "content": with_version("2")}
            results.append(await sup.propose_change(ChangeRequest("v2", changes=[change])))

        tg.start_soon(propose)
        await eventually(lambda: any(p.status == "verifying" for p in sup.changes.list()), timeout=10)
        with anyio.fail_after(10):
            await sup.emergency_stop("operator pulled the plug")
        await eventually(lambda: results, timeout=5)
        (result,) = results
        assert result.verdict == "rolled_back"
        assert any("cut short by emergency stop" in reason for reason in result.reasons)
        workspace = sup.settings.workspace
        assert git(workspace, "rev-parse", "HEAD") == last_good == sup.supervisor_block()["last_good_commit"]
        assert git(workspace, "show", f"{result.rejected_ref or 'refs/metasup/rejected/' + result.id}:server.py") == (
            with_version("2").strip()
        )
        assert all(c.at_rest for c in sup.manager)


async def test_a_python_change_no_watch_covers_restarts_the_python_servers_and_is_verified(
    tmp_path, make_config, supervisor_factory
):
    config = app_config(make_config, tmp_path)
    template = tmp_path / "template"
    (template / "helper.py").write_text("READY = True\n")
    (template / "server.py").write_text("import helper\n" + SERVER_SOURCE)
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "1"
        pid = sup.child("app").pid
        change = {"path": "helper.py", "content": "raise SystemExit('helper broke')\n"}
        result = await sup.propose_change(ChangeRequest("helper", changes=[change]))
        assert result.verdict == "rolled_back" and result.restarted == ["app"]
        assert result.trigger == "early_exit" and "helper broke" in result.reasons[0]
        assert await served_version(sup) == "1"
        assert sup.child("app").pid != pid and sup.child("app").state is ChildState.RUNNING
