"""The safety-loop fuzz (tests/fuzz_support.py) at length: random proposals, on-disk edits,
rollbacks, restarts and SIGKILLs over a user's repository, every invariant checked after
every step. Prints the step mix, the verdicts and the time taken.

    .venv/bin/python bench/safety_fuzz.py --soak            # 200 steps, seed 8
    .venv/bin/python bench/safety_fuzz.py --steps 40 --seed 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metasup_mcp.config import load_config  # noqa: E402
from metasup_mcp.supervisor import Supervisor  # noqa: E402
from tests.fuzz_support import SafetyFuzz, kill_mid_change  # noqa: E402
from tests.ownership_support import APP, USER_ENV  # noqa: E402


def write_config(folder: Path, repo: Path) -> Path:
    path = folder / "servers.yaml"
    path.write_text(yaml.safe_dump({"supervisor": {
        "workspace": str(repo), "state_dir": str(folder / "state"), "data_paths": ["state.json"],
        "min_runtime": "1s", "max_failures": 1000, "status_http": {"enabled": False},
        "health_checks": {"interval": "250ms", "probe_timeout": "500ms", "failure_threshold": 2},
        "restart": {"backoff_initial": "200ms", "backoff_max": "1s", "max_restarts": 3},
        "rollback": {"keep_commits": 2}, "mcp_servers": [APP],
    }}))
    return path


@asynccontextmanager
async def run(config: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(load_config(config)).running() as sup:
        yield sup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--soak", action="store_true", help="200 steps")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    steps = 200 if args.soak else args.steps
    import os

    os.environ.update(USER_ENV)
    with tempfile.TemporaryDirectory(prefix="metasup-fuzz-") as tmp:
        fuzz = SafetyFuzz(Path(tmp), write_config, run, kill_mid_change, seed=args.seed)
        report = anyio.run(fuzz.run_steps, steps)
    print(f"seed {args.seed}: {report.steps} steps in {report.seconds:.1f} s "
          f"({report.seconds / max(report.steps, 1):.2f} s/step), every invariant held after every step")
    print(f"  actions:  {dict(sorted(report.actions.items()))}")
    print(f"  verdicts: {dict(sorted(report.verdicts.items()))}")
    print(f"  user-file versions checked (cumulative over steps): {report.versions_checked}")


if __name__ == "__main__":
    main()
