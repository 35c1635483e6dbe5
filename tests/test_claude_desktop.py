"""Claude Desktop launches exactly the README's `mcpServers` entry: an absolute command, no
working folder of ours, and an environment holding only PATH and HOME. A whole session
(handshake, listings, a child's tool, the supervisor's status) must work that way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.install_support import ROOT, source_copy

pytestmark = pytest.mark.anyio
PLACEHOLDER = "/path/to/metasup-mcp"
START = 60  # two example servers, each about 1 s of `import mcp`, on a loaded 2-core machine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def readme_snippet() -> dict[str, object]:
    """The JSON block under the README's `### Claude Desktop` heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Claude Desktop", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, "README.md: no ```json block under ### Claude Desktop"
    return json.loads(block.group(1))


async def test_the_readme_snippet_runs_a_session_from_another_folder_with_only_path_and_home(tmp_path: Path) -> None:
    checkout = source_copy(tmp_path / "metasup-mcp")
    (checkout / ".venv").symlink_to(ROOT / ".venv")  # the README's install step, already done
    entry = readme_snippet()["mcpServers"]["metasup"]  # type: ignore[index]
    command = entry["command"].replace(PLACEHOLDER, str(checkout))
    args = [arg.replace(PLACEHOLDER, str(checkout)) for arg in entry["args"]]
    elsewhere, home = tmp_path / "desktop-cwd", tmp_path / "home"
    elsewhere.mkdir()
    home.mkdir()
    # `env -i` so the server sees PATH and HOME only (the SDK's client adds a few more).
    params = StdioServerParameters(
        command="/usr/bin/env", args=["-i", "PATH=/usr/local/bin:/usr/bin:/bin", f"HOME={home}", command, *args],
        cwd=str(elsewhere),
    )
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    with open(tmp_path / "stderr.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write, message_handler=on_message) as session:
                with anyio.fail_after(START):
                    init = await session.initialize()
                    assert init.server_info.name == "metasup-mcp"
                    while not {"notes__add_note", "textkit__slugify"} <= {t.name for t in (await session.list_tools()).tools}:
                        await changed.wait()
                        changed = anyio.Event()
                slug = await session.call_tool("textkit__slugify", {"text": "Hello Claude Desktop"})
                assert not slug.is_error and "hello-claude-desktop" in slug.content[0].text
                status = await session.call_tool("server_status", {})
                servers = status.structured_content["servers"]
                assert {servers[name]["state"] for name in ("notes", "textkit")} == {"running"}
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert (checkout / ".metasup-workspace" / ".git").is_dir() and not (elsewhere / ".metasup").exists()
