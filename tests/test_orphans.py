"""No process outlives its supervisor: a slice of the orphan cycles (`bench/orphans.py` runs 100).

Children fork a grandchild that ignores SIGTERM, ignore SIGTERM themselves, and start helpers
that call setsid and double-fork, one keeping the METASUP_INSTANCE mark and one dropping every
environment mark. Each stop (stdin closed, SIGTERM, SIGKILL) must leave nothing, in the
bubblewrap sandbox (a PID namespace) and without it (the reaper, a child subreaper).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from metasup_mcp.children.process import INSTANCE_ENV_VAR
from metasup_mcp.children.sandbox import bwrap_problem
from metasup_mcp.children.sweep import claim_instance, release_instance
from tests.conftest import TEST_MARK, wait_until
from tests.orphan_cycles import kill_tree, run_cycle, write_config

SLICE = [("auto", "stdin"), ("auto", "sigkill"), ("off", "sigterm"), ("off", "sigkill")]


@pytest.mark.parametrize(("sandbox", "stop"), SLICE)
def test_no_helper_fork_or_escapee_outlives_a_stopped_supervisor(
    tmp_path: Path, test_token: str, sandbox: str, stop: str
) -> None:
    if sandbox == "auto" and bwrap_problem() is not None:
        pytest.skip(f"no kernel sandbox here: {bwrap_problem()}")
    config = write_config(tmp_path, test_token, sandbox)
    try:
        assert run_cycle(config, test_token, stop) == []  # type: ignore[arg-type]
    finally:
        kill_tree(test_token)


def test_a_clean_stop_kills_what_still_carries_its_mark_before_forgetting_the_instance(
    tmp_path: Path, test_token: str
) -> None:
    claim_instance(tmp_path / "state", "mine")
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, INSTANCE_ENV_VAR: "mine", TEST_MARK: test_token})
    try:
        assert wait_until(lambda: psutil.Process(stray.pid).environ().get(INSTANCE_ENV_VAR) == "mine", timeout=5)
        assert release_instance(tmp_path / "state", "mine") == [stray.pid]
        assert stray.wait(timeout=5) == -signal.SIGKILL
    finally:
        stray.kill()
        stray.wait()
