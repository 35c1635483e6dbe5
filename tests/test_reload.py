"""Config hot reload as one transaction, with real children: servers added, removed and changed
are applied while unchanged ones keep running untouched; a new server that does not start
rolls the whole reload back with the previous servers serving again and the evidence; clients
hear list_changed; every outcome is audited; the tool needs the operator token; SIGHUP and
`metasup-mcp reload` reach a running `serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client

from metasup_mcp.config import ServerConfig
from metasup_mcp.reload import ReloadRefused, diff_servers
from metasup_mcp.server_requests import ServerRequests
from tests.test_gateway_support import START, connected, fixture, running, write_config

pytestmark = pytest.mark.anyio
FAST = {"min_runtime": "0.5s"}
OPERATOR_TOKEN = "op-secret-4b9e1c27"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rewrite(tmp_path: Path, servers: list[dict[str, Any]]) -> None:
    write_config(tmp_path, servers, **FAST)


def audit_reloads(up: Any) -> list[dict[str, Any]]:
    return [e["data"] for e in up.sup.audit_tail(50) if e["event"] == "reload"]


async def test_added_removed_and_changed_servers_apply_while_unchanged_ones_keep_running(tmp_path: Path) -> None:
    keep, gone, alter = fixture("keep"), fixture("gone"), fixture("alter")
    async with connected(tmp_path, [keep, gone, alter], **FAST) as up:
        for name in ("keep", "gone", "alter"):
            await running(up.sup, name)
        await up.until_tools(lambda names: {"keep__echo", "gone__echo", "alter__echo"} <= names)
        keep_pid, alter_pid = up.sup.child("keep").pid, up.sup.child("alter").pid
        before = up.count("notifications/tools/list_changed")

        rewrite(tmp_path, [keep, fixture("alter", "--stderr-lines", "1"), fixture("fresh")])
        result = await up.sup.reload_config()

        assert result["verdict"] == "applied"
        assert result["diff"] == {"added": ["fresh"], "removed": ["gone"], "changed": ["alter"], "unchanged": ["keep"]}
        assert up.sup.child("keep").pid == keep_pid and up.sup.child("keep").machine.restarts == 0
        assert up.sup.child("alter").pid != alter_pid and up.sup.child("alter").config.args[-1] == "1"
        assert set(up.sup.status()["servers"]) == {"keep", "alter", "fresh"}
        names = await up.until_tools(lambda names: "fresh__echo" in names and "gone__echo" not in names)
        assert {"keep__echo", "alter__echo"} <= names
        assert up.count("notifications/tools/list_changed") > before
        echoed = await up.session.call_tool("fresh__echo", {"text": "new"})
        assert echoed.content[0].text == "new"
        assert audit_reloads(up)[-1]["verdict"] == "applied"
        assert [s.name for s in up.sup.settings.mcp_servers] == ["keep", "alter", "fresh"]


async def test_a_new_server_that_cannot_start_rolls_the_reload_back_with_the_old_servers_serving(tmp_path: Path) -> None:
    keep, alter = fixture("keep"), fixture("alter")
    async with connected(tmp_path, [keep, alter], **FAST) as up:
        await running(up.sup, "keep")
        await running(up.sup, "alter")
        keep_pid = up.sup.child("keep").pid
        rewrite(tmp_path, [keep, fixture("alter", "--stderr-lines", "2"), fixture("broken", "--crash-on-start", "7")])

        result = await up.sup.reload_config()

        assert result["verdict"] == "rolled_back"
        evidence = result["evidence"]["broken"]
        assert "code 7" in evidence["problem"] and evidence["state"] in ("backoff", "exited", "fatal")
        assert "broken" not in up.sup.status()["servers"]
        restored = await running(up.sup, "alter")
        assert restored.config.args == alter["args"]  # the previous config, running again
        assert up.sup.child("keep").pid == keep_pid
        names = await up.until_tools(lambda names: "alter__echo" in names and "broken__echo" not in names)
        assert "keep__echo" in names
        assert (await up.session.call_tool("alter__echo", {"text": "still here"})).content[0].text == "still here"
        assert [s.name for s in up.sup.settings.mcp_servers] == ["keep", "alter"]
        recorded = audit_reloads(up)[-1]
        assert recorded["verdict"] == "rolled_back" and "broken" in recorded["evidence"]


async def test_a_config_that_does_not_validate_changes_nothing_and_is_audited(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("keep")], **FAST) as up:
        child = await running(up.sup, "keep")
        (tmp_path / "servers.yaml").write_text("supervisor:\n  mcp_servers:\n    - {name: x}\n")
        with pytest.raises(ReloadRefused, match=r"mcp_servers\[0\]\.command"):
            await up.sup.reload_config()
        assert up.sup.child("keep") is child and child.state.value == "running"
        assert audit_reloads(up)[-1]["verdict"] == "rejected"


async def test_the_reload_config_tool_needs_the_operator_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with connected(tmp_path, [fixture("keep")], **FAST) as up:
        await running(up.sup, "keep")
        refused = await up.session.call_tool("reload_config", {"token": "guess"})
        assert refused.is_error and "no operator token is configured" in refused.content[0].text
        monkeypatch.setenv("METASUP_OPERATOR_TOKEN", OPERATOR_TOKEN)
        wrong = await up.session.call_tool("reload_config", {"token": "guess"})
        assert wrong.is_error and "the operator token is wrong" in wrong.content[0].text
        rewrite(tmp_path, [fixture("keep"), fixture("extra")])
        done = await up.session.call_tool("reload_config", {"token": OPERATOR_TOKEN})
        assert not done.is_error, done.content[0].text
        assert done.structured_content["verdict"] == "applied"
        assert done.content[0].text == "reload applied: added extra"


async def test_metasup_reload_sends_sighup_to_a_running_serve_and_prints_the_outcome(tmp_path: Path) -> None:
    config = write_config(tmp_path, [fixture("keep")], **FAST)
    params = StdioServerParameters(command=sys.executable, args=["-m", "metasup_mcp.cli", "serve", "--config", str(config)])
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    with open(tmp_path / "serve.stderr", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write, message_handler=on_message) as session:
                with anyio.fail_after(START):
                    await session.initialize()
                    while "keep__echo" not in {t.name for t in (await session.list_tools()).tools}:
                        await changed.wait()
                        changed = anyio.Event()
                rewrite(tmp_path, [fixture("keep"), fixture("extra")])
                done = await anyio.run_process(
                    [sys.executable, "-m", "metasup_mcp.cli", "reload", "--config", str(config), "--wait", "60"],
                    check=False,
                )
                assert done.returncode == 0, done.stderr.decode()
                outcome = yaml.safe_load(done.stdout)
                assert outcome["verdict"] == "applied" and outcome["trigger"] == "sighup"
                assert outcome["diff"]["added"] == ["extra"]
                with anyio.fail_after(START):
                    while "extra__echo" not in {t.name for t in (await session.list_tools()).tools}:
                        await changed.wait()
                        changed = anyio.Event()


def test_reload_without_a_running_supervisor_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, [fixture("keep")])
    done = subprocess.run([sys.executable, "-m", "metasup_mcp.cli", "reload", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no supervisor has run on the state folder" in done.stderr


def test_the_diff_names_added_removed_changed_and_unchanged_servers() -> None:
    a, b, c = (ServerConfig(name=n, command="x") for n in "abc")
    b2 = ServerConfig(name="b", command="x", args=["-v"])
    diff = diff_servers([a, b, c], [a, b2, ServerConfig(name="d", url="http://h/mcp")])
    assert (diff.added, diff.removed, diff.changed, diff.unchanged) == (["d"], ["c"], ["b"], ["a"])


async def test_a_proposed_server_waits_for_the_operator_then_runs_and_lands_in_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", OPERATOR_TOKEN)
    async with connected(tmp_path, [fixture("keep")], **FAST) as up:
        await running(up.sup, "keep")
        config = tmp_path / "servers.yaml"
        config.write_text("# operator's notes\n" + config.read_text())
        proposed = await up.session.call_tool(
            "propose_server", {"name": "helper", "command": "python", "args": fixture("x")["args"], "reason": "need echo"}
        )
        request = proposed.structured_content
        assert request["status"] == "pending_approval" and request["action"] == "added"
        assert "helper" not in up.sup.status()["servers"] and "helper" not in config.read_text()
        refused = await up.session.call_tool("approve_server", {"id": request["id"], "token": "agent-guess"})
        assert refused.is_error and "the operator token is wrong" in refused.content[0].text
        own = await up.session.call_tool("approve_server", {"id": request["id"], "token": OPERATOR_TOKEN})
        assert own.is_error and "this session proposed it" in own.content[0].text

        approved = await ServerRequests(up.sup).approve(request["id"], OPERATOR_TOKEN, "ok", who="operator-session")
        assert approved["status"] == "applied", approved
        await running(up.sup, "helper")
        assert "- name: helper" in config.read_text() and config.read_text().startswith("# operator's notes\n")
        with pytest.raises(ReloadRefused, match="already applied"):
            await ServerRequests(up.sup).approve(request["id"], OPERATOR_TOKEN, "", who="operator-session")


async def a_crashing_server_proposed(up: Any, tmp_path: Path) -> tuple[Path, str, str]:
    """With `keep` running, a server that crashes on start proposed over MCP: the config file,
    its text before, and the request id."""
    await running(up.sup, "keep")
    config = tmp_path / "servers.yaml"
    before = config.read_text()
    bad = fixture("bad", "--crash-on-start", "5")
    proposed = await up.session.call_tool("propose_server", {"name": "bad", "command": "python", "args": bad["args"]})
    return config, before, proposed.structured_content["id"]


async def test_an_approved_server_that_fails_leaves_the_config_file_and_the_servers_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", OPERATOR_TOKEN)
    async with connected(tmp_path, [fixture("keep")], **FAST) as up:
        config, before, request_id = await a_crashing_server_proposed(up, tmp_path)
        approved = await ServerRequests(up.sup).approve(request_id, OPERATOR_TOKEN, "", who="operator-session")
        assert approved["status"] == "rolled_back" and "bad" in approved["reload"]["evidence"]
        assert config.read_text() == before and set(up.sup.status()["servers"]) == {"keep"}
        invalid = await up.session.call_tool("propose_server", {"name": "a__b", "command": "x"})
        assert invalid.is_error and "cannot contain '__'" in invalid.content[0].text


async def test_two_operators_approving_one_server_request_at_once_decide_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second approval is refused while the first runs its reload: otherwise its copy of the
    file (taken with the entry in it) would be written back after a rollback, and the file would
    name a server that does not run."""
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", OPERATOR_TOKEN)
    async with connected(tmp_path, [fixture("keep")], **FAST) as up:
        config, before, request_id = await a_crashing_server_proposed(up, tmp_path)
        outcomes: list[str] = []

        async def approve(who: str) -> None:
            try:
                outcomes.append((await ServerRequests(up.sup).approve(request_id, OPERATOR_TOKEN, "", who=who))["status"])
            except ReloadRefused as exc:
                outcomes.append(str(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve, "operator-1")
            tg.start_soon(approve, "operator-2")
        assert sorted(outcomes)[0] == "rolled_back" and "being approved already" in sorted(outcomes)[1], outcomes
        assert config.read_text() == before and set(up.sup.status()["servers"]) == {"keep"}
        decided = [e for e in up.sup.audit_tail(50) if e["event"] == "server_decided"]
        assert len(decided) == 1


async def test_a_server_request_cannot_hand_the_operator_token_to_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Approved unread, `${METASUP_OPERATOR_TOKEN}` (or a variable holding the same value) would give
    a child, and so the agent driving it, the power to approve its own changes."""
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", OPERATOR_TOKEN)
    monkeypatch.setenv("INNOCENT_LOOKING", OPERATOR_TOKEN)
    async with connected(tmp_path, [fixture("keep")], **FAST) as up:
        for ref in ("${METASUP_OPERATOR_TOKEN}", "Bearer ${INNOCENT_LOOKING}"):
            asked = await up.session.call_tool(
                "propose_server", {"name": "helper", "command": "python", "args": fixture("x")["args"], "env": {"T": ref}}
            )
            assert asked.is_error and "is the operator token, which no child may be given" in asked.content[0].text
            assert OPERATOR_TOKEN not in asked.content[0].text
            remote = await up.session.call_tool("propose_server", {"name": "r", "url": "http://127.0.0.1:1/mcp",
                                                                   "headers": {"Authorization": ref}})
            assert remote.is_error and OPERATOR_TOKEN not in remote.content[0].text
        assert not (up.sup.settings.state_dir / "server_requests").exists() or not list(
            (up.sup.settings.state_dir / "server_requests").iterdir())


async def test_a_server_request_older_than_the_approval_timeout_cannot_be_approved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", OPERATOR_TOKEN)
    async with connected(tmp_path, [fixture("keep")], approval={"timeout": "60s"}, **FAST) as up:
        config = tmp_path / "servers.yaml"
        before = config.read_text()
        proposed = await up.session.call_tool("propose_server", {"name": "helper", "command": "python",
                                                                 "args": fixture("x")["args"]})
        request_id = proposed.structured_content["id"]
        stored = up.sup.settings.state_dir / "server_requests" / f"{request_id}.json"
        aged = json.loads(stored.read_text())
        stored.write_text(json.dumps({**aged, "created_at": aged["created_at"] - 61}))  # a minute has passed
        with pytest.raises(ReloadRefused, match="expired"):
            await ServerRequests(up.sup).approve(request_id, OPERATOR_TOKEN, "", who="operator-session")
        assert config.read_text() == before and "helper" not in up.sup.status()["servers"]
