"""Verification checks run on the workspace after a change is committed, before children restart.

`builtin:py_compile` compiles the changed Python files in-process; any other check is a
command run in the workspace, in its own process group, killed whole at its timeout. The
first failure stops the run: its name becomes the rollback trigger, its output tail the evidence.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from subprocess import STDOUT

import anyio

from metasup_mcp.config import CheckSpec, resolve_command
from metasup_mcp.evolution.proposals import CheckOutcome

BUILTIN_PY_COMPILE = "builtin:py_compile"
OUTPUT_TAIL_CHARS = 4000


def trigger_for(spec: CheckSpec) -> str:
    """The rollback trigger a failed check reports: `compile` for the builtin, else `check:<name>`."""
    return "compile" if spec.run == BUILTIN_PY_COMPILE else f"check:{spec.name}"


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
    if argv:
        argv[0] = resolve_command(argv[0])
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
    try:
        with anyio.move_on_after(timeout) as scope:
            assert process.stdout is not None
            async for chunk in process.stdout:
                chunks.append(chunk)
                if sum(map(len, chunks)) > 8 * OUTPUT_TAIL_CHARS:
                    chunks = chunks[-8:]
            await process.wait()
    finally:
        # Timed out or cancelled: the check's whole group goes. Only while the leader is not
        # yet reaped, so that its group id cannot have been reused by then.
        if process.returncode is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await process.aclose()
    output = b"".join(chunks).decode(errors="replace")
    if scope.cancelled_caught:
        return False, f"{output}\n[timed out after {timeout:g}s: {shlex.join(argv)}]"
    if process.returncode != 0:
        return False, f"{output}\n[exit code {process.returncode}: {shlex.join(argv)}]"
    return True, output
