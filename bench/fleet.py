"""What a fleet costs: 50 raw children x 20 tools behind one `metasup-mcp serve`, at a 1 s health
interval, measured in one run beside a supervisor of one child.

    .venv/bin/python bench/fleet.py [--children 50] [--tools 20] [--idle 10] [--calls 3000]

Printed, each with its target (issue: "performance at the limit"):
- startup: `initialize` answered while children are still starting (how many were running);
- idle supervisor CPU (% of one core, over --idle seconds) and RSS, children excluded;
- `tools/list` of every tool (median of 30), timed at the wire;
- a call's cost with 50 children against 1 child (medians of interleaved rounds, ratio), calls
  to one of the 50, and calls spread over the 50 end to end; then, with the same client talking
  directly to 50 fixture children (round-robin) and to 1, the cost the supervisor adds to a call
  spread over 50 against the cost it adds with 1 child (see `report_calls`);
- restart: a child past `stable_after` killed with SIGKILL: time to a new pid, and until its
  tool answers again, against its own start time measured directly;
- hang detection: a child that stops reading, against interval x failure_threshold + probe_timeout.

The client is a raw JSON-RPC line client, so that figures are the supervisor's, not a client
SDK's parsing of 1,000 tools.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import yaml
from anyio.abc import Process

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "child.py"
INTERVAL, THRESHOLD, PROBE_TIMEOUT, STABLE_AFTER = 1.0, 3, 1.0, 2.0
ROUNDS = 30  # call legs interleaved finely: a burst of load on the machine hits every leg


class RawClient:
    """Newline-delimited JSON-RPC over a process's stdio; notifications are dropped."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._buffer = b""

    async def pump(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                message = json.loads(line)
                waiter = self._waiting.pop(message.get("id"), None) if "method" not in message else None
                if waiter is not None:
                    waiter[1].append(message)
                    waiter[0].set()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, anyio.Event, list[Any]]:
        assert self.process.stdin is not None
        rid, done, box = next(self._ids), anyio.Event(), []
        self._waiting[rid] = (done, box)
        message = {"jsonrpc": "2.0", "id": rid, "method": method, **({"params": params} if params else {})}
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")
        return rid, done, box

    async def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        _, done, box = await self.send(method, params)
        with anyio.fail_after(timeout):
            await done.wait()
        if "error" in box[0]:
            raise RuntimeError(f"{method}: {box[0]['error']}")
        return box[0]["result"]

    async def initialize(self) -> Any:
        result = await self.request("initialize", {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
        assert self.process.stdin is not None
        await self.process.stdin.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        return result

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return await self.request("tools/call", {"name": tool, "arguments": arguments})

    async def server(self, name: str) -> dict[str, Any]:
        result = await self.call("server_status", {"name": name})
        return result["structuredContent"]["servers"][name]


def write_config(workdir: Path, name: str, children: int, tools: int) -> Path:
    extra = max(0, tools - 5)  # the fixture has 5 tools of its own
    servers = [
        {"name": f"c{i:02d}", "command": sys.executable, "args": ["-u", str(FIXTURE), "--extra-tools", str(extra)]}
        for i in range(children)
    ]
    config = {"supervisor": {
        "workspace": str(workdir / f"{name}-workspace"), "state_dir": str(workdir / f"{name}-state"),
        "min_runtime": "0.5s", "status_http": {"enabled": False},
        "health_checks": {"interval": f"{INTERVAL}s", "probe_timeout": f"{PROBE_TIMEOUT}s",
                          "failure_threshold": THRESHOLD},
        "restart": {"stable_after": f"{STABLE_AFTER}s", "backoff_initial": "1s"},
        "mcp_servers": servers,
    }}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def serve(config: Path) -> Process:
    argv = [sys.executable, "-m", "metasup_mcp.cli", "--log-level", "WARNING", "serve", "--config", str(config)]
    return await anyio.open_process(argv, stderr=None if os.environ.get("BENCH_STDERR") else -3)


async def start_direct(tools: int) -> tuple[Process, RawClient]:
    """A fixture child as the supervisor runs it, spoken to directly (no supervisor)."""
    argv = [sys.executable, "-u", str(FIXTURE), "--extra-tools", str(max(0, tools - 5))]
    process = await anyio.open_process(argv, stderr=-3)
    return process, RawClient(process)


async def own_start_time() -> float:
    """Spawn to tools/list answered, for one fixture child run directly (median of 5)."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        process = await anyio.open_process([sys.executable, "-u", str(FIXTURE)], stderr=-3)
        client = RawClient(process)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.pump)
            await client.initialize()
            await client.request("tools/list")
            times.append(time.perf_counter() - started)
            tg.cancel_scope.cancel()
        process.kill()
        await process.wait()
    return statistics.median(times)


async def wait_for(predicate: Any, timeout: float, interval: float = 0.002) -> float:
    started = time.perf_counter()
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(interval)
    return time.perf_counter() - started


def row(figure: str, value: str, target: str, met: bool | None) -> None:
    verdict = "" if met is None else ("met" if met else "MISSED")
    print(f"{figure:<46}{value:>22}  {target:<34}{verdict}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        workdir = Path(tmp)
        fleet_cfg = write_config(workdir, "fleet", args.children, args.tools)
        single_cfg = write_config(workdir, "single", 1, args.tools)
        own = await own_start_time()
        started = time.perf_counter()
        fleet_proc = await serve(fleet_cfg)
        fleet = RawClient(fleet_proc)
        single_proc = await serve(single_cfg)
        single = RawClient(single_proc)
        async with anyio.create_task_group() as tg:
            tg.start_soon(fleet.pump)
            tg.start_soon(single.pump)
            await fleet.initialize()
            init_s = time.perf_counter() - started
            status = (await fleet.call("server_status", {}))["structuredContent"]["servers"]
            running_at_init = sum(s["state"] == "running" for s in status.values())
            expected = args.children * args.tools

            async def all_listed() -> bool:
                tools = (await fleet.request("tools/list"))["tools"]
                return sum("__" in t["name"] for t in tools) >= expected

            await wait_for(all_listed, 120, 0.05)
            all_s = time.perf_counter() - started
            await single.initialize()
            await wait_for(lambda: _has(single, "c00__echo"), 60, 0.05)

            print(f"{args.children} fixture children x {args.tools} tools, health interval {INTERVAL:g}s; "
                  f"machine: {os.cpu_count()} cores, {sys.platform}, Python {sys.version.split()[0]}")
            print(f"{'figure':<46}{'measured':>22}  {'target':<34}")
            row("startup: initialize answered after", f"{init_s * 1000:.0f} ms", "before all children start",
                running_at_init < args.children)
            row("  children running at that moment", f"{running_at_init}/{args.children}", "", None)
            row("  all tools listed after", f"{all_s * 1000:.0f} ms", "", None)

            await anyio.sleep(2)  # let start-up work settle before measuring idle
            sup = psutil.Process(fleet_proc.pid)
            before, t0 = sup.cpu_times(), time.perf_counter()
            await anyio.sleep(args.idle)
            after, wall = sup.cpu_times(), time.perf_counter() - t0
            cpu = (after.user + after.system - before.user - before.system) / wall * 100
            rss = sup.memory_info().rss / 2**20
            row("idle supervisor CPU (% of a core)", f"{cpu:.1f} %", "<= 5 %", cpu <= 5)
            row("supervisor RSS (children excluded)", f"{rss:.0f} MB", "<= 150 MB", rss <= 150)

            listing = []
            for _ in range(30):
                t = time.perf_counter()
                count = len((await fleet.request("tools/list"))["tools"])
                listing.append(time.perf_counter() - t)
            median_list = statistics.median(listing) * 1000
            row(f"tools/list of {count} tools (median of 30)", f"{median_list:.1f} ms", "<= 25 ms", median_list <= 25)

            direct = [await start_direct(args.tools) for _ in range(args.children + 1)]
            try:
                for _, client in direct:
                    tg.start_soon(client.pump)
                    await client.initialize()
                direct_fleet, direct_one = [c for _, c in direct[:-1]], direct[-1][1]
                legs = {
                    "spread": [(fleet, f"c{i:02d}__echo") for i in range(args.children)],
                    "same": [(fleet, "c00__echo")],
                    "alone": [(single, "c00__echo")],
                    "direct spread": [(c, "echo") for c in direct_fleet],
                    "direct one": [(direct_one, "echo")],
                }
                median = {leg: statistics.median(values) * 1000
                          for leg, values in (await time_calls(legs, args.calls)).items()}
            finally:
                for process, _ in direct:
                    process.kill()
                    await process.wait()
            report_calls(median, args.children)

            victim = "c01"
            old_pid = (await fleet.server(victim))["pid"]
            os.kill(old_pid, signal.SIGKILL)
            killed = time.perf_counter()

            async def respawned() -> bool:
                pid = (await fleet.server(victim))["pid"]
                return pid is not None and pid != old_pid

            await wait_for(respawned, 10)
            respawn = time.perf_counter() - killed

            async def callable_again() -> bool:
                return not (await fleet.call(f"{victim}__echo", {"text": "x"})).get("isError")

            await wait_for(callable_again, 10)
            back = time.perf_counter() - killed
            row("restart: SIGKILL to new pid", f"{respawn * 1000:.0f} ms", "<= 50 ms", respawn <= 0.05)
            row("restart: SIGKILL to tool answering", f"{back * 1000:.0f} ms",
                f"<= own start {own * 1000:.0f} + 150 ms", back <= own + 0.15)

            hung = "c02"
            old_pid = (await fleet.server(hung))["pid"]
            await fleet.send("tools/call", {"name": f"{hung}__hang", "arguments": {}})
            t = time.perf_counter()

            async def judged_hung() -> bool:  # the supervisor stops it (stopping), then restarts it
                server = await fleet.server(hung)
                return server["state"] != "running" or server["pid"] != old_pid

            await wait_for(judged_hung, 30, 0.01)
            detect = time.perf_counter() - t
            bound = INTERVAL * THRESHOLD + PROBE_TIMEOUT
            row("hang judged (child stopped for restart) after", f"{detect:.2f} s", f"<= {bound:g} s (interval x {THRESHOLD} + probe)",
                detect <= bound)
            tg.cancel_scope.cancel()
        for process in (fleet_proc, single_proc):
            if process.stdin is not None:
                await process.stdin.aclose()
            with anyio.move_on_after(15):
                await process.wait()


async def time_calls(legs: dict[str, list[tuple[RawClient, str]]], calls: int) -> dict[str, list[float]]:
    """Seconds per call of each leg (`calls` each, round-robin over the leg's targets), in
    `ROUNDS` rounds with the legs interleaved and their order turned each round, after one
    untimed call to every target."""
    for targets in legs.values():
        for client, tool in targets:
            await client.call(tool, {"text": "x"})
    times: dict[str, list[float]] = {leg: [] for leg in legs}
    cycles = {leg: itertools.cycle(targets) for leg, targets in legs.items()}
    names, per_round = list(legs), max(1, calls // ROUNDS)
    for round_ in range(ROUNDS):
        for leg in names[round_ % len(names):] + names[:round_ % len(names)]:
            for _ in range(per_round):
                client, tool = next(cycles[leg])
                t = time.perf_counter()
                await client.call(tool, {"text": "x"})
                times[leg].append(time.perf_counter() - t)
    return times


def report_calls(median: dict[str, float], children: int) -> None:
    """The call rows: end to end against a supervisor of 1 child, then the supervisor's own share.

    End to end, a call spread over the children also pays for each child being cold (asleep,
    its caches taken by the others); the direct legs pay that too, with no supervisor. What the
    supervisor adds to a call is its leg minus the direct leg with as many children, and the
    target (a call's cost independent of the number of children) applies to that.
    """
    alone, direct_one = median["alone"], median["direct one"]
    same = median["same"] / alone
    row("call to one of them vs 1 child (median ratio)", f"{median['same']:.2f}/{alone:.2f} ms = {same:.2f}x",
        "<= 1.10x", same <= 1.10)
    spread = median["spread"] / alone
    row(f"call spread over {children} vs 1 child, end to end", f"{median['spread']:.2f}/{alone:.2f} ms = {spread:.2f}x",
        "none: the children's cost is in it", None)
    direct = median["direct spread"] / direct_one
    row(f"  no supervisor: direct, spread over {children} vs 1",
        f"{median['direct spread']:.2f}/{direct_one:.2f} ms = {direct:.2f}x", "(the control)", None)
    added_fleet, added_one = median["spread"] - median["direct spread"], alone - direct_one
    added = added_fleet / added_one if added_one > 0 else float("inf")  # a supervisor faster than direct: a broken run
    row(f"supervisor's added cost, spread over {children} vs 1",
        f"{added_fleet:.2f}/{added_one:.2f} ms = {added:.2f}x", "<= 1.10x", added <= 1.10)


async def _has(client: RawClient, tool: str) -> bool:
    return any(t["name"] == tool for t in (await client.request("tools/list"))["tools"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--tools", type=int, default=20, help="tools per child (at least the fixture's 5)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per leg, in 30 interleaved rounds")
    anyio.run(main, parser.parse_args())
