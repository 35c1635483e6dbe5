"""Shared test helpers: fast configs, a running `Supervisor`, deadline polling, and a guard
that fails any test leaving a process of its tree behind.

Every server written by `make_config` carries `METASUP_TEST=<token>` in its declared
environment; children and their grandchildren inherit it, so the guard finds them whether a
`Supervisor` in this process or a `metasup-mcp serve` subprocess started them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence, Set
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
import yaml

from metasup_mcp.children.process import INSTANCE_ENV_VAR
from metasup_mcp.config import load_config
from metasup_mcp.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "child.py"
EXAMPLES = ROOT / "metasup_mcp" / "examples"
TEST_MARK = "METASUP_TEST"

# Fast timings: a hung or breaching child is due after INTERVAL * THRESHOLD + PROBE_TIMEOUT.
INTERVAL = 0.25
PROBE_TIMEOUT = 0.5
THRESHOLD = 2
BACKOFF_INITIAL = 0.2
# Scheduling on a loaded 2-core machine; added to every detection bound.
SLACK = 1.0


# (what, seconds measured, bound) for the terminal summary: the detection times are a result.
TIMINGS: list[tuple[str, float, float]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers(*entries, **overrides): servers.yaml of the `supervisor` fixture")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("detection times")
        for what, seconds, bound in TIMINGS:
            terminalreporter.write_line(f"{what:<48} {seconds:6.2f} s  (bound {bound:.2f} s)")


def record_timing(what: str, seconds: float, bound: float) -> None:
    TIMINGS.append((what, seconds, bound))
    assert seconds <= bound, f"{what}: took {seconds:.2f}s, bound {bound:.2f}s"


@pytest.fixture
def pinned_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """git run by the test itself: a fixed identity, no user or system config."""
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "Test Person")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.invalid")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fixture_server(name: str, *flags: str, **fields: Any) -> dict[str, Any]:
    """A servers.yaml entry running the misbehaving fixture child with `flags`."""
    return {"name": name, "command": "python", "args": ["-u", str(FIXTURE), *flags], **fields}


def example_server(name: str) -> dict[str, Any]:
    """A servers.yaml entry running one of the SDK example servers (notes, textkit)."""
    return {"name": name, "command": "python", "args": ["-u", str(EXAMPLES / f"{name}.py")]}


class ConfigMaker:
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, tmp_path: Path, servers: Sequence[dict[str, Any]] = (), **overrides: Any) -> Path:
        """Write `tmp_path/servers.yaml` with fast timings; `overrides` replace supervisor keys
        (a mapping is merged into the default one, e.g. `health_checks={"max_cpu_percent": 50}`)."""
        marked = [{**s, "env": {**s.get("env", {}), TEST_MARK: self.token}} for s in servers]
        supervisor: dict[str, Any] = {
            "workspace": "workspace",
            "state_dir": "state",
            "min_runtime": "1s",
            "max_failures": 20,
            "health_checks": {
                "interval": f"{INTERVAL}s",
                "probe_timeout": f"{PROBE_TIMEOUT}s",
                "failure_threshold": THRESHOLD,
                "max_memory_mb": 1024,
                "max_cpu_percent": 300,
            },
            "restart": {"backoff_initial": f"{BACKOFF_INITIAL}s", "backoff_max": "1s", "max_restarts": 3},
            "status_http": {"enabled": False},
            "mcp_servers": marked,
        }
        for key, value in overrides.items():
            merge = isinstance(value, dict) and isinstance(supervisor.get(key), dict)
            supervisor[key] = {**supervisor[key], **value} if merge else value
        path = tmp_path / "servers.yaml"
        path.write_text(yaml.safe_dump({"supervisor": supervisor}, sort_keys=False))
        return path


@pytest.fixture
def test_token() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def make_config(test_token: str) -> ConfigMaker:
    return ConfigMaker(test_token)


@pytest.fixture
def instance_ids() -> set[str]:
    """Supervisor instance ids a test started; the guard checks their marks too."""
    return set()


@pytest.fixture
def supervisor_factory(instance_ids: set[str]) -> Callable[..., Any]:
    """`async with supervisor_factory(config_path) as sup:` a running Supervisor."""

    @asynccontextmanager
    async def run(path: Path, autostart: bool = True) -> AsyncIterator[Supervisor]:
        sup = Supervisor(load_config(path))
        instance_ids.add(sup.instance_id)
        async with sup.running(autostart=autostart):
            yield sup

    return run


@pytest.fixture
async def supervisor(tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any, request: Any) -> AsyncIterator[Supervisor]:
    """A running Supervisor over the servers given by `@pytest.mark.servers(...)`."""
    marker = request.node.get_closest_marker("servers")
    servers = list(marker.args) if marker else []
    overrides = marker.kwargs if marker else {}
    async with supervisor_factory(make_config(tmp_path, servers, **overrides)) as sup:
        yield sup


# -- waiting without sleeping --------------------------------------------------------


async def eventually(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail with a clear message at the deadline."""
    deadline = anyio.current_time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if anyio.current_time() >= deadline:
            raise AssertionError(f"condition not met within {timeout:g}s: {getattr(predicate, '__name__', predicate)}")
        await anyio.sleep(interval)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """The blocking twin of `eventually`, for guards and subprocess checks."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)
    return value


# -- process accounting --------------------------------------------------------------


def marked_processes(token: str | None = None, instances: Set[str] = frozenset()) -> list[psutil.Process]:
    """Live (non-zombie) processes carrying the test mark `token` or one of `instances`."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            env = proc.environ()
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if (token and env.get(TEST_MARK) == token) or env.get(INSTANCE_ENV_VAR) in instances:
            found.append(proc)
    return found


def is_wrapper(proc: psutil.Process) -> bool:
    """bwrap or the reaper: what the supervisor puts around a child, not the child itself."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return bool(cmdline) and (cmdline[0].endswith("bwrap") or any(w.endswith("children/reaper.py") for w in cmdline[:5]))


def host_pid(root: int, inner: int) -> int:
    """The host pid of the process below `root` that sees itself as `inner` (inside a sandbox's
    PID namespace pids differ; outside one, `inner` is the host pid)."""
    for proc in psutil.Process(root).children(recursive=True):
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(nspid[-1]) == inner:
            return proc.pid
    return inner


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_process_left_behind(test_token: str, instance_ids: set[str]) -> Iterator[None]:
    yield
    if wait_until(lambda: not marked_processes(test_token, instance_ids), timeout=3.0):
        return
    survivors = marked_processes(test_token, instance_ids)
    described = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in survivors if alive(p.pid)]
    for proc in survivors:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if described:
        pytest.fail("processes of this test outlived it:\n  " + "\n  ".join(described))
