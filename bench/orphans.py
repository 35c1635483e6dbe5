"""Orphans: 100 cycles of start and stop of `metasup-mcp serve`, counting what is left.

Children fork a grandchild that ignores SIGTERM, ignore SIGTERM themselves, and start helpers
that call setsid and double-fork, with and without the METASUP_INSTANCE mark. Stops rotate
through stdin closed, SIGTERM and SIGKILL; the sandbox through auto (bubblewrap, a PID
namespace) and off (the reaper, a child subreaper). Target: 0 processes left, every cycle.

    .venv/bin/python bench/orphans.py [--cycles 100]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metasup_mcp.children.sandbox import bwrap_problem  # noqa: E402
from tests.orphan_cycles import kill_tree, run_cycle, write_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    sandboxes = ["auto", "off"] if bwrap_problem() is None else ["off"]
    kinds = list(itertools.product(sandboxes, ["stdin", "sigterm", "sigkill"]))
    left: Counter[tuple[str, str]] = Counter()
    runs: Counter[tuple[str, str]] = Counter()
    token = uuid.uuid4().hex
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {sandbox: Path(tmp) / sandbox for sandbox in sandboxes}
        configs = {}
        for sandbox, folder in folders.items():
            folder.mkdir()
            configs[sandbox] = write_config(folder, token, sandbox)
        try:
            for cycle in range(args.cycles):
                sandbox, stop = kinds[cycle % len(kinds)]
                leftovers = run_cycle(configs[sandbox], token, stop)  # type: ignore[arg-type]
                runs[sandbox, stop] += 1
                left[sandbox, stop] += len(leftovers)
                if leftovers:
                    print(f"cycle {cycle} ({sandbox}, {stop}): left {leftovers}", file=sys.stderr)
                    kill_tree(token)
        finally:
            kill_tree(token)
    print(f"{'sandbox':<8} {'stop':<8} {'cycles':>6} {'left':>5}")
    for key in kinds:
        print(f"{key[0]:<8} {key[1]:<8} {runs[key]:>6} {left[key]:>5}")
    total = sum(left.values())
    print(f"{sum(runs.values())} cycles in {time.monotonic() - started:.0f}s: {total} process(es) left")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
