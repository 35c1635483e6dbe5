"""The gateway against children that misbehave the way real ones do: endless cursors, missing
methods, bad answers, list_changed storms; and what a client needs passed through (`_meta`,
completions, names it can take). Real fixture children, a real client session.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mcp_types as types
import pytest

from metasup_mcp.children.state import ChildState
from tests.test_gateway_support import connected, fixture, running, structured_error

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_child_repeating_its_tools_cursor_is_listed_once_and_keeps_running(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", "--repeat-cursor", "--storm-tool")]) as up:
        names = await up.until_tools(lambda n: "fx__echo" in n)
        assert {"fx__echo", "fx__listings"} <= names
        listings = await up.session.call_tool("fx__listings", {})
        assert listings.content[0].text == "2"  # the first page, then the repeated cursor ends it
        assert up.sup.child("fx").state is ChildState.RUNNING


async def test_a_child_that_declares_tools_but_cannot_list_them_keeps_its_resources_reachable(
    tmp_path: Path,
) -> None:
    async with connected(tmp_path, [fixture("fx", "--tools-not-found", "--extras")]) as up:
        child = await running(up.sup, "fx")
        await up.settled()
        assert child.tools == [] and not any(n.startswith("fx__") for n in await up.tool_names())
        read = await up.session.read_resource("metasup://ns/fx/fx://item/1")
        assert read.contents[0].text == "item" and str(read.contents[0].uri) == "metasup://ns/fx/fx://item/1"
        assert child.state is ChildState.RUNNING and child.machine.restarts == 0


async def test_the_callers_request_meta_reaches_the_child(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", "--meta-tool")]) as up:
        await up.until_tools(lambda n: "fx__meta" in n)
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        result = await up.session.call_tool("fx__meta", {}, meta={"traceparent": trace, "vendor/x": {"a": 1}})
        seen = json.loads(result.content[0].text)
        assert seen == {"traceparent": trace, "vendor/x": {"a": 1}}


@pytest.mark.parametrize("kind", ["envelope", "error", "result"])
async def test_an_unusable_answer_ends_the_call_at_once_with_an_error_naming_the_child(
    tmp_path: Path, kind: str
) -> None:
    async with connected(tmp_path, [fixture("fx", "--unusable-answer", kind, call_timeout="60s")]) as up:
        await up.until_tools(lambda n: "fx__echo" in n)
        started = time.monotonic()
        result = await up.session.call_tool("fx__echo", {"text": "x"})
        assert time.monotonic() - started < 5  # not the 60 s call_timeout
        error = structured_error(result)
        assert error["server"] == "fx" and error["reason"] == "child_error"
        assert "server 'fx'" in error["error"] and ("malformed" in error["error"] or "cannot use" in error["error"])
        # The child stays usable for the next call.
        assert (await up.session.call_tool("fx__add", {"a": 1, "b": 2})).structured_content == {"result": 3}


async def test_a_burst_of_tools_list_changed_is_relisted_coalesced(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", "--storm-tool")]) as up:
        await up.until_tools(lambda n: "fx__storm" in n)
        await up.settled()
        announced = up.count("notifications/tools/list_changed")
        await up.session.call_tool("fx__storm", {"count": 200})
        await up.settled()
        listings = int((await up.session.call_tool("fx__listings", {})).content[0].text)
        assert 2 <= listings <= 4, listings  # the handshake, then one or two for the whole burst
        assert up.count("notifications/tools/list_changed") == announced  # the tools did not change


async def test_completion_is_forwarded_for_child_prompts_and_templates_under_their_own_names(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx", "--extras"), fixture("plain")]) as up:
        await up.until_tools(lambda n: "fx__echo" in n and "plain__echo" in n)
        await up.settled()
        prompt = await up.session.complete(types.PromptReference(name="fx__greet"), {"name": "who", "value": "al"})
        assert prompt.completion.values == ["greet", "al!"]
        template = types.ResourceTemplateReference(uri="metasup://ns/fx/fx://item/{id}")
        assert (await up.session.complete(template, {"name": "id", "value": "4"})).completion.values == [
            "fx://item/{id}", "4!"
        ]
        # A child without `completions`, and the supervisor's own prompts, offer no suggestions.
        none = types.ResourceTemplateReference(uri="metasup://ns/plain/x://{y}")
        assert (await up.session.complete(none, {"name": "y", "value": ""})).completion.values == []


async def test_tool_names_clients_reject_are_exposed_sanitized_or_renamed_and_called(tmp_path: Path) -> None:
    servers = [fixture("fx", "--odd-names", tools={"rename": {"a/b": "a_or_b"}})]
    async with connected(tmp_path, servers, max_tool_name=60) as up:
        names = await up.until_tools(lambda n: "fx__files_read" in n)
        long = next(n for n in names if n.startswith("fx__xxx"))
        assert {"fx__files_read", "fx__a_or_b", "fx__with_space", "fx__unicode"} <= names
        assert len(long) == 60 and all(len(n) <= 60 for n in names)
        for exposed, original in [("fx__files_read", "files.read"), ("fx__a_or_b", "a/b"), ("fx__unicode", "ünïcode"),
                                  (long, "x" * 70)]:
            assert (await up.session.call_tool(exposed, {})).content[0].text == f"called {original}"
        assert not up.sup.status("fx")["servers"]["fx"]["gateway"]["problems"]


async def test_the_surface_declares_completions(tmp_path: Path) -> None:
    async with connected(tmp_path, [fixture("fx")]) as up:
        assert (await up.session.initialize()).capabilities.completions is not None  # the cached handshake
