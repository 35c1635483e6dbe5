"""Approval through real MCP client sessions: elicitation in both protocol eras, and a change
held for an operator who approves or rejects it with the token from another session."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client import Client
from mcp.shared.memory import create_client_server_memory_streams

from metasup_mcp.config import load_config
from metasup_mcp.mcp_server import SupervisorSurface
from metasup_mcp.supervisor import ChangeError, ChangeRequest, Supervisor
from tests.safety_support import served_version, with_version, workspace_template
from tests.test_gateway_support import running, structured_error, write_config

pytestmark = pytest.mark.anyio

APP = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py"]}
TOKEN = "operator-secret-7f3a"


def v2(title: str = "v2") -> dict[str, Any]:
    return {"title": title, "steps": ["bump VERSION"], "changes": [{"path": "server.py", "content": with_version("2")}]}


@asynccontextmanager
async def human_supervisor(tmp_path: Path, timeout: str = "20s", **approval: Any) -> AsyncIterator[tuple[Supervisor, Any]]:
    path = write_config(
        tmp_path, [APP], workspace_template=str(workspace_template(tmp_path)), min_runtime="0.5s",
        approval={"mode": "human", "timeout": timeout, **approval},
    )
    sup = Supervisor(load_config(path))
    async with sup.running():
        await running(sup, "app")
        yield sup, SupervisorSurface(sup).build()


@asynccontextmanager
async def legacy_session(server: Any, **kwargs: Any) -> AsyncIterator[ClientSession]:
    """A 2025-11-25 client connected in memory to `server` (its own connection)."""
    async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: server.run(s_read, s_write, SupervisorSurface.initialization_options(server)))
            async with ClientSession(c_read, c_write, **kwargs) as session:
                await session.initialize()
                yield session
            tg.cancel_scope.cancel()


def answering(action: str, asked: list[str] | None = None, delay: float = 0.0) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        if asked is not None:
            asked.append(params.message)
        await anyio.sleep(delay)
        return types.ElicitResult(action=action)  # type: ignore[arg-type]

    return callback


def decisions(sup: Supervisor) -> list[dict[str, Any]]:
    return [e["data"] for e in sup.audit_tail(200) if e.get("event") == "decision"]


async def test_a_legacy_client_that_accepts_the_elicitation_gets_the_change_applied(tmp_path: Path) -> None:
    async with human_supervisor(tmp_path) as (sup, server):
        asked: list[str] = []
        async with legacy_session(server, elicitation_callback=answering("accept", asked)) as session:
            result = (await session.call_tool("propose_change", v2("bump to v2"))).structured_content
        assert result is not None and result["verdict"] == "applied", result
        assert await served_version(sup) == "2"
        (message,) = asked
        assert "Title: bump to v2" in message and "1. bump VERSION" in message
        assert message.index("server.py: +2 -1") < message.index("as the proposer describes it")
        (decision,) = decisions(sup)
        assert decision["decision"] == "approved" and decision["decided_by"] == "human (MCP elicitation)"


@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_a_declined_or_cancelled_elicitation_refuses_the_change(tmp_path: Path, action: str) -> None:
    async with human_supervisor(tmp_path) as (sup, server):
        async with legacy_session(server, elicitation_callback=answering(action)) as session:
            result = (await session.call_tool("propose_change", v2())).structured_content
        assert result is not None and result["verdict"] == "rejected", result
        assert "approval declined" in result["reasons"][0] or "approval cancelled" in result["reasons"][0]
        assert await served_version(sup) == "1"
        assert decisions(sup)[-1]["decision"] == "refused"


async def test_an_elicitation_unanswered_within_the_approval_timeout_refuses_the_change(tmp_path: Path) -> None:
    async with human_supervisor(tmp_path, timeout="0.5s") as (sup, server):
        async with legacy_session(server, elicitation_callback=answering("accept", delay=5)) as session:
            with anyio.fail_after(4):
                result = (await session.call_tool("propose_change", v2())).structured_content
        assert result is not None and result["verdict"] == "rejected"
        assert "not answered within approval.timeout" in result["reasons"][0]
        assert await served_version(sup) == "1"


@pytest.mark.parametrize("action", ["accept", "decline"])
async def test_a_modern_client_answers_the_input_required_result_by_retrying(tmp_path: Path, action: str) -> None:
    async with human_supervisor(tmp_path) as (sup, server):
        asked: list[str] = []
        async with Client(server, cache=None, elicitation_callback=answering(action, asked)) as client:
            assert client.protocol_version == "2026-07-28"
            answer = await client.call_tool("propose_change", v2("modern bump"))
        result = answer.structured_content
        assert result is not None and "modern bump" in asked[0]
        if action == "accept":
            assert result["verdict"] == "applied", result
            assert await served_version(sup) == "2"
        else:
            assert result["verdict"] == "rejected" and "declined" in result["reasons"][0]
            assert await served_version(sup) == "1"
        assert decisions(sup)[-1]["decided_by"] == f"human (MCP elicitation, {action})"


async def test_a_forged_request_state_cannot_answer_an_approval(tmp_path: Path) -> None:
    async with human_supervisor(tmp_path) as (sup, server):
        async with Client(server, cache=None) as client:
            forged = await client.session.call_tool(
                "propose_change", v2(), request_state="metasup-approval:p-x:00",
                input_responses={"approval": types.ElicitResult(action="accept")},
            )
        assert forged.is_error and "not issued by this supervisor" in forged.content[0].text  # type: ignore[union-attr]


async def test_without_elicitation_the_change_waits_for_an_operator_with_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    async with human_supervisor(tmp_path) as (sup, server):
        async with legacy_session(server) as proposer, legacy_session(server) as operator:
            held = (await proposer.call_tool("propose_change", v2())).structured_content
            assert held is not None and held["verdict"] == "pending_approval", held
            assert f"approve_change(id={held['id']!r}" in held["reasons"][0] and "approval.timeout" in held["reasons"][0]
            stored = json.loads((tmp_path / "state" / "pending" / f"{held['id']}.json").read_text())
            assert stored["changes"][0]["content"] == with_version("2")

            own = structured_error(await proposer.call_tool("approve_change", {"id": held["id"], "token": TOKEN}))
            assert "this session proposed it" in own["error"]
            wrong = structured_error(await operator.call_tool("approve_change", {"id": held["id"], "token": "guess"}))
            assert "operator token is wrong" in wrong["error"]
            assert await served_version(sup) == "1"

            done = await operator.call_tool("approve_change", {"id": held["id"], "token": TOKEN, "note": "looks right"})
            applied = done.structured_content
            assert not done.is_error and applied is not None and applied["verdict"] == "applied", done
        assert await served_version(sup) == "2"
        decision = decisions(sup)[-1]
        assert decision["decided_by"] == "operator (mcp)" and decision["reason"] == "looks right"
        audit = (tmp_path / "state" / "audit.jsonl").read_text()
        assert TOKEN not in audit and TOKEN not in json.dumps(sup.status(), default=str)


async def test_an_operator_rejects_a_held_change_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    async with human_supervisor(tmp_path) as (sup, server):
        async with legacy_session(server) as proposer:
            held = (await proposer.call_tool("propose_change", v2())).structured_content
            assert held is not None
            # Rejecting one's own proposal is allowed: it can only make less happen.
            gone = (await proposer.call_tool("reject_change", {"id": held["id"], "token": TOKEN, "note": "no"})).structured_content
        assert gone is not None and gone["verdict"] == "rejected" and "no" in gone["reasons"][-1]
        assert not (tmp_path / "state" / "pending" / f"{held['id']}.json").exists()
        assert await served_version(sup) == "1"


async def test_a_held_change_expires_after_the_approval_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    async with human_supervisor(tmp_path, timeout="0.4s") as (sup, server):
        async with legacy_session(server) as proposer, legacy_session(server) as operator:
            held = (await proposer.call_tool("propose_change", v2())).structured_content
            assert held is not None and held["verdict"] == "pending_approval"
            with anyio.fail_after(5):
                while sup.get_change(held["id"]).status == "pending_approval":
                    await anyio.sleep(0.05)
            late = structured_error(await operator.call_tool("approve_change", {"id": held["id"], "token": TOKEN}))
        assert "not waiting for approval (it is rejected)" in late["error"]
        assert "expired" in sup.get_change(held["id"]).reasons[-1]
        assert decisions(sup)[-1]["decided_by"] == "timeout"
        assert await served_version(sup) == "1"


async def test_human_for_globs_ask_a_human_only_for_matching_paths(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, [APP], workspace_template=str(workspace_template(tmp_path)),
        approval={"mode": "auto", "human_for": ["*.md"]},
    )
    sup = Supervisor(load_config(path))
    async with sup.running():
        server = SupervisorSurface(sup).build()
        async with legacy_session(server) as session:
            notes = {"title": "notes", "changes": [{"path": "NOTES.md", "content": "hi\n"}]}
            held = (await session.call_tool("propose_change", notes)).structured_content
            code = {"title": "data", "changes": [{"path": "data.txt", "content": "x\n"}]}
            auto = (await session.call_tool("propose_change", code)).structured_content
        assert held is not None and held["verdict"] == "pending_approval" and "NOTES.md match approval.human_for" in held["reasons"][0]
        assert auto is not None and auto["verdict"] == "applied"
        assert decisions(sup)[-1]["decided_by"] == "policy:auto"


async def test_deny_mode_refuses_every_change_and_says_so(tmp_path: Path) -> None:
    path = write_config(tmp_path, [APP], workspace_template=str(workspace_template(tmp_path)), approval={"mode": "deny"})
    sup = Supervisor(load_config(path))
    async with sup.running():
        proposal = await sup.propose_change(ChangeRequest(**v2()))
    assert proposal.verdict == "rejected" and "approval mode is deny" in proposal.reasons[0]
    assert proposal.approval is not None and proposal.approval["decided_by"] == "policy:deny"


async def test_two_operators_approving_at_once_apply_the_change_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    async with human_supervisor(tmp_path) as (sup, _):
        held = await sup.propose_change(ChangeRequest(**v2()))
        outcomes: list[str] = []

        async def approve(who: str) -> None:
            try:
                outcomes.append((await sup.decide_change(held.id, True, TOKEN, who=who)).verdict or "")
            except ChangeError as exc:
                outcomes.append(str(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve, "first")
            tg.start_soon(approve, "second")
    first, second = sorted(outcomes)
    assert first == "applied" and ("being decided already" in second or "not waiting" in second), outcomes


async def test_with_elicit_off_even_an_eliciting_client_leaves_the_decision_to_an_operator(tmp_path: Path) -> None:
    async with human_supervisor(tmp_path, elicit=False) as (sup, server):
        asked: list[str] = []
        async with legacy_session(server, elicitation_callback=answering("accept", asked)) as session:
            held = (await session.call_tool("propose_change", v2())).structured_content
    assert held is not None and held["verdict"] == "pending_approval" and asked == []


async def test_a_modern_client_without_elicitation_gets_the_change_held(tmp_path: Path) -> None:
    async with human_supervisor(tmp_path) as (sup, server):
        async with Client(server, cache=None) as client:
            held = (await client.call_tool("propose_change", v2())).structured_content
    assert held is not None and held["verdict"] == "pending_approval" and "approve_change" in held["reasons"][0]


async def test_the_operator_token_can_come_from_a_file_outside_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("METASUP_OPERATOR_TOKEN", raising=False)
    token_file = tmp_path / "operator.token"
    token_file.write_text(TOKEN + "\n")
    async with human_supervisor(tmp_path, operator_token_file=str(token_file)) as (sup, server):
        held = await sup.propose_change(ChangeRequest(**v2()))
        with pytest.raises(ChangeError, match="operator token is wrong"):
            await sup.decide_change(held.id, True, "guess")
        approved = await sup.decide_change(held.id, True, TOKEN)
    assert approved.verdict == "applied"
    assert TOKEN not in (tmp_path / "state" / "audit.jsonl").read_text()


async def test_a_stateless_modern_client_cannot_approve_over_mcp_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each 2026-07-28 request without a duplex channel is its own connection: nothing tells the
    proposer from another caller, so approval goes through a session, the CLI or the dashboard."""
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    async with human_supervisor(tmp_path) as (sup, server):
        async with Client(server, cache=None) as client:
            held = (await client.call_tool("propose_change", v2())).structured_content
            assert held is not None and held["verdict"] == "pending_approval"
            own = await client.call_tool("approve_change", {"id": held["id"], "token": TOKEN})
        assert own.is_error and "from a stateless connection" in own.content[0].text  # type: ignore[union-attr]
        assert sup.get_change(held["id"]).status == "pending_approval"


