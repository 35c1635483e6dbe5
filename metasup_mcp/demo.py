"""`metasup-mcp demo`: a narrated tour in a temporary workspace, talking to a real supervisor.

It runs `metasup-mcp serve` as a subprocess and drives it over stdio with an MCP client, the
way Claude Desktop would. The narration goes to stdout (this process is not the MCP server).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client

from metasup_mcp.safety.audit import verify_audit_log

EXAMPLES = Path(__file__).parent / "examples"

CONFIG = """\
supervisor:
  workspace: workspace
  workspace_template: {examples}
  state_dir: state
  data_paths: [notes.json]
  min_runtime: 3s
  max_failures: 50
  health_checks: {{interval: 1s, probe_timeout: 2s, failure_threshold: 2}}
  restart: {{backoff_initial: 500ms, max_restarts: 3, restart_window: 60s}}
  status_http: {{enabled: true, host: 127.0.0.1, port: {port}}}
  mcp_servers:
    - name: notes
      command: python
      args: [-u, notes.py]
      watch: [notes.py]
    - name: textkit
      command: python
      args: [-u, textkit.py]
      watch: [textkit.py]
    - name: flaky
      command: python
      args: [-c, "import sys; print('flaky: cannot start, config missing', file=sys.stderr); sys.exit(1)"]
      watch: [flaky/]
"""


def say(text: str, indent: str = "") -> None:
    print(textwrap.fill(text, width=88, initial_indent=indent, subsequent_indent=indent), flush=True)


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


async def _status(session: ClientSession, name: str | None = None) -> dict[str, Any]:
    result = await session.call_tool("server_status", {"name": name} if name else {})
    assert result.structured_content is not None
    return result.structured_content


async def _until(session: ClientSession, name: str, predicate: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        server = (await _status(session, name))["servers"][name]
        if predicate(server) or time.monotonic() > deadline:
            return server
        await anyio.sleep(0.2)


async def _propose(session: ClientSession, title: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
    result = await session.call_tool("propose_change", {"title": title, "changes": changes})
    assert result.structured_content is not None, result
    return result.structured_content


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _tour(root: Path) -> int:
    started = time.monotonic()
    port = _free_port()
    config = root / "servers.yaml"
    config.write_text(CONFIG.format(examples=EXAMPLES, port=port))
    tools_changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            tools_changed.set()

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "metasup_mcp.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
        env={**os.environ},
    )
    step("1. Start the supervisor")
    say(f"`metasup-mcp serve` reads {config}: two example servers (notes, textkit) and one that "
        "cannot start (flaky). We talk to it over stdio, as Claude Desktop would.")
    async with stdio_client(params) as (read, write), ClientSession(read, write, message_handler=on_message) as session:
        await session.initialize()
        tools = [tool.name for tool in (await session.list_tools()).tools]
        print(f"   tools offered: {', '.join(tools)}")

        step("2. The children come up")
        for name in ("notes", "textkit"):
            server = await _until(session, name, lambda s: s["state"] == "running", 30)
            print(f"   {name}: {server['state']}, pid {server['pid']}, {server['tools']} tools")

        step("3. Call a child's tool through the supervisor")
        tools = [tool.name for tool in (await session.list_tools()).tools]
        print(f"   {len(tools)} tools now, the children's under their namespace: "
              f"{', '.join(t for t in tools if '__' in t)}")
        result = await session.call_tool("notes__add_note", {"title": "demo", "body": "supervised"})
        print(f"   notes__add_note -> {json.dumps(result.structured_content)}")

        step("4. Kill a child with SIGKILL and watch it come back")
        before = (await _status(session, "textkit"))["servers"]["textkit"]
        os.kill(before["pid"], signal.SIGKILL)
        print(f"   killed textkit pid {before['pid']}")
        after = await _until(
            session, "textkit", lambda s: s["state"] == "running" and s["pid"] != before["pid"], 30
        )
        print(f"   textkit is {after['state']} again: new pid {after['pid']}, restarts {after['restarts']}, "
              f"last exit: {after['last_exit']['reason'] if after['last_exit'] else '-'}")

        step("5. A crash-looping child ends fatal instead of burning the CPU")
        flaky = await _until(session, "flaky", lambda s: s["state"] == "fatal", 60)
        print(f"   flaky: {flaky['state']} after {flaky['restarts']} restarts")
        print(f"   last error: {flaky['last_error']}")
        logs = await session.call_tool("server_logs", {"name": "flaky", "lines": 2})
        print("   its stderr: " + " | ".join((logs.structured_content or {}).get("lines", [])))

        step("6. An agent changes a child's code: a good change is kept")
        source = (root / "workspace" / "textkit.py").read_text()
        shout = source.replace(
            '\n\nif __name__ == "__main__":',
            '\n\n@mcp.tool()\ndef shout(text: str) -> str:\n    """Upper-case the text."""\n'
            '    return text.upper() + "!"\n\n\nif __name__ == "__main__":',
        )
        tools_changed = anyio.Event()
        good = await _propose(session, "add a shout tool to textkit", [{"path": "textkit.py", "content": shout}])
        say(f"verdict {good['verdict']}: committed {str(good['commit'])[:12]}, checks "
            f"{', '.join(c['name'] + (' ok' if c['ok'] else ' FAILED') for c in good['checks'])}; "
            f"restarted {', '.join(good['restarted'])} and watched it for min_runtime; it is the new last good.",
            indent="   ")
        with anyio.move_on_after(10):
            await tools_changed.wait()
        if tools_changed.is_set() and "textkit__shout" in [t.name for t in (await session.list_tools()).tools]:
            print("   the client got notifications/tools/list_changed: textkit__shout appeared")
        if "textkit__shout" in [t.name for t in (await session.list_tools()).tools]:
            result = await session.call_tool("textkit__shout", {"text": "it works"})
            print(f"   textkit__shout -> {result.content[0].text if result.content else result}")

        step("7. A change that breaks the server at import is rolled back automatically")
        broken = shout.replace("import logging", "import logging\nimport no_such_module", 1)
        bad = await _propose(session, "use a module that is not installed", [{"path": "textkit.py", "content": broken}])
        say(f"verdict {bad['verdict']}, trigger {bad['trigger']}: the workspace is back on last good; "
            f"the bad commit {str(bad['commit'])[:12]} stays reachable as {bad['rejected_ref']}.", indent="   ")
        print("   evidence: " + bad["reasons"][-1].splitlines()[-1][:100])
        textkit = await _until(session, "textkit", lambda s: s["state"] == "running", 30)
        print(f"   textkit: {textkit['state']}, pid {textkit['pid']} — still serving the good code")

        step("8. Every step is in a hash-chained audit log")
        verdict = verify_audit_log(root / "state" / "audit.jsonl")
        print(f"   metasup-mcp audit verify: {'OK' if verdict.ok else 'FAILED'}, {verdict.entries} entries, "
              f"{'hash chain intact' if verdict.ok else verdict.problem}")

        step("9. Status for people and for Prometheus")
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url + "supervisor/status", timeout=5) as response:
            servers = json.load(response)["servers"]
        print(f"   dashboard: {url}  (also {url}supervisor/status and {url}metrics)")
        print("   " + ", ".join(f"{name} {server['state']}" for name, server in servers.items()))

        step("10. Stop")
        say("Closing the client's stdin stops the supervisor, and the supervisor stops every child: "
            "no process is left behind.")
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
    return 0


def run_demo(keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="metasup-demo-"))
    print(f"Demo workspace: {root}")
    try:
        return anyio.run(_tour, root)
    finally:
        if not keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
