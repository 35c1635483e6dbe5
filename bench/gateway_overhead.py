"""What the gateway costs: the same client calls an echo tool N times directly, through
`metasup-mcp serve`, and through FastMCP's proxy, all over stdio, and prints median and p99
of each and their ratios to direct.

    .venv/bin/python bench/gateway_overhead.py                 # fixture child, 1000 calls each
    .venv/bin/python bench/gateway_overhead.py --child sdk     # an SDK (MCPServer) echo child
    .venv/bin/python bench/gateway_overhead.py --profile       # also: where the supervisor spends a call

Targets: against an SDK child, median <= 1.3x and p99 <= 1.5x direct; against the raw fixture
child, at most 0.5 ms added to the median. Peers in the same run: a naive proxy (the SDK's
low-level server in front of an SDK client session) and FastMCP's proxy (`pip install -e
'.[bench]'`; skipped with a note when not installed).
Each leg runs in its own fresh processes; legs alternate in rounds so that drift in machine
load hits them alike.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import pstats
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "child.py"
READY_TIMEOUT = 30.0

SDK_ECHO = """
from mcp.server import MCPServer
mcp = MCPServer("echo")

@mcp.tool()
def echo(text: str) -> str:
    "Return the text unchanged."
    return text

mcp.run()
"""

FASTMCP_PROXY = """
import sys
from fastmcp.server import create_proxy
config = {"mcpServers": {"echo": {"command": sys.argv[1], "args": sys.argv[2:]}}}
create_proxy(config, name="proxy").run(show_banner=False)
"""


# The naive proxy the issue measured: the SDK's low-level server in front of an SDK client session.
NAIVE_PROXY = """
import sys
import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.server import Server
from mcp.server.stdio import stdio_server

async def main():
    params = StdioServerParameters(command=sys.argv[1], args=sys.argv[2:])
    async with stdio_client(params) as (r, w), ClientSession(r, w) as child:
        await child.initialize()

        async def list_tools(ctx, params):
            return await child.list_tools()

        async def call_tool(ctx, params):
            return await child.call_tool(params.name, params.arguments)

        server = Server("naive", on_list_tools=list_tools, on_call_tool=call_tool)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

