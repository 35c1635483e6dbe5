"""Verification checks run on the workspace after a change is committed, before children restart.

`builtin:py_compile` compiles the changed Python files in-process; any other check is a
command run in the workspace, in its own process group, killed whole at its timeout. The
first failure stops the run: its name becomes the rollback trigger, its output tail the evidence.

A check must not be fooled by the change it judges:
- it runs in the children's sandbox (`children/sandbox.py`): it cannot write `.git`, the config
  or the state folder, and nothing it starts outlives it;
- Python runs isolated: a Python check runs `-I` through `check_launcher.py`, which puts the
  workspace at the end of `sys.path` (after what is installed), and every Python the check
  starts gets `PYTHONSAFEPATH=1`, so a module the change adds in the working directory (a
  `pytest.py`) can never shadow the runner;
- the files that decide what is tested (`check_inputs`: tests, conftest files, the runner's
  config, the check's own scripts) need a human approval to change (`guarded_check_inputs`).
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import signal
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from subprocess import STDOUT

import anyio

from metasup_mcp.children.sandbox import SandboxPlan, wrap_argv
from metasup_mcp.config import CheckSpec, resolve_command
from metasup_mcp.evolution.proposals import CheckOutcome
from metasup_mcp.redact import redact

BUILTIN_PY_COMPILE = "builtin:py_compile"
OUTPUT_TAIL_CHARS = 4000
# What decides what the checks test, whatever the checks are (a folder entry ends in "/").
DEFAULT_CHECK_INPUTS = ("tests/", "test/", "conftest.py", "**/conftest.py")
# The runner's own configuration, when a check runs pytest.
PYTEST_CONFIG = ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")
_PYTHON_NAMES = ("python", "python3")
_LAUNCHER = Path(__file__).resolve().with_name("check_launcher.py")


def trigger_for(spec: CheckSpec) -> str:
    """The rollback trigger a failed check reports: `compile` for the builtin, else `check:<name>`."""
    return "compile" if spec.run == BUILTIN_PY_COMPILE else f"check:{spec.name}"


async def run_checks(
    specs: Sequence[CheckSpec],
    workspace: Path,
    changed: Sequence[str],
    env: dict[str, str],
    sandbox: SandboxPlan | None = None,
) -> list[CheckOutcome]:
    """Run `specs` in order, stopping at the first failure; each command inside `sandbox`."""
    outcomes: list[CheckOutcome] = []
    env = {**env, "PYTHONSAFEPATH": "1"}
    for spec in specs:
        started = time.monotonic()
        if spec.run == BUILTIN_PY_COMPILE:
            ok, output = await anyio.to_thread.run_sync(_compile_python, workspace, changed)
        else:
            argv = check_argv(spec.run)
            command = argv if sandbox is None else wrap_argv(sandbox, argv, workspace)
            ok, output = await _run_command(command, workspace, env, spec.timeout, shown=argv)
        outcomes.append(
            CheckOutcome(
                name=spec.name, ok=ok, duration_s=round(time.monotonic() - started, 3),
                output_tail=output[-OUTPUT_TAIL_CHARS:],
            )
        )
        if not ok:
            break
    return outcomes


def check_argv(run: str | list[str]) -> list[str]:
    """The words a check runs: `python` is the supervisor's interpreter, and a Python check runs
    isolated (`-I`) through `check_launcher.py`, which puts the workspace at the end of `sys.path`."""
    argv = shlex.split(run) if isinstance(run, str) else list(run)
    if not argv:
        return argv
    is_python = argv[0] in _PYTHON_NAMES or Path(argv[0]).name.startswith("python")
    argv[0] = resolve_command(argv[0])
    if not is_python:
        return argv
    flags, rest = _split_interpreter_flags(argv[1:])
    if not rest:  # an interactive interpreter: nothing to launch
        return argv
    return [argv[0], "-I", *(f for f in flags if f != "-I"), str(_LAUNCHER), *rest]


def _split_interpreter_flags(words: list[str]) -> tuple[list[str], list[str]]:
    """(`python`'s own options, what it runs: `-m MOD ...`, `-c CODE ...` or `SCRIPT ...`)."""
    flags: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-m", "-c") or not word.startswith("-") or word == "-":
            return flags, words[i:]
        if word in ("-W", "-X") and i + 1 < len(words):
            flags += [word, words[i + 1]]
            i += 2
            continue
        flags.append(word)
        i += 1
    return flags, []


def check_input_globs(specs: Sequence[CheckSpec], configured: Sequence[str] | None) -> list[str]:
    """The `check_inputs` in force: as configured, or the default plus every check's own files
    (the relative paths its command names) and, for pytest, its config files."""
    globs = list(configured) if configured is not None else list(DEFAULT_CHECK_INPUTS)
    for spec in specs:
        if spec.run == BUILTIN_PY_COMPILE:
            continue
        words = shlex.split(spec.run) if isinstance(spec.run, str) else list(spec.run)
        if configured is None and any("pytest" in word for word in words):
            globs.extend(PYTEST_CONFIG)
        globs.extend(w for w in words[1:] if not w.startswith("-") and not Path(w).is_absolute() and "." in w)
    return list(dict.fromkeys(globs))


def guarded_check_inputs(paths: Sequence[str], globs: Sequence[str]) -> list[str]:
    """The changed `paths` that match a `check_inputs` glob (a folder entry matches at any depth)."""
    def matches(path: str, glob: str) -> bool:
        if glob.endswith("/"):
            return path.startswith(glob) or f"/{glob}" in f"/{path}"
        return fnmatch.fnmatch(path, glob) or (glob.startswith("**/") and fnmatch.fnmatch(path, glob[3:]))

    return [path for path in paths if any(matches(path, glob) for glob in globs)]


def _compile_python(workspace: Path, changed: Sequence[str]) -> tuple[bool, str]:
    errors = []
    compiled = 0
    for rel in changed:
        path = workspace / rel
        if not rel.endswith(".py") or not path.is_file():
            continue
        try:
            compile(path.read_bytes(), rel, "exec", dont_inherit=True)
            compiled += 1
        except (SyntaxError, ValueError) as exc:
            where = f"{rel}, line {exc.lineno}" if isinstance(exc, SyntaxError) else rel
            message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
            errors.append(f"{where}: {type(exc).__name__}: {message}")
    if errors:
        return False, "\n".join(errors)
    return True, f"compiled {compiled} changed Python file(s)"


async def _run_command(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float, shown: list[str]
) -> tuple[bool, str]:
    try:
        process = await anyio.open_process(argv, cwd=cwd, env=env, stderr=STDOUT, start_new_session=True)
    except OSError as exc:
        return False, f"cannot run {shown[0]!r}: {exc.strerror or exc}"
    chunks: list[bytes] = []
    try:
        with anyio.move_on_after(timeout) as scope:
            assert process.stdout is not None
            async for chunk in process.stdout:
                chunks.append(chunk)
                if sum(map(len, chunks)) > 8 * OUTPUT_TAIL_CHARS:
                    chunks = chunks[-8:]
            await process.wait()
    finally:
        # Timed out or cancelled: the check's whole tree goes. SIGUSR1 first: the reaper ends its
        # subtree on it, and bwrap dies of it, taking its PID namespace along. Then the group,
        # only while the leader is not yet reaped, so that its group id cannot have been reused.
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(process.pid, signal.SIGUSR1)
                with anyio.move_on_after(1):
                    while process.returncode is None:
                        await anyio.sleep(0.02)
            if process.returncode is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            with anyio.move_on_after(5):
                await process.aclose()
    output = redact(b"".join(chunks).decode(errors="replace"))
    if scope.cancelled_caught:
        return False, f"{output}\n[timed out after {timeout:g}s: {shlex.join(shown)}]"
    if process.returncode != 0:
        return False, f"{output}\n[exit code {process.returncode}: {shlex.join(shown)}]"
    return True, output
