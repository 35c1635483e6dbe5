"""A fixed-seed slice of the safety-loop fuzz (tests/fuzz_support.py): random proposals, on-disk
edits, rollbacks, restarts and SIGKILLs over a user's repository; nothing may be lost.
The 200-step soak: `python bench/safety_fuzz.py --soak`."""

from __future__ import annotations

import pytest

from tests.fuzz_support import SafetyFuzz, kill_mid_change
from tests.ownership_support import APP

pytestmark = pytest.mark.anyio

SEED = 8
CI_STEPS = 14


async def test_a_fixed_seed_run_of_random_steps_loses_nothing_and_moves_last_good_only_on_verified_commits(
    tmp_path, make_config, supervisor_factory, pinned_git
):
    def write_config(folder, repo):
        return make_config(folder, [APP], workspace=str(repo), state_dir=str(folder / "state"),
                           data_paths=["state.json"], rollback={"keep_commits": 2})

    fuzz = SafetyFuzz(tmp_path, write_config, supervisor_factory, kill_mid_change, seed=SEED)
    report = await fuzz.run_steps(CI_STEPS)
    print(f"fuzz seed {SEED}: {report}")
    assert report.steps == CI_STEPS and report.versions_checked > 0
