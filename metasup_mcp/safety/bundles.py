"""Backups of the whole repository as `git bundle`s, and rebuilding `.git` from one.

A bundle (`bundle create --all`) holds every ref, the saved user work under
`refs/metasup/saved/` included. Rebuilding leaves the working tree as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from metasup_mcp.safety.gitcmd import WorkspaceError, git_env, run_git
from metasup_mcp.safety.journal import fsync_dir

__all__ = ["BUNDLE_GLOB", "RESTORE_EXCLUDES", "rebuild_git_dir", "write_bundle"]

BUNDLE_GLOB = "metasup-*.bundle"
RESTORE_EXCLUDES = ("/.git.broken-*/", "/.git.restoring-*/")

Git = Callable[..., subprocess.CompletedProcess[bytes]]


def write_bundle(git: Git, backup_dir: Path, keep: int) -> Path:
    """`git bundle create --all` into backup_dir atomically; keep the newest `keep`."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    backup_dir = Path(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    final = backup_dir / f"metasup-{stamp}.bundle"
    tmp = backup_dir / f".{final.name}.tmp"
    try:
        git("bundle", "create", "--quiet", str(tmp), "--all")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(backup_dir)
    for old in sorted(backup_dir.glob(BUNDLE_GLOB), reverse=True)[keep:]:
        old.unlink()
    return final


def rebuild_git_dir(root: Path, backup_dir: Path) -> tuple[Path, list[str]]:
    """Build `root/.git` afresh from the newest usable bundle, moving the broken one to
    `.git.broken-<time>`; return the new git dir and the exclude patterns to keep."""
    bundles = sorted(Path(backup_dir).glob(BUNDLE_GLOB), reverse=True)
    if not bundles:
        raise WorkspaceError(f"no {BUNDLE_GLOB} in {backup_dir} to restore from")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dot_git, new_dir, aside = root / ".git", root / f".git.restoring-{stamp}", root / f".git.broken-{stamp}"
    hint = _head_hint(dot_git)
    problems = []
    for bundle in bundles:
        try:
            _build_from_bundle(new_dir, bundle, hint, root)
            break
        except WorkspaceError as exc:
            problems.append(f"{bundle.name}: {exc}")
            shutil.rmtree(new_dir, ignore_errors=True)
    else:
        raise WorkspaceError("no usable bundle: " + "; ".join(problems))
    old_excludes: list[str] = []
    if os.path.lexists(dot_git):
        try:
            old_excludes = (dot_git / "info" / "exclude").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeError):
            pass  # a broken repo may well have lost this too
        os.replace(dot_git, aside)
    os.replace(new_dir, dot_git)
    fsync_dir(root)
    patterns = [p for p in old_excludes if p.strip() and not p.startswith("#")]
    return dot_git, [*patterns, *RESTORE_EXCLUDES]


def _head_hint(dot_git: Path) -> str | None:
    """The branch the broken repository had checked out, if its HEAD file still says."""
    try:
        text = (dot_git / "HEAD").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError):
        return None
    return text[5:].strip() if text.startswith("ref: refs/heads/") else None


def _build_from_bundle(new_dir: Path, bundle: Path, hint: str | None, cwd: Path) -> None:
    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return run_git(args, cwd=cwd, env=git_env(new_dir, None), git_dir=new_dir)

    run_git(["init", "-q", "--bare", str(new_dir)], cwd=cwd, env=git_env(None, None))
    heads: dict[str, str] = {}
    for line in git("bundle", "list-heads", str(bundle)).stdout.decode().splitlines():
        sha, _, name = line.partition(" ")
        heads[name] = sha
    git("fetch", "-q", "--no-write-fetch-head", str(bundle), "+refs/*:refs/*")
    head = heads.get("HEAD")
    branches = [n for n, s in heads.items() if n.startswith("refs/heads/") and (head is None or s == head)]
    if hint in heads and (head is None or heads[hint] == head):
        git("symbolic-ref", "HEAD", hint)
    elif branches:
        git("symbolic-ref", "HEAD", sorted(branches)[0])
    elif head is not None:
        git("update-ref", "--no-deref", "HEAD", head)
    else:
        raise WorkspaceError(f"{bundle.name} has neither HEAD nor a branch")
    git("config", "core.bare", "false")
    git("config", "core.logAllRefUpdates", "true")
