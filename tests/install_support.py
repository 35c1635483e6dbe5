"""A copy of this source tree as a fresh clone would have it, for install and launch tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_copy(destination: Path) -> Path:
    """Copy every file git would ship (tracked, plus new files not ignored) to `destination`."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def tool(name: str) -> str | None:
    """`name` from this virtualenv's bin (the test extra installs pipx and uv), else from PATH."""
    beside = ROOT / ".venv" / "bin" / name
    return str(beside) if beside.exists() else shutil.which(name)
