"""One road to last good for edits made on disk: an accepted candidate is on probation like an
accepted proposal, and while the evolution breaker is open no candidate becomes last good."""

from __future__ import annotations

import pytest

from metasup_mcp.evolution.pipeline import ChangeRequest
from tests.conftest import eventually
from tests.safety_support import app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio

DELAYED_CRASH = with_version("disk", "import os, threading\nthreading.Timer(2.0, lambda: os._exit(5)).start()\n")


def audited(sup, event: str, **match) -> list[dict]:
    return [e for e in sup.audit_tail(200) if e["event"] == event and all(e["data"].get(k) == v for k, v in match.items())]


async def test_an_on_disk_edit_that_crashes_after_min_runtime_but_within_stable_after_is_rolled_back(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(DELAYED_CRASH)
        await sup.restart_server("app")  # the edit goes on trial, holds min_runtime (1 s), is accepted
        await eventually(lambda: audited(sup, "candidate_accepted"), timeout=10)
        await eventually(lambda: audited(sup, "rollback", source="probation"), timeout=15)
        [rollback] = audited(sup, "rollback", source="probation")
        assert rollback["data"]["trigger"] == "probation" and rollback["data"]["to"] == initial
        await eventually(lambda: sup.supervisor_block()["last_good_commit"] == initial, timeout=5)
        assert git(workspace, "rev-parse", "HEAD") == initial
        assert await served_version(sup) == "1"
        assert sup.consecutive_failures == 1  # it counts towards the evolution breaker
        # The edit is not lost: the candidate stays reachable from the verified refs.
        assert "VERSION = \"disk\"" in git(workspace, "show", f"{rollback['data']['bad_commit']}:server.py")


async def test_while_the_breaker_is_open_an_on_disk_edit_is_saved_and_put_back_never_made_last_good(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(app_config(make_config, tmp_path, max_failures=1)) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        broken = await sup.propose_change(ChangeRequest("bad", changes=[{"path": "other.py", "content": "def (\n"}]))
        assert broken.verdict == "rolled_back" and sup.mode == "changes_paused"
        (workspace / "server.py").write_text(with_version("disk"))
        await sup.restart_server("app")
        assert await served_version(sup) == "1"
        [refused] = audited(sup, "candidate_refused")
        assert refused["data"]["trigger"] == "paused" and "recover" in refused["data"]["evidence"]
        assert "VERSION = \"disk\"" in git(workspace, "show", f"{refused['data']['saved_ref']}:server.py")
        assert sup.supervisor_block()["last_good_commit"] == initial == git(workspace, "rev-parse", "HEAD")
        assert "VERSION = \"1\"" in (workspace / "server.py").read_text()


async def test_a_candidate_on_trial_when_the_breaker_opens_is_undone_not_made_last_good(
    tmp_path, make_config, supervisor_factory
):
    config = app_config(make_config, tmp_path, max_failures=1, min_runtime="3s")
    async with supervisor_factory(config) as sup:
        initial = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text(with_version("disk"))
        await sup.restart_server("app")
        assert sup.changes.guard is not None and sup.changes.guard.trial is not None
        on_trial = sup.child("app").generation
        # A change's rollback (a probation failure, say) opens the breaker while the edit is on trial.
        sup._record("rollback", id="p-elsewhere", source="probation", trigger="probation")
        assert sup.mode == "changes_paused"
        await eventually(lambda: audited(sup, "rollback", source="on-disk", trigger="paused"), timeout=10)
        assert not audited(sup, "candidate_accepted")
        assert sup.supervisor_block()["last_good_commit"] == initial == git(workspace, "rev-parse", "HEAD")
        await eventually(lambda: sup.child("app").generation > on_trial, timeout=10)  # restarted off the candidate
        assert await served_version(sup) == "1"
