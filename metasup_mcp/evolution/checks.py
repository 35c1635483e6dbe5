"""Verification checks run on the workspace after a change is committed, before children restart.

`builtin:py_compile` compiles the changed Python files in-process; any other check is a
command run in the workspace, in its own process group, killed whole at its timeout. The
first failure stops the run: its name becomes the rollback trigger, its output tail the evidence.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from subprocess import STDOUT

import anyio

from metasup_mcp.config import CheckSpec
from metasup_mcp.evolution.proposals import CheckOutcome

BUILTIN_PY_COMPILE = "builtin:py_compile"
OUTPUT_TAIL_CHARS = 4000
_SELF_PYTHON = {"python", "python3"}


def trigger_for(check: CheckOutcome) -> str:
    """The rollback trigger a failed check reports: `compile` or `check:<name>`."""
    return "compile" if check.name == "compile" else f"check:{check.name}"


async def run_checks(
    specs: Sequence[CheckSpec], workspace: Path, changed: Sequence[str], env: dict[str, str]
) -> list[CheckOutcome]:
    outcomes: list[CheckOutcome] = []
    for spec in specs:
        started = time.monotonic()
        if spec.run == BUILTIN_PY_COMPILE:
            ok, output = await anyio.to_thread.run_sync(_compile_python, workspace, changed)
        else:
            ok, output = await _run_command(_argv(spec.run), workspace, env, spec.timeout)
        outcomes.append(
            CheckOutcome(
                name=spec.name, ok=ok, duration_s=round(time.monotonic() - started, 3),
                output_tail=output[-OUTPUT_TAIL_CHARS:],
            )
        )
        if not ok:
            break
    return outcomes


def _argv(run: str | list[str]) -> list[str]:
    argv = shlex.split(run) if isinstance(run, str) else list(run)
    if argv and argv[0] in _SELF_PYTHON:
        argv[0] = sys.executable
    return argv


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


async def _run_command(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    try:
        process = await anyio.open_process(argv, cwd=cwd, env=env, stderr=STDOUT, start_new_session=True)
    except OSError as exc:
        return False, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    chunks: list[bytes] = []
    async with process:
        with anyio.move_on_after(timeout) as scope:
            assert process.stdout is not None
            async for chunk in process.stdout:
                chunks.append(chunk)
                if sum(map(len, chunks)) > 8 * OUTPUT_TAIL_CHARS:
                    chunks = chunks[-8:]
            await process.wait()
        if scope.cancelled_caught:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with anyio.CancelScope(shield=True):
                await process.wait()
            output = b"".join(chunks).decode(errors="replace")
            return False, f"{output}\n[timed out after {timeout:g}s: {shlex.join(argv)}]"
    output = b"".join(chunks).decode(errors="replace")
    if process.returncode != 0:
        return False, f"{output}\n[exit code {process.returncode}: {shlex.join(argv)}]"
    return True, output
