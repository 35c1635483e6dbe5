"""Checks the change cannot fool: Python runs isolated, and what decides the tests needs a human."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from metasup_mcp.config import CheckSpec
from metasup_mcp.evolution import checks
from metasup_mcp.evolution.checks import check_argv, check_input_globs, guarded_check_inputs, run_checks
from metasup_mcp.evolution.pipeline import ChangeRequest
from tests.conftest import ConfigMaker
from tests.safety_support import app_config, with_version

pytestmark = pytest.mark.anyio

PYTEST_CHECK = {"name": "tests", "run": ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                "timeout": "60s"}
GUARD_TEST = 'from pathlib import Path\n\ndef test_not_broken():\n    assert "BROKEN" not in Path("server.py").read_text()\n'


def test_a_python_check_runs_isolated_through_the_launcher_and_other_commands_as_given() -> None:
    launcher = str(Path(checks.__file__).with_name("check_launcher.py"))
    assert check_argv(["python", "-m", "pytest", "-q"]) == [sys.executable, "-I", launcher, "-m", "pytest", "-q"]
    assert check_argv("python3 -u -W error -I run.py x") == [sys.executable, "-I", "-u", "-W", "error", launcher,
                                                            "run.py", "x"]
    assert check_argv(["make", "test"]) == ["make", "test"]


async def test_a_python_check_still_imports_the_workspaces_own_modules(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("SCORE = 7\n")
    (tmp_path / "json.py").write_text("raise SystemExit('the workspace shadowed the standard library')\n")
    (tmp_path / "bench.py").write_text("import json, score, sys\nprint(json.dumps(score.SCORE), sys.argv[1:])\n")
    specs = [CheckSpec(name="script", run=["python", "bench.py", "a"]),
             CheckSpec(name="module", run=["python", "-m", "bench", "b"]),
             CheckSpec(name="code", run=["python", "-c", "import score; print(score.SCORE)"])]
    outcomes = await run_checks(specs, tmp_path, [], {"PATH": os.environ["PATH"]})
    assert [(o.ok, o.output_tail.strip()) for o in outcomes] == [
        (True, "7 ['a']"), (True, "7 ['b']"), (True, "7")], outcomes


def test_check_inputs_default_to_tests_conftest_the_runner_config_and_the_checks_own_files() -> None:
    specs = [CheckSpec(name="compile", run="builtin:py_compile"), CheckSpec(name="t", run="python -m pytest"),
             CheckSpec(name="lint", run=["sh", "scripts/lint.sh", "--strict"])]
    globs = check_input_globs(specs, None)
    assert {"tests/", "conftest.py", "**/conftest.py", "pyproject.toml", "pytest.ini", "scripts/lint.sh"} <= set(globs)
    assert check_input_globs(specs, ["spec/"]) == ["spec/", "scripts/lint.sh"]
    paths = ["tests/test_a.py", "pkg/tests/test_b.py", "pkg/conftest.py", "conftest.py", "server.py", "attests/x.py"]
    assert guarded_check_inputs(paths, globs) == paths[:4]


def _config(make_config: ConfigMaker, tmp_path: Path) -> Path:
    config = app_config(make_config, tmp_path, checks=[PYTEST_CHECK])
    (tmp_path / "template" / "tests").mkdir()
    (tmp_path / "template" / "tests" / "test_guard.py").write_text(GUARD_TEST)
    return config


async def test_a_module_that_shadows_the_test_runner_cannot_make_the_check_pass(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any
) -> None:
    async with supervisor_factory(_config(make_config, tmp_path)) as sup:
        fake_runner = "raise SystemExit(0)  # every test 'passes'\n"
        changes = [{"path": "server.py", "content": with_version("2", "# BROKEN")},
                   {"path": "pytest.py", "content": fake_runner}]
        proposal = await sup.propose_change(ChangeRequest("shadow the runner", changes=changes))
        assert proposal.verdict == "rolled_back" and proposal.trigger == "check:tests", proposal.reasons
        assert "1 failed" in proposal.checks[-1].output_tail


async def test_a_change_to_the_tests_needs_a_human_approval(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any
) -> None:
    async with supervisor_factory(_config(make_config, tmp_path)) as sup:
        changes = [{"path": "tests/test_guard.py", "content": "def test_nothing():\n    pass\n"}]
        proposal = await sup.propose_change(ChangeRequest("empty the tests", changes=changes))
        assert proposal.result()["verdict"] == "pending_approval"
        assert any("tests/test_guard.py decide what the checks test (check_inputs)" in r for r in proposal.reasons)
        assert (tmp_path / "workspace" / "tests" / "test_guard.py").read_text() == GUARD_TEST
