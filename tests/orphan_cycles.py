"""Stop a `metasup-mcp serve` whose children fork, ignore SIGTERM and escape with `setsid` (with
and without the METASUP_INSTANCE mark), then count what is left. Shared by
`tests/test_orphans.py` (a slice) and `bench/orphans.py` (the full 100 cycles).

A cycle: start serve, wait until every child and helper is up, stop it (stdin closed, SIGTERM
or SIGKILL), wait for it to exit, then look for any process of its tree: by the test mark the
children carry, and by the tag in the escaped helpers' command lines (the unmarked one carries
nothing else). After a SIGKILL the next cycle's serve on the same state folder runs its sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "fixtures" / "child.py"
ATTACKER = ROOT / "tests" / "fixtures" / "attacker.py"
MARK = "METASUP_TEST"
Stop = Literal["stdin", "sigterm", "sigkill"]
# Every escape, fork and stubborn child is up by then on a loaded 2-core machine.
UP_TIMEOUT = 20.0
GONE_TIMEOUT = 10.0


def write_config(folder: Path, token: str, sandbox: str) -> Path:
    env = {MARK: token}
    servers = [
        {"name": "forker", "command": "python", "env": env, "stop_timeout": "0.5s",
         "args": ["-u", str(CHILD), "--spawn-grandchild", "--grandchild-ignores-sigterm"]},
        {"name": "stubborn", "command": "python", "env": env, "stop_timeout": "0.5s",
         "args": ["-u", str(CHILD), "--ignore-sigterm"]},
        {"name": "escaper", "command": "python", "env": env, "stop_timeout": "0.5s",
         "args": ["-u", str(ATTACKER), "--escape", f"{token}-marked", "--escape-unmarked", f"{token}-unmarked", "--"]},
    ]
    supervisor = {
        "workspace": "workspace", "state_dir": "state", "min_runtime": "1s", "sandbox": sandbox,
        "status_http": {"enabled": False}, "checks": [], "mcp_servers": servers,
    }
    path = folder / "servers.yaml"
    path.write_text(yaml.safe_dump({"supervisor": supervisor}, sort_keys=False))
    return path


def tree(token: str, exclude: int | None = None) -> list[psutil.Process]:
    """Live processes carrying the mark `token` or naming it in their command line."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid in (os.getpid(), exclude):
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if token in " ".join(proc.cmdline()) or proc.environ().get(MARK) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def helpers_up(token: str) -> bool:
    lines = [_cmdline(p) for p in tree(token)]
    return all(any(f"{token}-{kind}" in line for line in lines) for kind in ("marked", "unmarked"))


def run_cycle(config: Path, token: str, stop: Stop) -> list[str]:
    """One start-and-stop; returns a description of every process of the tree left behind."""
    errlog = open(config.parent / "serve.log", "ab")  # noqa: SIM115 — the child writes it
    try:
        serve = subprocess.Popen(
            [sys.executable, "-m", "metasup_mcp.cli", "serve", "--config", str(config)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errlog,
            env={**os.environ, MARK: token}, start_new_session=True,
        )
    finally:
        errlog.close()
    try:
        if not _wait(lambda: helpers_up(token) and len(tree(token, serve.pid)) >= 5, UP_TIMEOUT):
            raise RuntimeError(f"the fleet did not come up; see {config.parent / 'serve.log'}")
        assert serve.stdin is not None
        if stop == "stdin":
            serve.stdin.close()
        else:
            serve.send_signal(signal.SIGTERM if stop == "sigterm" else signal.SIGKILL)
        serve.wait(timeout=30)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    _wait(lambda: not tree(token), GONE_TIMEOUT)
    return [f"{p.pid} {_cmdline(p)[:100]}" for p in tree(token)]


def kill_tree(token: str) -> None:
    for proc in tree(token):
        try:
            proc.kill()
        except psutil.Error:
            pass
