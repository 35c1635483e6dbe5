"""Load through restarts: concurrent streamable-HTTP sessions call a child's tool while another
session restarts that child every 2 s. Every call must end within its bound (no hung call)
with either the right answer or a structured error (`structuredContent` naming the server and
a `reason`); the figures are printed.

    .venv/bin/python bench/http_load.py                          # 8 sessions x 1,000 calls
    .venv/bin/python bench/http_load.py --sessions 4 --calls 200 --pause 0.01

`tests/test_http_load.py` runs a slice of the same through `drive()`.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "child.py"
READY_TIMEOUT = 30.0
CALL_BOUND = 30.0  # a call that takes longer than this counts as hung (call_wait 5 s + call_timeout 10 s + slack)


@dataclass
class LoadResult:
    calls: int = 0
    ok: int = 0
    wrong: int = 0  # answered, but not with what was sent
    structured_errors: Counter[str] = field(default_factory=Counter)  # by reason
    unstructured: list[str] = field(default_factory=list)
    hung: int = 0
    restarts: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        errors = ", ".join(f"{reason} {n}" for reason, n in sorted(self.structured_errors.items())) or "none"
        return (
            f"{self.calls} calls in {self.seconds:.1f}s through {self.restarts} restarts: {self.ok} ok, "
            f"{sum(self.structured_errors.values())} structured errors ({errors}), {len(self.unstructured)} "
            f"unstructured, {self.wrong} wrong answers, {self.hung} hung; latency median "
            f"{statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.0f} ms"
        )


async def drive(url: str, sessions: int, calls: int, restart_every: float = 2.0, pause: float = 0.0,
                server: str = "fx", bound: float = CALL_BOUND) -> LoadResult:
    """`sessions` clients × `calls` calls of `<server>__echo`, while `server` restarts every `restart_every`."""
    result = LoadResult()
    started = time.perf_counter()

    async def client(index: int) -> None:
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            for n in range(calls):
                text = f"{index}-{n}"
                begun = time.perf_counter()
                result.calls += 1
                with anyio.move_on_after(bound) as scope:
                    try:
                        answer = await session.call_tool(f"{server}__echo", {"text": text})
                    except MCPError as exc:
                        result.unstructured.append(f"MCPError {exc.code}: {exc}")
                        continue
                if scope.cancelled_caught:
                    result.hung += 1
                    continue
                result.latencies.append(time.perf_counter() - begun)
                if answer.is_error:
                    details = answer.structured_content or {}
                    if details.get("server") == server and details.get("reason"):
                        result.structured_errors[str(details["reason"])] += 1
                    else:
                        result.unstructured.append(str(answer.content[0].text if answer.content else answer))
                elif answer.content and getattr(answer.content[0], "text", None) == text:
                    result.ok += 1
                else:
                    result.wrong += 1
                if pause:
                    await anyio.sleep(pause)

    async def restarter(done: anyio.Event) -> None:
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            while not done.is_set():
                with anyio.move_on_after(restart_every):
                    await done.wait()
                if done.is_set():
                    return
                await session.call_tool("restart_server", {"name": server})
                result.restarts += 1

    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(restarter, done)
        async with anyio.create_task_group() as clients:
            for index in range(sessions):
                clients.start_soon(client, index)
        done.set()
    result.seconds = time.perf_counter() - started
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, extra_env: dict[str, str] | None = None) -> Path:
    config = {
        "supervisor": {
            "workspace": "workspace", "state_dir": "state", "min_runtime": "500ms",
            "status_http": {"enabled": False},
            "restart": {"backoff_initial": "100ms", "backoff_max": "1s"},
            "mcp_servers": [{"name": "fx", "command": "python", "args": ["-u", str(FIXTURE)],
                             "env": extra_env or {}, "call_wait": "5s", "call_timeout": "10s"}],
        }
    }
    path = folder / "servers.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    with anyio.fail_after(READY_TIMEOUT):
        while True:
            try:
                async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
                    await session.initialize()
                    if "fx__echo" in {tool.name for tool in (await session.list_tools()).tools}:
                        return
            except Exception:  # noqa: BLE001 — not listening yet
                pass
            if process.poll() is not None:
                raise RuntimeError(f"the supervisor exited with {process.returncode}")
            await anyio.sleep(0.2)


def start_supervisor(config: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "metasup_mcp.cli", "serve", "--config", str(config),
         "--transport", "http", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--restart-every", type=float, default=2.0)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between one session's calls")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        process = start_supervisor(write_config(Path(folder)), port)
        url = f"http://127.0.0.1:{port}/mcp"
        try:
            anyio.run(wait_ready, url, process)
            result = anyio.run(drive, url, args.sessions, args.calls, args.restart_every, args.pause)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"{args.sessions} sessions x {args.calls} calls, child restarted every {args.restart_every:g}s")
    print(result.summary())
    for line in result.unstructured[:5]:
        print(f"  unstructured: {line}")
    return 0 if result.hung == 0 and not result.unstructured and result.wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
