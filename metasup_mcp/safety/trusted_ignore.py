"""Which untracked files are new code: judged by ignore rules the supervisor trusts alone.

Git hides an untracked file from `status` and `ls-files --exclude-standard` on rules read from
anywhere: every `.gitignore` on disk (untracked, edited, or one that ignores itself),
`.git/info/exclude`, `core.excludesFile` and `~/.config/git/ignore`; and it lists an untracked
nested repository as `dir/`, never its files. A child (or anyone) can write all of those, so a
new file a server runs could start unscreened behind one. Trusted here: only the `.gitignore`
files a commit (last good) holds, read from the object store. A file those rules ignore stays
ignored (a `venv/`, `node_modules`, data); one hidden only by another rule, or inside a nested
repository, is listed as new.

`TrustedIgnore.ignored` answers with `git check-ignore --no-index` run in a throwaway
repository holding nothing but those `.gitignore` files (no info/exclude, excludes file
`/dev/null`); the rules and the verdicts are kept per commit, so the restart path asks git
again only about a path it has not seen (`new_files`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from metasup_mcp.safety.gitcmd import git_env, run_git

if TYPE_CHECKING:
    from metasup_mcp.safety.refs import GitRepo

__all__ = ["TrustedIgnore", "walk_nested"]

MAX_VERDICTS = 20_000  # paths remembered per commit; past it the memory starts afresh


def _nul(paths: Iterable[str]) -> bytes:
    return b"\0".join(p.encode("utf-8", "surrogateescape") for p in paths)


class _Rules:
    """One commit's `.gitignore` files (path → content) and tracked paths, with the verdicts."""

    def __init__(self, commit: str, files: dict[str, bytes], tracked: frozenset[str]) -> None:
        self.commit = commit
        self.files = files
        self.tracked = tracked
        self.verdicts: dict[str, bool] = {}


class TrustedIgnore:
    """The ignore rules a commit holds, and which paths they ignore (one commit cached)."""

    def __init__(self, repo: GitRepo) -> None:
        self._repo = repo
        self._rules: _Rules | None = None

    def rules(self, commit: str) -> _Rules:
        """`commit`'s (a full sha) committed `.gitignore` files, read once per commit: regular
        blobs only (git reads no symlinked `.gitignore` either)."""
        if self._rules is not None and self._rules.commit == commit:
            return self._rules
        wanted: list[tuple[str, str]] = []
        tracked: set[str] = set()
        for record in self._repo._z("ls-tree", "-r", "-z", "--full-tree", commit):
            meta, _, path = record.partition("\t")
            mode, _, oid = meta.split(" ")
            tracked.add(path)
            if path.rpartition("/")[2] == ".gitignore" and mode in ("100644", "100755"):
                wanted.append((path, oid))
        files: dict[str, bytes] = {}
        if wanted:
            out = self._repo._git("cat-file", "--batch", input="".join(f"{oid}\n" for _, oid in wanted).encode()).stdout
            pos = 0
            for path, _ in wanted:  # "<oid> blob <size>\n<content>\n" per object, in order
                header_end = out.index(b"\n", pos)
                size = int(out[pos:header_end].split()[2])
                files[path] = out[header_end + 1 : header_end + 1 + size]
                pos = header_end + 1 + size + 1
        self._rules = _Rules(commit, files, frozenset(tracked))
        return self._rules

    def ignored(self, commit: str, paths: Sequence[str]) -> set[str]:
        """Those of `paths` (a folder ends in `/`) that `commit`'s `.gitignore` files ignore,
        tracked or not; a path under an ignored folder is ignored. `commit` is a full sha."""
        rules = self.rules(commit)
        unknown = [p for p in dict.fromkeys(paths) if p not in rules.verdicts]
        if unknown:
            if len(rules.verdicts) + len(unknown) > MAX_VERDICTS:
                rules.verdicts.clear()
            hits = self._check(rules.files, unknown)
            rules.verdicts.update((p, p in hits) for p in unknown)
        return {p for p in paths if rules.verdicts[p]}

    def _check(self, files: dict[str, bytes], paths: list[str]) -> set[str]:
        if not files:
            return set()
        with tempfile.TemporaryDirectory(prefix="metasup-ignore-") as tmp:
            root = Path(tmp)
            git_dir = root / ".git"  # a repository by hand: no hooks, no info/exclude, no config
            (git_dir / "objects").mkdir(parents=True)
            (git_dir / "refs").mkdir()
            (git_dir / "HEAD").write_bytes(b"ref: refs/heads/main\n")
            for rel, data in files.items():
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            proc = run_git(
                ["-c", "core.excludesFile=/dev/null", "check-ignore", "--no-index", "-z", "--stdin"],
                cwd=root, env=git_env(git_dir, root), input=_nul(paths), ok=(0, 1),
            )
        return {p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p}


def walk_nested(root: Path, folders: Iterable[str]) -> list[str]:
    """Every file (symlinks included, never followed) under `folders` (workspace-relative,
    ending in `/`: untracked nested repositories, which git lists but never looks into),
    their `.git` left out."""
    found: list[str] = []
    for folder in folders:
        for here, dirs, files in os.walk(root / folder, followlinks=False):
            rel = Path(here).relative_to(root).as_posix()
            links = [d for d in dirs if os.path.islink(os.path.join(here, d))]
            dirs[:] = [d for d in dirs if d != ".git" and d not in links]
            found += [f"{rel}/{name}" for name in (*files, *links) if name != ".git"]
    return found


def keep(paths: Iterable[str], wanted: Callable[[str], bool]) -> list[str]:
    return [p for p in paths if not p.endswith("/") and wanted(p)]
