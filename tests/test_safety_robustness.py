"""The safety loop when things go wrong around it: a change cancelled or failing midway, git
failing under the on-disk guard, a stale on-disk trial meeting an applied change."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from metasup_mcp.evolution.pipeline import ChangeError, ChangeRequest
from metasup_mcp.safety.workspace import WorkspaceError
from tests.conftest import eventually
from tests.safety_support import app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio

V2 = [{"path": "server.py", "content": with_version("2")}]
V3 = [{"path": "server.py", "content": with_version("3")}]


async def test_a_change_cancelled_midway_leaves_last_good_and_the_pipeline_usable(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path, min_runtime="3s")) as sup:
        good = sup.supervisor_block()["last_good_commit"]
        with anyio.move_on_after(1.0):  # mid-verify: the restarted server has not held 3 s yet
            await sup.propose_change(ChangeRequest("v2", changes=V2))
        workspace = sup.settings.workspace
        assert git(workspace, "rev-parse", "HEAD") == good and git(workspace, "status", "--porcelain") == ""
        [cancelled] = sup.list_changes()
        assert cancelled["verdict"] == "rolled_back" and cancelled["trigger"] == "interrupted"
        assert git(workspace, "rev-parse", cancelled["rejected_ref"]) == cancelled["commit"]
        applied = await sup.propose_change(ChangeRequest("v3", changes=V3))
        assert applied.verdict == "applied"
        assert await served_version(sup) == "3"


async def test_a_change_failing_midway_is_an_actionable_error_and_nothing_is_lost(
    tmp_path, make_config, supervisor_factory, monkeypatch
):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        workspace = sup.settings.workspace
        (workspace / "draft.txt").write_text("unsaved\n")
        real_apply = sup.changes.workspace.apply

        def half_apply(changes):  # writes, then fails: what a symlink swapped in mid-apply does
            real_apply(changes)
            raise WorkspaceError("refusing to write 'server.py': it is a symlink")

        monkeypatch.setattr(sup.changes.workspace, "apply", half_apply)
        with pytest.raises(ChangeError, match="failed midway.*symlink"):
            await sup.propose_change(ChangeRequest("v2", changes=V2))
        monkeypatch.undo()
        assert "VERSION = \"1\"" in (workspace / "server.py").read_text()
        assert (workspace / "draft.txt").read_text() == "unsaved\n", "the user's uncommitted file is restored"
        assert (await sup.propose_change(ChangeRequest("v2 again", changes=V2))).verdict == "applied"


async def test_a_stale_on_disk_trial_never_moves_last_good_back_over_an_applied_change(
    tmp_path, make_config, supervisor_factory
):
    config = app_config(make_config, tmp_path, min_runtime="2s", restart={"stable_after": "3s"})
    async with supervisor_factory(config) as sup:
        assert await served_version(sup) == "1"
        (sup.settings.workspace / "server.py").write_text(with_version("disk"))
        await sup.restart_server("app")  # the on-disk edit goes on trial with this incarnation
        assert sup.changes.guard is not None and sup.changes.guard.trial is not None
        applied = await sup.propose_change(ChangeRequest("v2", changes=V2))
        assert applied.verdict == "applied"
        with anyio.fail_after(5):  # the change's own restart ended the trial's incarnation
            while sup.changes.guard.trial is not None:
                await anyio.sleep(0.05)
        child = sup.child("app")
        generation = child.generation
        # After its probation (a crash within stable_after would roll the change back by design).
        await eventually(lambda: sup.supervisor_block()["probation"] is None, timeout=10)
        with sup.child_events.subscribe() as events:
            os.kill(child.pid, signal.SIGKILL)
            with anyio.fail_after(15):  # the crash-restarted incarnation holds min_runtime
                async for event in events:
                    if event.server == "app" and event.kind == "stable" and event.generation > generation:
                        break
        assert sup.changes.guard.trial is None
        block = sup.supervisor_block()
        assert block["last_good_commit"] == applied.commit == block["current_commit"]
        assert await served_version(sup) == "2"


async def test_git_failing_under_the_on_disk_guard_does_not_take_the_supervisor_down(
    tmp_path, make_config, supervisor_factory
):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text("raise SystemExit('broken on disk')\n")
        await sup.restart_server("app")
        objects, hidden = workspace / ".git" / "objects", workspace / ".git" / "objects.hidden"
        objects.rename(hidden)  # git can no longer read anything while the trial is judged
        try:
            with anyio.fail_after(10):
                while sup.changes.guard is not None and sup.changes.guard.trial is not None:
                    await anyio.sleep(0.05)
            assert sup.child("app").supervising, "the supervision loop must still be running"
            assert sup.status("app")["supervisor"]["status"] == "running"
        finally:
            hidden.rename(objects)
