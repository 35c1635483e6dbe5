"""Verification by behaviour: the agent's `verify` calls and the replay of read-only calls,
against real restarted servers, through a real client session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from metasup_mcp.config import ReplaySettings
from metasup_mcp.evolution.behaviour import ReplaySamples, VerifyCall, is_subset, matches, same_behaviour, shape
from tests.safety_support import SERVER_SOURCE, served_version, workspace_template
from tests.test_gateway_support import connected, running

pytestmark = pytest.mark.anyio

APP = {"name": "app", "command": "python", "args": ["-u", "server.py"], "watch": ["server.py"]}
# The versioned server, its `version` tool annotated read-only.
READ_ONLY_SOURCE = SERVER_SOURCE.replace(
    '"inputSchema": {"type": "object"}}', '"inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}'
)


def read_only_template(tmp_path: Path) -> str:
    template = workspace_template(tmp_path)
    (template / "server.py").write_text(READ_ONLY_SOURCE)
    return str(template)


def version(v: str, extra: str = "") -> str:
    return READ_ONLY_SOURCE.replace('VERSION = "1"', f'VERSION = "{v}"\n{extra}')


def text_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


async def test_verify_calls_that_pass_keep_the_change(tmp_path: Path) -> None:
    async with connected(tmp_path, [APP], workspace_template=read_only_template(tmp_path)) as up:
        await running(up.sup, "app")
        result = (await up.session.call_tool("propose_change", {
            "title": "v2", "changes": [{"path": "server.py", "content": version("2")}],
            "verify": [
                {"tool": "app__version", "expect": text_result("2")},
                {"tool": "app__version", "expect": {"isError": False, **text_result("2")}, "match": "exact"},
                {"tool": "app__version"},  # isError: false alone
            ],
        })).structured_content
        assert result is not None and result["verdict"] == "applied", result
        found = up.sup.get_change(result["id"]).behaviour
        assert [f["ok"] for f in found if f["kind"] == "verify"] == [True, True, True]
        assert await served_version(up.sup) == "2"


async def test_a_verify_call_that_fails_rolls_back_with_the_expected_and_actual_results(tmp_path: Path) -> None:
    async with connected(tmp_path, [APP], workspace_template=read_only_template(tmp_path)) as up:
        await running(up.sup, "app")
        result = (await up.session.call_tool("propose_change", {
            "title": "v2 claiming v3", "changes": [{"path": "server.py", "content": version("2")}],
            "verify": [{"tool": "app__version", "expect": text_result("3")}],
        })).structured_content
        assert result is not None and result["verdict"] == "rolled_back", result
        assert result["trigger"] == "behaviour:app__version"
        evidence = result["reasons"][-1]
        assert '"text": "3"' in evidence and '"text": "2"' in evidence and "expected (subset)" in evidence
        assert await served_version(up.sup) == "1"


async def test_a_verify_call_of_a_tool_nobody_offers_rolls_back(tmp_path: Path) -> None:
    async with connected(tmp_path, [APP], workspace_template=read_only_template(tmp_path)) as up:
        await running(up.sup, "app")
        result = (await up.session.call_tool("propose_change", {
            "title": "v2", "changes": [{"path": "server.py", "content": version("2")}],
            "verify": [{"tool": "app__missing"}],
        })).structured_content
        assert result is not None and result["trigger"] == "behaviour:app__missing"
        assert "no running server offers the tool 'app__missing'" in result["reasons"][-1]


async def test_a_malformed_verify_list_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    async with connected(tmp_path, [APP], workspace_template=read_only_template(tmp_path)) as up:
        result = (await up.session.call_tool("propose_change", {
            "title": "v2", "changes": [{"path": "server.py", "content": version("2")}],
            "verify": [{"tool": "app__version", "expected": {}}],
        })).structured_content
        assert result is not None and result["verdict"] == "rejected" and result["reasons"][0].startswith("verify:")


async def test_replay_rolls_back_a_healthy_change_that_alters_a_read_only_answer(tmp_path: Path) -> None:
    async with connected(tmp_path, [APP], workspace_template=read_only_template(tmp_path)) as up:
        await running(up.sup, "app")
        await up.until_tools(lambda names: "app__version" in names)
        seen = await up.session.call_tool("app__version", {})
        assert seen.content[0].text == "1"  # type: ignore[union-attr]
        await up.sup.replay.flush()
        samples = json.loads((tmp_path / "state" / "replay.json").read_text())
        assert samples["app__version"][0]["arguments"] == {}

        result = (await up.session.call_tool("propose_change", {
            "title": "healthy, but answers differently", "changes": [{"path": "server.py", "content": version("2")}],
        })).structured_content
        assert result is not None and result["verdict"] == "rolled_back", result
        assert result["trigger"] == "behaviour:app__version"
        assert "recorded at last good (replay: exact)" in result["reasons"][-1]
        assert await served_version(up.sup) == "1"

        same = (await up.session.call_tool("propose_change", {
            "title": "same answer", "changes": [{"path": "server.py", "content": version("1", "# a comment")}],
        })).structured_content
        assert same is not None and same["verdict"] == "applied", same
        replayed = up.sup.get_change(same["id"]).behaviour
        assert replayed == [{"kind": "replay", "tool": "app__version", "mode": "exact", "ok": True}]


async def test_replay_by_shape_accepts_a_new_value_of_the_same_shape(tmp_path: Path) -> None:
    async with connected(
        tmp_path, [APP], workspace_template=read_only_template(tmp_path), replay={"tools": {"app__*": "shape"}}
    ) as up:
        await running(up.sup, "app")
        await up.until_tools(lambda names: "app__version" in names)
        await up.session.call_tool("app__version", {})
        result = (await up.session.call_tool("propose_change", {
            "title": "v2", "changes": [{"path": "server.py", "content": version("2")}],
        })).structured_content
        assert result is not None and result["verdict"] == "applied", result
        assert up.sup.get_change(result["id"]).behaviour[0]["mode"] == "shape"


def test_subset_matching_follows_keys_and_lists_but_never_confuses_true_with_one() -> None:
    actual = {"content": [{"type": "text", "text": "2"}], "structuredContent": {"n": 1, "ok": True}, "isError": False}
    assert is_subset({"structuredContent": {"n": 1}}, actual)
    assert is_subset({"structuredContent": {"n": 1.0}}, actual)
    assert not is_subset({"structuredContent": {"n": True}}, actual)
    assert not is_subset({"content": []}, actual)
    assert matches(VerifyCall(tool="t"), {"content": []})  # isError absent means false
    assert not matches(VerifyCall(tool="t"), {"content": [], "isError": True})
    assert not matches(VerifyCall(tool="t", expect={"content": []}, match="exact"), actual)


def test_shape_compares_keys_and_types_not_values() -> None:
    before = {"structuredContent": {"time": "10:00", "items": [1, 2]}}
    assert same_behaviour("shape", before, {"structuredContent": {"time": "11:00", "items": [3]}})
    assert not same_behaviour("shape", before, {"structuredContent": {"time": 11, "items": [3]}})
    assert not same_behaviour("exact", before, {"structuredContent": {"time": "11:00", "items": [1, 2]}})
    assert shape([]) == [] and shape(None) == "NoneType"


def test_replay_keeps_a_bounded_sample_and_skips_tools_set_off(tmp_path: Path) -> None:
    settings = ReplaySettings(max_calls=3, samples_per_tool=2, tools={"clock__*": "off"})
    samples = ReplaySamples(tmp_path / "replay.json", settings)
    for n in range(4):
        samples.observe("kv__get", {"key": n}, text_result(str(n)))
    samples.observe("clock__now", {}, text_result("10:00"))
    samples.observe("kv__get", {"key": 9}, {**text_result("x"), "isError": True})
    chosen = samples.chosen({"kv__get", "clock__now"})
    assert [args for _, args, _ in chosen] == [{"key": 3}, {"key": 2}]
