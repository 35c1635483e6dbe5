"""The misbehaving fixture child and the two example servers, driven by the real SDK client.

Where the SDK would hide what we check (exit codes, an answer that never comes), `raw_child`
speaks JSON-RPC to the fixture directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "child.py"
EXAMPLES = ROOT / "metasup_mcp" / "examples"
DEADLINE = 10.0  # generous: an SDK child needs ~1.1 s just to import `mcp`


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def sdk_session(
    script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=["-u", str(script), *args], cwd=cwd, env=env)
    with open(cwd / f"{script.stem}.stderr.log", "a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            with anyio.fail_after(DEADLINE):
                await session.initialize()
            yield session


class Raw:
    """Line-level JSON-RPC to the fixture, for what the SDK client would not show us."""

    def __init__(self, proc: Process) -> None:
        assert proc.stdin and proc.stdout
        self.proc, self._stdin = proc, proc.stdin
        self._stdout = BufferedByteReceiveStream(proc.stdout)

    async def send(self, method: str, params: dict[str, Any] | None = None, id: int | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if id is not None:
            msg["id"] = id
        await self._stdin.send(json.dumps(msg).encode() + b"\n")

    async def recv(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            while True:
                line = await self._stdout.receive_until(b"\n", 1 << 20)
                try:
                    return json.loads(line)
                except ValueError:
                    continue  # --garbage lines

    async def initialize(self, version: str = "2025-11-25") -> dict[str, Any]:
        await self.send("initialize", {"protocolVersion": version, "capabilities": {},
                                       "clientInfo": {"name": "raw", "version": "0"}}, id=0)
        answer = await self.recv()
        await self.send("notifications/initialized")
        return answer["result"]

    async def exit_code(self) -> int:
        with anyio.fail_after(5):
            return await self.proc.wait()


@asynccontextmanager
async def raw_child(*flags: str) -> AsyncIterator[Raw]:
    proc = await anyio.open_process([sys.executable, str(FIXTURE), *flags])
    try:
        yield Raw(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.fail_after(5):
            await proc.wait()
        await proc.aclose()


def text_of(result: Any) -> str:
    return result.content[0].text


async def test_fixture_answers_the_handshake_lists_its_tools_and_calls_them(tmp_path: Path) -> None:
    async with sdk_session(FIXTURE, cwd=tmp_path) as session:
        init = session.initialize_result
        assert init is not None and init.server_info.name == "fixture"
        assert init.capabilities.tools is not None and init.capabilities.tools.list_changed
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"echo", "add", "slow", "hang", "crash"} <= names
        assert text_of(await session.call_tool("echo", {"text": "hi"})) == "hi"
        added = await session.call_tool("add", {"a": 2, "b": 3.5})
        assert added.structured_content == {"result": 5.5} and text_of(added) == "5.5"
        assert (await session.send_ping()) is not None


async def test_fixture_echoes_known_protocol_versions_and_has_no_server_discover() -> None:
    async with raw_child() as child:
        assert (await child.initialize("2025-03-26"))["protocolVersion"] == "2025-03-26"
        await child.send("server/discover", id=1)
        assert (await child.recv())["error"]["code"] == -32601
    async with raw_child() as child:
        assert (await child.initialize("1999-01-01"))["protocolVersion"] == "2025-11-25"


async def test_garbage_on_stdout_does_not_disturb_the_answers(tmp_path: Path) -> None:
    async with sdk_session(FIXTURE, "--garbage", cwd=tmp_path) as session:
        assert len((await session.list_tools()).tools) == 5
        for i in range(3):
            assert text_of(await session.call_tool("echo", {"text": f"t{i}"})) == f"t{i}"
        assert (await session.call_tool("add", {"a": 1, "b": 1})).structured_content == {"result": 2}


async def test_crash_after_calls_fails_the_nth_call_instead_of_answering(tmp_path: Path) -> None:
    async with sdk_session(FIXTURE, "--crash-after-calls", "2", cwd=tmp_path) as session:
        assert text_of(await session.call_tool("echo", {"text": "one"})) == "one"
        with anyio.fail_after(5), pytest.raises(MCPError):
            await session.call_tool("echo", {"text": "two"})


async def test_crash_after_calls_really_exits_with_code_3() -> None:
    async with raw_child("--crash-after-calls", "2") as child:
        await child.initialize()
        await child.send("tools/call", {"name": "echo", "arguments": {"text": "one"}}, id=1)
        assert (await child.recv())["id"] == 1
        await child.send("tools/call", {"name": "echo", "arguments": {"text": "two"}}, id=2)
        assert await child.exit_code() == 3


async def test_crash_on_start_exits_with_the_given_code_before_reading() -> None:
    async with raw_child("--crash-on-start", "7") as child:
        assert await child.exit_code() == 7


async def test_hang_after_calls_answers_n_calls_then_goes_silent_but_stays_alive() -> None:
    async with raw_child("--hang-after-calls", "1") as child:
        await child.initialize()
        await child.send("tools/call", {"name": "echo", "arguments": {"text": "x"}}, id=1)
        assert (await child.recv())["id"] == 1
        await child.send("ping", id=2)
        with anyio.move_on_after(0.3) as silent:
            await child.recv()
        assert silent.cancelled_caught and child.proc.returncode is None


async def test_slow_tool_reports_progress_without_blocking_other_requests(tmp_path: Path) -> None:
    progress: list[float] = []
    first_progress = anyio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)
        first_progress.set()

    async with sdk_session(FIXTURE, cwd=tmp_path) as session:
        result: list[str] = []

        async def slow() -> None:
            result.append(text_of(await session.call_tool("slow", {"seconds": 0.5}, progress_callback=on_progress)))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                await first_progress.wait()
                # Answered while `slow` is still in flight.
                assert text_of(await session.call_tool("echo", {"text": "meanwhile"})) == "meanwhile"
                assert not result
    assert result == ["slept 0.5 s"]
    assert len(progress) >= 3 and progress == sorted(progress)


async def test_a_cancelled_slow_call_is_never_answered() -> None:
    async with raw_child() as child:
        await child.initialize()
        await child.send("tools/call", {"name": "slow", "arguments": {"seconds": 0.2}}, id=5)
        await child.send("notifications/cancelled", {"requestId": 5})
        await child.send("tools/call", {"name": "slow", "arguments": {"seconds": 0.4}}, id=6)
        # Had 5 not been cancelled, its answer would have come first.
        assert (await child.recv())["id"] == 6


async def test_textkit_lists_and_answers(tmp_path: Path) -> None:
    async with sdk_session(EXAMPLES / "textkit.py", cwd=tmp_path) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert names == {"word_count", "slugify", "extract_urls", "diff_lines", "hash_text"}
        assert (await session.call_tool("slugify", {"text": "Crème Brûlée!"})).structured_content == {
            "result": "creme-brulee"
        }
        digest = (await session.call_tool("hash_text", {"text": "abc", "algorithm": "md5"})).structured_content
        assert digest == {"algorithm": "md5", "hexdigest": "900150983cd24fb0d6963f7d28e17f72"}
        counted = (await session.call_tool("word_count", {"text": "a b\nA"})).structured_content
        assert counted == {"words": 3, "unique_words": 2, "characters": 5, "lines": 2}
        urls = await session.call_tool("extract_urls", {"text": "see (https://a.io/x), https://b.org."})
        assert urls.structured_content == {"result": ["https://a.io/x", "https://b.org"]}
        prompt = await session.get_prompt("rewrite", {"text": "hey", "tone": "formal"})
        assert "formal" in prompt.messages[0].content.text


async def test_notes_persist_across_two_server_runs(tmp_path: Path) -> None:
    notes = EXAMPLES / "notes.py"
    async with sdk_session(notes, cwd=tmp_path) as session:
        assert {t.name for t in (await session.list_tools()).tools} == {
            "add_note", "list_notes", "search_notes", "delete_note"
        }
        await session.call_tool("add_note", {"title": "Milk", "body": "buy oat milk", "tags": ["Shop"]})
        await session.call_tool("add_note", {"title": "Call", "body": "ring the dentist"})
        deleted = await session.call_tool("delete_note", {"id": 2})
        assert deleted.structured_content is not None and deleted.structured_content["title"] == "Call"
        missing = await session.call_tool("delete_note", {"id": 99})
        assert missing.is_error and "no note with id 99" in text_of(missing)
    assert (tmp_path / "notes.json").is_file()

    async with sdk_session(notes, cwd=tmp_path) as session:
        listed = (await session.call_tool("list_notes", {"tag": "shop"})).structured_content
        assert listed is not None and [n["title"] for n in listed["result"]] == ["Milk"]
        found = (await session.call_tool("search_notes", {"query": "OAT"})).structured_content
        assert found is not None and len(found["result"]) == 1
        one = await session.read_resource("notes://1")
        assert json.loads(one.contents[0].text)["body"] == "buy oat milk"
        summary = await session.get_prompt("summarize_notes", {})
        assert "Milk" in summary.messages[0].content.text
