"""What the safety loop costs on a 10,000-file workspace, measured side by side in one run.

1. Rollback: the pipeline's git work (keep the bad commit under a rejected ref, save what is
   on disk at the touched paths if servers changed it, put them back as saved before the
   change, take the commit off the branch) against `git reset --hard && git clean -fd` run by
   the CLI (which would also destroy untracked work: it is the speed reference, not the
   behaviour). Target ≤ 1.5×. The pipeline's leg runs on a running Supervisor's workspace, so
   the integrity check it runs before every git call is counted as it is in service.
2. propose_change overhead beyond checks and min_runtime: a change no server watches, with no
   checks configured, through a running Supervisor (validate, snapshot, write, commit, journal,
   audit, proposal store, last-good, prune). Target ≤ 300 ms.

    .venv/bin/python bench/safety_overhead.py [--files 10000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import yaml

from metasup_mcp.config import load_config
from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.evolution.recovery import undo_change
from metasup_mcp.safety.rules import FileChange
from metasup_mcp.safety.workspace import Workspace
from metasup_mcp.supervisor import Supervisor

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}


def make_repo(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"pkg{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"VALUE_{i} = {i}\n" * 20)


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env=GIT_ENV, check=True, capture_output=True)


def bad_change(n: int) -> list[FileChange]:
    """What a rolled-back proposal typically leaves: 50 files edited, 5 new files."""
    edits = [FileChange(f"pkg{i:02d}/mod{i}.py", f"BROKEN = {n}\n") for i in range(50)]
    return edits + [FileChange(f"new/extra{n}_{i}.py", "x = 1\n") for i in range(5)]


def server_ran(root: Path, touched: list[str], n: int) -> None:
    """What a restarted server leaves beside the code it ran: a log, and bytecode of the modules."""
    (root / "written_by_a_child.log").write_text(f"{n}\n")
    for path in touched:
        folder, _, name = path.rpartition("/")
        cache = root / folder / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / f"{name[:-3]}.cpython-311.pyc").write_bytes(b"\0" * 200)


def bench_rollback(ws: Workspace, rounds: int, servers_ran: bool) -> tuple[list[float], list[float]]:
    """Timings of the pipeline's rollback and of the CLI's, alternating who goes first.

    `servers_ran`: the change failed after restarting a server, which wrote a log and bytecode
    while it was verified (a file in the touched paths would be saved first: nothing is lost).
    Otherwise the change failed at compile or a check, and no server ran it.
    """
    root = ws.root
    good = ws.head()
    ours, cli = [], []
    for n in range(rounds):
        for measure_ours in (n % 2 == 0, n % 2 == 1):
            change = bad_change(n)
            touched = [c.path for c in change]
            saved = ws.save(touched, f"before {n}")
            ws.apply(change)
            bad = ws.commit_paths(touched, f"bad {n}")
            if servers_ran:
                server_ran(root, touched, n)
            started = time.perf_counter()
            if measure_ours:  # what `_roll_back` in evolution/pipeline.py does to git
                ws.keep_rejected(f"bench-{n}-{servers_ran}", bad)
                undo_change(ws, saved, touched, bad, f"bench {n}")
                ours.append(time.perf_counter() - started)
            else:
                subprocess.run("git reset -q --hard " + good + " && git clean -fdq", shell=True, cwd=root, env=GIT_ENV, check=True)
                cli.append(time.perf_counter() - started)
    return ours, cli


def supervisor(root: Path) -> Supervisor:
    config_path = root.parent / "servers.yaml"
    config_path.write_text(yaml.safe_dump({"supervisor": {
        "workspace": str(root), "state_dir": str(root.parent / "state"), "checks": [],
        "status_http": {"enabled": False}, "rollback": {"backup_interval": "24h"}, "mcp_servers": [],
    }}))
    return Supervisor(load_config(config_path))


async def bench_propose(sup: Supervisor, rounds: int) -> list[float]:
    timings = []
    for n in range(rounds):
        started = time.perf_counter()
        proposal = await sup.propose_change(
            ChangeRequest(f"edit {n}", changes=[{"path": f"pkg{n:02d}/mod{n}.py", "content": f"VALUE = {n}\n"}])
        )
        timings.append(time.perf_counter() - started)
        assert proposal.verdict == "applied", proposal.reasons
    return timings


def describe(label: str, values: list[float]) -> str:
    return f"{label:<44} median {statistics.median(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metasup-bench-") as tmp:
        root = Path(tmp) / "workspace"
        root.mkdir()
        make_repo(root, args.files)
        git(root, "init", "-q")
        git(root, "add", "-A")
        git(root, "commit", "-qm", "generated")
        print(f"workspace: {args.files} files, {args.rounds} rounds each\n")
        anyio.run(run_all, supervisor(root), args.rounds)


async def settled(sup: Supervisor, timeout: float = 60.0) -> None:
    """Wait for the start-up backup (a bundle of the whole repository) to be written, so it
    does not run beside the first rounds."""
    with anyio.fail_after(timeout):
        while not any(sup.changes.backup_dir.glob("metasup-*.bundle")):
            await anyio.sleep(0.05)


async def run_all(sup: Supervisor, rounds: int) -> None:
    async with sup.running():
        ws = sup.changes.workspace
        assert ws is not None and ws.before_git is not None, "the workspace runs git behind the integrity check"
        await settled(sup)
        for servers_ran, label in ((False, "rollback after a failed compile or check"),
                                   (True, "rollback after a server ran it and wrote files")):
            ours, cli = bench_rollback(ws, rounds, servers_ran)
            ratio = statistics.median(ours) / statistics.median(cli)
            print(describe(label, ours))
            print(describe("git reset --hard && git clean -fd (CLI)", cli))
            verdict = "OK" if ratio <= 1.5 else "MISSED"
            print(f"{'ratio':<44} {ratio:.2f}x   (target <= 1.5x) {verdict}\n")
        propose = await bench_propose(sup, rounds)
    median = statistics.median(propose)
    print(describe("propose_change, no checks, no restart", propose))
    print(f"{'overhead beyond checks and min_runtime':<44} {median * 1000:.0f} ms (target <= 300 ms) "
          f"{'OK' if median <= 0.3 else 'MISSED'}")


if __name__ == "__main__":
    main()