async def test_over_real_stdio_a_modern_client_is_asked_and_cannot_approve_its_own_held_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`metasup-mcp serve` as a process, a 2026-07-28 client on its stdin/stdout."""
    config = write_config(
        tmp_path, [APP], workspace_template=str(workspace_template(tmp_path)), approval={"mode": "human"},
    )
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "metasup_mcp.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
        env={**os.environ, "METASUP_OPERATOR_TOKEN": TOKEN},
    )
    asked: list[str] = []
    with anyio.fail_after(60):
        async with Client(params, cache=None, elicitation_callback=answering("accept", asked)) as client:
            assert client.protocol_version == "2026-07-28"
            applied = (await client.call_tool("propose_change", v2())).structured_content
    assert applied is not None and applied["verdict"] == "applied" and asked
    with anyio.fail_after(60):
        async with Client(params, cache=None) as client:  # no elicitation: held
            held = (await client.call_tool("propose_change", v2("v3") | {
                "changes": [{"path": "server.py", "content": with_version("3")}]})).structured_content
            assert held is not None and held["verdict"] == "pending_approval"
            own = await client.call_tool("approve_change", {"id": held["id"], "token": TOKEN})
    assert own.is_error and "this session proposed it" in own.content[0].text  # type: ignore[union-attr]


async def test_a_modern_client_answering_after_the_approval_timeout_is_refused(tmp_path: Path) -> None:
    async with human_supervisor(tmp_path, timeout="0.5s") as (sup, server):
        async with Client(server, cache=None, elicitation_callback=answering("accept", delay=1.5)) as client:
            late = (await client.call_tool("propose_change", v2())).structured_content
        assert late is not None and late["verdict"] == "rejected" and "expired" in late["reasons"][0]
        assert decisions(sup)[-1]["decided_by"] == "timeout"
        assert await served_version(sup) == "1"


@pytest.mark.parametrize(
    ("glob", "path"),
    [
        ("*.sql", "migrations/0001_drop.SQL"),  # letter case: one file on case-insensitive filesystems
        ("deploy/**", "Deploy/run.sh"),
        ("deploy/", "deploy/run.sh"),  # a folder, written as protected_paths are
        ("deploy", "deploy/run.sh"),
        ("*secrets.py", "app/secrets.py"),  # a glob without '/' matches a name at any depth
        ("ｄｅｐｌｏｙ/**", "deploy/run.sh"),  # NFKC: full-width letters name the same folder
    ],
)
async def test_human_for_cannot_be_sidestepped_by_case_folders_or_depth(tmp_path: Path, glob: str, path: str) -> None:
    """human_for matches as protected_paths do (case-folded, NFKC, a pattern covers what is below it)."""
    cfg = write_config(
        tmp_path, [APP], workspace_template=str(workspace_template(tmp_path)),
        approval={"mode": "auto", "human_for": [glob]},
    )
    sup = Supervisor(load_config(cfg))
    async with sup.running():
        server = SupervisorSurface(sup).build()
        async with legacy_session(server) as session:
            change = {"title": "sneak", "changes": [{"path": path, "content": "x\n"}]}
            result = (await session.call_tool("propose_change", change)).structured_content
    assert result is not None and result["verdict"] == "pending_approval", result
    assert not (sup.settings.workspace / path).exists()


async def test_a_held_change_whose_files_changed_since_it_was_shown_is_refused_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator approves the diff they were shown. If a file it touches changed meanwhile (another
    change landed), writing the stored content would do something else (here: undo v3), unseen."""
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    async with human_supervisor(tmp_path) as (sup, server):
        async with legacy_session(server) as proposer, legacy_session(server) as operator:
            small = (await proposer.call_tool("propose_change", v2("v2: one line"))).structured_content
            v3 = {"title": "v3", "changes": [{"path": "server.py", "content": with_version("3")}]}
            later = (await proposer.call_tool("propose_change", v3)).structured_content
            assert small is not None and later is not None
            first = await operator.call_tool("approve_change", {"id": later["id"], "token": TOKEN})
            assert first.structured_content is not None and first.structured_content["verdict"] == "applied", first
            stale = (await operator.call_tool("approve_change", {"id": small["id"], "token": TOKEN})).structured_content
        assert stale is not None and stale["verdict"] == "rejected", stale
        assert any("server.py changed since" in r for r in stale["reasons"]), stale["reasons"]
        assert await served_version(sup) == "3"
