"""Kernel isolation for children and checks: what they may not write, and a tree that dies whole.

Every child and every check runs as the supervisor's own user, so file permissions protect
nothing. With `sandbox: auto` or `required` each one starts inside bubblewrap (`bwrap`):

- a mount namespace where the workspace's `.git`, the config file, the supervisor's package
  and interpreter, and every `readonly_paths` entry are read-only bind mounts, and the state
  folder (journal, audit log and its key, proposals, backups) is an empty tmpfs;
- a PID namespace (`--unshare-pid`) whose init is bwrap itself: when the child's main process
  exits, or the supervisor dies however it dies (`--die-with-parent`), the kernel kills every
  process in the namespace, helpers that called `setsid` or dropped `METASUP_INSTANCE` included.

Without bwrap (`sandbox: off`, or `auto` where user namespaces are refused) a small reaper
(`reaper.py`, PR_SET_CHILD_SUBREAPER) stands between the supervisor and the child so that
descendants still end with their child; files are then guarded by detection (`integrity.py`).
Why bubblewrap rather than Landlock: see `docs/isolation.md`.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

__all__ = ["SandboxPlan", "SandboxUnavailable", "bwrap_problem", "plan_sandbox", "wrap_argv"]

SandboxMode = Literal["auto", "required", "off"]
BWRAP_PROBE_TIMEOUT = 10.0
# The supervisor's own code: `metasup_mcp/`.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
REAPER = Path(__file__).resolve().with_name("reaper.py")


class SandboxUnavailable(RuntimeError):
    """`sandbox: required` and no kernel sandbox can be built here; the message says why."""


@dataclass(frozen=True)
class SandboxPlan:
    """How children and checks are started, and what that protects (shown in status).

    `kind` is `bwrap` (kernel-enforced files and PID namespace) or `reaper` (descendants
    tracked and ended, files guarded by detection only).
    """

    mode: SandboxMode
    kind: Literal["bwrap", "reaper"]
    reason: str
    readonly: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    bwrap: str | None = None

    @property
    def kernel_enforced(self) -> bool:
        return self.kind == "bwrap"

    def describe(self) -> dict[str, object]:
        """The status block: what is in force and what it protects."""
        return {
            "mode": self.mode,
            "in_force": self.kind,
            "kernel_enforced": self.kernel_enforced,
            "pid_namespace": self.kernel_enforced,
            "readonly": [str(p) for p in self.readonly] if self.kernel_enforced else [],
            "hidden": [str(p) for p in self.hidden] if self.kernel_enforced else [],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Protected:
    """Paths children and checks must not change: `readonly` stay visible, `hidden` vanish."""

    readonly: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


def protected_paths(
    workspace: Path,
    state_dir: Path,
    config_file: Path | None,
    readonly_paths: Iterable[str | Path] = (),
    secret_files: Iterable[Path] = (),
    hidden_paths: Iterable[str | Path] = (),
) -> Protected:
    """The operator-owned paths: `.git`, config, package, interpreter and `readonly_paths` read-only;
    the state folder, `secret_files` (the operator token) and `hidden_paths` (the user's own
    secrets: `~/.ssh`...) hidden. Relative entries are taken from the workspace, `~` expanded."""
    readonly = [workspace / ".git", PACKAGE_DIR, Path(sys.prefix)]
    if config_file is not None:
        readonly.append(config_file)
    readonly.extend(_from_workspace(workspace, entry) for entry in readonly_paths)
    ws = _resolved(workspace)
    # A path that holds the workspace cannot be frozen or hidden without freezing the workspace too.
    unique = tuple(dict.fromkeys(p for p in map(_resolved, readonly) if not ws.is_relative_to(p)))
    state = _resolved(state_dir)
    hidden = ([] if ws.is_relative_to(state) else [state]) + [_resolved(p) for p in secret_files]
    hidden += [p for p in (_resolved(_from_workspace(workspace, e)) for e in hidden_paths) if not ws.is_relative_to(p)]
    return Protected(readonly=unique, hidden=tuple(dict.fromkeys(hidden)))


def _from_workspace(workspace: Path, entry: str | Path) -> Path:
    path = Path(entry).expanduser()
    return path if path.is_absolute() else workspace / path


def plan_sandbox(mode: SandboxMode, protected: Protected) -> SandboxPlan:
    """Decide what is in force; `required` without a working bwrap raises `SandboxUnavailable`."""
    if mode == "off":
        return SandboxPlan(mode, "reaper", "sandbox: off in the config; protected files are guarded by detection")
    problem = bwrap_problem()
    if problem is None:
        return SandboxPlan(mode, "bwrap", "bubblewrap", protected.readonly, protected.hidden, shutil.which("bwrap"))
    if mode == "required":
        raise SandboxUnavailable(
            f"sandbox: required, but no kernel sandbox can be built here ({problem}); install bubblewrap "
            "(Debian/Ubuntu: apt-get install bubblewrap) and allow unprivileged user namespaces, "
            "or set sandbox: auto to run with detection only"
        )
    logger.warning("no kernel sandbox for children and checks (%s): protected files are guarded by detection only",
                   problem)
    return SandboxPlan(mode, "reaper", f"bubblewrap unusable here: {problem}; protected files are guarded by detection")


def wrap_argv(plan: SandboxPlan, argv: Sequence[str], cwd: Path) -> list[str]:
    """The command line that runs `argv` (in `cwd`) under `plan`."""
    if plan.kind == "reaper":
        return [sys.executable, "-I", "-S", str(REAPER), "--", *argv]
    assert plan.bwrap is not None
    return [plan.bwrap, *bwrap_args(plan.readonly, plan.hidden), "--chdir", str(cwd), "--", *argv]


def bwrap_args(readonly: Sequence[Path], hidden: Sequence[Path]) -> list[str]:
    # The host's root as it is (children need the network, /tmp, their tools), then the
    # protected paths on top. Later mounts win, so a read-only path inside a hidden one stays hidden.
    # No capabilities: a supervisor running as root would otherwise leave its children free to
    # unmount the read-only binds (bwrap keeps root's capabilities unless told).
    args = ["--die-with-parent", "--unshare-pid", "--cap-drop", "ALL", "--dev-bind", "/", "/", "--proc", "/proc"]
    for path in readonly:
        args += ["--ro-bind-try", str(path), str(path)]
    for path in hidden:
        # Only what exists: bwrap would create a missing mount point on the host's disk.
        if path.is_dir():
            args += ["--tmpfs", str(path), "--remount-ro", str(path)]
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    return args


@functools.cache
def bwrap_problem() -> str | None:
    """Why bwrap cannot sandbox here (not installed, user namespaces refused), or None if it can."""
    binary = shutil.which("bwrap")
    if binary is None:
        return "bwrap is not installed"
    try:
        result = subprocess.run(
            [binary, *bwrap_args([Path(sys.prefix)], []), "--", "true"],
            capture_output=True, timeout=BWRAP_PROBE_TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not run: {exc}"
    if result.returncode != 0:
        return "bwrap failed: " + (result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}")
    return None


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path