anyio.run(main)
"""


def child_argv(kind: str, workdir: Path) -> list[str]:
    if kind == "fixture":
        return [sys.executable, "-u", str(FIXTURE)]
    script = workdir / "sdk_echo.py"
    script.write_text(textwrap.dedent(SDK_ECHO))
    return [sys.executable, "-u", str(script)]


def legs(kind: str, workdir: Path, with_fastmcp: bool) -> dict[str, tuple[StdioServerParameters, str]]:
    argv = child_argv(kind, workdir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    config = {
        "supervisor": {
            "workspace": str(workdir / "workspace"),
            "state_dir": str(workdir / "state"),
            "status_http": {"enabled": False},
            "health_checks": {"interval": "30s"},
            "mcp_servers": [{"name": "echo", "command": argv[0], "args": argv[1:]}],
        }
    }
    (workdir / "servers.yaml").write_text(yaml.safe_dump(config))
    found: dict[str, tuple[StdioServerParameters, str]] = {
        "direct": (StdioServerParameters(command=argv[0], args=argv[1:], env=env), "echo"),
        "metasup": (
            StdioServerParameters(
                command=sys.executable,
                args=["-m", "metasup_mcp.cli", "--log-level", "WARNING", "serve",
                      "--config", str(workdir / "servers.yaml")],
                env=env,
            ),
            "echo__echo",
        ),
    }
    naive = workdir / "naive_proxy.py"
    naive.write_text(textwrap.dedent(NAIVE_PROXY))
    found["naive"] = (StdioServerParameters(command=sys.executable, args=[str(naive), *argv], env=env), "echo")
    if with_fastmcp:
        proxy = workdir / "fastmcp_proxy.py"
        proxy.write_text(textwrap.dedent(FASTMCP_PROXY))
        found["fastmcp"] = (StdioServerParameters(command=sys.executable, args=[str(proxy), *argv], env=env), "echo")
    return found


async def timed_calls(params: StdioServerParameters, tool: str, calls: int, warmup: int) -> list[float]:
    """Latencies (seconds) of `calls` sequential calls, after `warmup` untimed ones."""
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            with anyio.fail_after(READY_TIMEOUT):
                await session.initialize()
                while tool not in {t.name for t in (await session.list_tools()).tools}:
                    await anyio.sleep(0.05)  # the supervisor lists a child's tools once it is up
            for _ in range(warmup):
                await session.call_tool(tool, {"text": "warm"})
            latencies = []
            for i in range(calls):
                started = time.perf_counter()
                result = await session.call_tool(tool, {"text": f"call {i}"})
                latencies.append(time.perf_counter() - started)
                assert not result.is_error, result
            return latencies


# Where a call's time goes in the supervisor process, by the code that spends it (cProfile tottime).
AREAS = [
    ("idle: waiting on pipes (epoll)", ("'poll' of 'select.epoll'",)),
    ("stdio_server thread hops (readline, write, flush)", ("run_sync_in_worker_thread", "anyio/to_thread",
                                                          "_fileio", "threading.py", "queue.py", "'_thread.lock'")),
    ("pydantic validation and serialisation", ("pydantic", "mcp_types", "SchemaValidator", "SchemaSerializer")),
    ("OpenTelemetry spans", ("opentelemetry",)),
    ("MCP SDK dispatch (server runner, dispatchers, sessions)", ("mcp/shared", "mcp/server", "mcp/client")),
    ("metasup (gateway, child pumps, supervision)", ("metasup_mcp",)),
    ("event loop, tasks, cancel scopes, memory streams", ("asyncio", "anyio", "selectors", "contextvars",
                                                          "get_running_loop", "sniffio")),
]


def profile_areas(path: Path) -> collections.Counter[str]:
    """Seconds spent by area, from a cProfile dump of the supervisor."""
    spent: collections.Counter[str] = collections.Counter()
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, _) in stats.items():
        where = f"{filename}:{function}"
        area = next((name for name, marks in AREAS if any(m in where for m in marks)), "other")
        spent[area] += tottime
    return spent


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99 + 0.5) - 1)]


async def main(args: argparse.Namespace) -> None:
    with_fastmcp = importlib.util.find_spec("fastmcp") is not None
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        plan = legs(args.child, Path(tmp), with_fastmcp)
        results: dict[str, list[float]] = {name: [] for name in plan}
        per_round = max(1, args.calls // args.rounds)
        for _ in range(args.rounds):
            for name, (params, tool) in plan.items():
                results[name] += await timed_calls(params, tool, per_round, args.warmup)
    direct_median, direct_p99 = statistics.median(results["direct"]), p99(results["direct"])
    print(f"echo tool, {args.child} child, {len(results['direct'])} calls per leg over stdio ({args.rounds} rounds)")
    print(f"{'leg':<10}{'median ms':>11}{'p99 ms':>9}{'median x':>10}{'p99 x':>8}{'added ms':>10}")
    for name, values in results.items():
        median, tail = statistics.median(values), p99(values)
        ratios = f"{median / direct_median:>10.2f}{tail / direct_p99:>8.2f}{(median - direct_median) * 1000:>10.3f}"
        print(f"{name:<10}{median * 1000:>11.3f}{tail * 1000:>9.3f}{ratios}")
    if not with_fastmcp:
        print("fastmcp: not installed (pip install -e '.[bench]'); peer leg skipped")
    median, tail = statistics.median(results["metasup"]), p99(results["metasup"])
    if args.child == "sdk":
        verdict = median <= 1.3 * direct_median and tail <= 1.5 * direct_p99
        print(f"target (SDK child: median <= 1.3x, p99 <= 1.5x direct): {'met' if verdict else 'missed'}")
    else:
        verdict = median - direct_median <= 0.0005
        print(f"target (raw child: median adds <= 0.5 ms): {'met' if verdict else 'missed'}")
    if args.profile:
        await profile_supervisor(args, plan_args=(args.child, with_fastmcp))


async def profile_supervisor(args: argparse.Namespace, plan_args: tuple[str, bool]) -> None:
    """Profile the supervisor leg twice (no calls, then N calls) and print the difference per call:
    start-up and imports cancel out, what remains is what one call costs, by area."""
    spent = []
    for calls in (0, args.calls):
        with tempfile.TemporaryDirectory(prefix="gateway-profile-") as tmp:
            params, tool = legs(plan_args[0], Path(tmp), False)["metasup"]
            dump = Path(tmp) / "supervisor.prof"
            profiled = StdioServerParameters(
                command=params.command, args=["-m", "cProfile", "-o", str(dump), *params.args], env=params.env
            )
            await timed_calls(profiled, tool, calls, 0)  # the dump is written once stdin closes
            with anyio.fail_after(READY_TIMEOUT):
                while not dump.exists():
                    await anyio.sleep(0.05)
            spent.append(profile_areas(dump))
    per_call = {area: (spent[1][area] - spent[0][area]) / args.calls * 1e6 for area in spent[1]}
    print("\nsupervisor process under cProfile, microseconds per call (the profiler inflates them):")
    for area, micros in sorted(per_call.items(), key=lambda item: -item[1]):
        print(f"  {micros:8.1f}  {area}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per leg (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per leg and round first")
    parser.add_argument("--rounds", type=int, default=10, help="alternate the legs this many times")
    parser.add_argument("--child", choices=["fixture", "sdk"], default="fixture")
    parser.add_argument("--profile", action="store_true", help="then profile the supervisor leg (cProfile)")
    anyio.run(main, parser.parse_args())
