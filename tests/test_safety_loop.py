"""The safety loop end to end: real git workspaces, real children, real verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.evolution.service import ChangeError
from metasup_mcp.supervisor import Supervisor
from tests.conftest import eventually
from tests.safety_support import SERVER_SOURCE, app_config, git, served_version, with_version

pytestmark = pytest.mark.anyio

async def propose(sup: Supervisor, title: str, changes: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    proposal = await sup.propose_change(ChangeRequest(title=title, changes=changes, **kw))
    return proposal.result()


async def test_a_good_change_is_applied_and_the_child_serves_the_new_code(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        assert await served_version(sup) == "1"
        result = await propose(sup, "bump version", [{"path": "server.py", "content": with_version("2")}])
        assert result["verdict"] == "applied", result
        block = sup.supervisor_block()
        assert block["last_good_commit"] == block["current_commit"] == result["commit"]
        assert await served_version(sup) == "2"
        assert "Metasup-Proposal: " + result["id"] in git(sup.settings.workspace, "log", "-1", "--format=%B")


async def test_a_change_that_breaks_at_import_is_rolled_back_and_kept_reachable(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        good = sup.supervisor_block()["last_good_commit"]
        broken = with_version("2", 'raise RuntimeError("import-time failure")')
        result = await propose(sup, "break it", [{"path": "server.py", "content": broken}])
        assert result["verdict"] == "rolled_back", result
        assert result["trigger"] in ("early_exit", "handshake")
        assert "import-time failure" in " ".join(result["reasons"])
        workspace = sup.settings.workspace
        assert git(workspace, "rev-parse", "HEAD") == good
        assert git(workspace, "rev-parse", result["rejected_ref"]) == result["commit"]
        assert (workspace / "server.py").read_text() == SERVER_SOURCE
        assert await served_version(sup) == "1"


async def test_a_syntax_error_is_refused_at_compile_with_nothing_left_in_the_tree(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        assert await served_version(sup) == "1"
        pid = sup.child("app").pid
        result = await propose(sup, "typo", [{"path": "server.py", "content": "def broken(:\n"}])
        assert result["verdict"] == "rolled_back" and result["trigger"] == "compile", result
        assert "SyntaxError" in result["checks"][0]["output_tail"]
        workspace = sup.settings.workspace
        assert git(workspace, "status", "--porcelain") == ""
        assert (workspace / "server.py").read_text() == SERVER_SOURCE
        assert sup.child("app").pid == pid, "a change refused at compile must not restart the server"


async def test_a_failing_test_check_rolls_back_with_its_output(tmp_path, make_config, supervisor_factory):
    failing = {"name": "tests", "run": ["python", "-c", "print('1 failed'); raise SystemExit(1)"], "timeout": "30s"}
    config = app_config(make_config, tmp_path, checks=[{"name": "compile", "run": "builtin:py_compile"}, failing])
    async with supervisor_factory(config) as sup:
        result = await propose(sup, "bump", [{"path": "server.py", "content": with_version("2")}])
        assert result["verdict"] == "rolled_back" and result["trigger"] == "check:tests", result
        assert "1 failed" in result["checks"][-1]["output_tail"]
        assert await served_version(sup) == "1"


async def test_a_child_that_hangs_after_the_change_is_rolled_back(tmp_path, make_config, supervisor_factory):
    hang = with_version("2").replace('    if method == "ping":\n        return {}', '    if method == "ping":\n        import time; time.sleep(3600)')
    async with supervisor_factory(app_config(make_config, tmp_path, min_runtime="3s")) as sup:
        result = await propose(sup, "hang on ping", [{"path": "server.py", "content": hang}])
        assert result["verdict"] == "rolled_back" and result["trigger"] == "health:hung", result
        assert await served_version(sup) == "1"


async def test_a_child_that_leaks_after_the_change_is_rolled_back(tmp_path, make_config, supervisor_factory):
    leak = with_version("2", 'BALLAST = b"x" * (300 * 1024 * 1024)')
    config = app_config(make_config, tmp_path, min_runtime="3s", health_checks={"max_memory_mb": 150})
    async with supervisor_factory(config) as sup:
        result = await propose(sup, "leak", [{"path": "server.py", "content": leak}])
        assert result["verdict"] == "rolled_back" and result["trigger"] == "health:memory", result


async def test_a_users_uncommitted_and_untracked_work_stays_on_disk_through_a_rolled_back_change(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        workspace = sup.settings.workspace
        (workspace / "draft.txt").write_text("my unsaved thoughts\n")
        (workspace / "config" / "safety_rules.yaml").write_text("[]\n")  # unchanged tracked file
        result = await propose(sup, "break", [{"path": "server.py", "content": "raise SystemExit(1)\n"}])
        assert result["verdict"] == "rolled_back"
        assert (workspace / "draft.txt").read_text() == "my unsaved thoughts\n"
        assert "draft.txt" not in git(workspace, "log", "--all", "--name-only", "--format=")


async def test_dry_run_validates_only_and_hostile_changes_are_refused_untouched(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        workspace = sup.settings.workspace
        head = git(workspace, "rev-parse", "HEAD")
        dry = await propose(sup, "try", [{"path": "new.py", "content": "x = 1\n"}], dry_run=True)
        assert dry["verdict"] == "valid" and not (workspace / "new.py").exists()
        hostile = await propose(sup, "escape", [{"path": "../outside.py", "content": "x"},
                                                {"path": "config/safety_rules.yaml", "content": "[]"}])
        assert hostile["verdict"] == "rejected" and len(hostile["reasons"]) == 2, hostile
        assert not (tmp_path / "outside.py").exists()
        assert git(workspace, "rev-parse", "HEAD") == head and git(workspace, "status", "--porcelain") == ""


async def test_a_broken_edit_made_on_disk_is_rolled_back_automatically(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        good = sup.supervisor_block()["last_good_commit"]
        workspace = sup.settings.workspace
        (workspace / "server.py").write_text("raise SystemExit('on-disk edit broke me')\n")
        await sup.restart_server("app")  # the child picks up the edit at its next start
        child = sup.child("app")
        assert await child.wait_for(lambda c: c.state is ChildState.RUNNING and c.machine.restarts >= 1, 20)
        assert await served_version(sup) == "1"
        assert git(workspace, "rev-parse", "HEAD") == good
        rollbacks = [e for e in sup.events if e["event"] == "rollback"]
        assert rollbacks and rollbacks[-1]["source"] == "on-disk" and rollbacks[-1]["trigger"] == "early_exit"


async def test_a_good_edit_made_on_disk_becomes_last_good_after_min_runtime(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        (sup.settings.workspace / "server.py").write_text(with_version("3"))
        await sup.restart_server("app")
        assert await served_version(sup) == "3"
        with anyio.fail_after(10):
            while sup.supervisor_block()["last_good_commit"] != sup.supervisor_block()["current_commit"]:
                await anyio.sleep(0.1)


async def test_an_on_disk_edit_to_a_protected_path_is_reverted_at_once(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        rules = sup.settings.workspace / "config" / "safety_rules.yaml"
        rules.write_text("- {paths: '*', deny: '.*', message: sneaky}\n")
        # The file is put back first, then the revert is audited and recorded: wait for both.
        # git checkout-index replaces a file by unlinking it first: absent for a moment.
        with anyio.fail_after(10):
            while text_or_none(rules) != "[]\n" or not any(e["event"] == "protected_revert" for e in sup.events):
                await anyio.sleep(0.1)


def text_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


async def test_rollback_goes_only_to_verified_commits(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        first = await propose(sup, "v2", [{"path": "server.py", "content": with_version("2")}])
        second = await propose(sup, "v3", [{"path": "server.py", "content": with_version("3")}])
        assert first["verdict"] == second["verdict"] == "applied"
        result = await sup.rollback("previous", reason="v3 misbehaves in production")
        assert result["to"] == first["commit"] and result["restarted"] == ["app"]
        assert await served_version(sup) == "2"
        bad = await propose(sup, "broken", [{"path": "server.py", "content": "raise SystemExit(2)\n"}])
        assert bad["verdict"] == "rolled_back"
        with pytest.raises(ChangeError, match="never verified"):
            await sup.rollback(bad["commit"], reason="the rejected commit is not a rollback target")


async def test_proposals_survive_a_supervisor_restart(tmp_path, make_config, supervisor_factory):
    config = app_config(make_config, tmp_path)
    async with supervisor_factory(config) as sup:
        result = await propose(sup, "v2", [{"path": "server.py", "content": with_version("2")}])
    async with supervisor_factory(config, autostart=False) as sup:
        again = sup.get_change(result["id"])
        assert again.verdict == "applied" and [s.stage for s in again.stages][-1] == "applied"
        assert sup.list_changes()[0]["id"] == result["id"]


async def test_concurrent_proposals_are_serialised_and_told_their_place_in_the_queue(tmp_path, make_config, supervisor_factory):
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        heard: dict[str, list[str]] = {"first": [], "second": []}
        results: dict[str, Any] = {}

        async def run(name: str, version: str) -> None:
            async def progress(message: str) -> None:
                heard[name].append(message)

            request = ChangeRequest(name, changes=[{"path": "server.py", "content": with_version(version)}])
            results[name] = await sup.propose_change(request, progress)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "first", "2")
            # The first holds the pipeline (its checks before that run in threads, which look blocked).
            await eventually(lambda: "writing the change" in heard["first"], timeout=10)
            tg.start_soon(run, "second", "3")
        first, second = results["first"], results["second"]
        assert any(m.startswith("queued: position") for m in heard["second"]), heard
        assert first.verdict == second.verdict == "applied"
        assert second.base_commit == first.commit, "the second change is applied on top of the first"
        assert await served_version(sup) == "3"


async def test_what_a_restarted_server_wrote_before_failing_stays_on_disk_as_data(tmp_path, make_config, supervisor_factory):
    writes_then_dies = "open('written_on_trial.txt', 'w').write('precious')\nraise SystemExit(1)\n"
    async with supervisor_factory(app_config(make_config, tmp_path)) as sup:
        result = await propose(sup, "writes then dies", [{"path": "server.py", "content": writes_then_dies}])
        assert result["verdict"] == "rolled_back" and result["trigger"] in ("early_exit", "handshake")
        workspace = sup.settings.workspace
        assert (workspace / "written_on_trial.txt").read_text() == "precious"
        assert (workspace / "server.py").read_text() == SERVER_SOURCE
        assert git(workspace, "status", "--porcelain") == "?? written_on_trial.txt"
