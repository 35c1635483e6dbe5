"""Which untracked files are new code: judged by ignore rules the supervisor trusts alone.

Git hides an untracked file from `status` and `ls-files --exclude-standard` on rules read from
anywhere: every `.gitignore` on disk (untracked, edited, or one that ignores itself),
`.git/info/exclude`, `core.excludesFile` and `~/.config/git/ignore`; and it lists an untracked
nested repository as `dir/`, never its files. A child (or anyone) can write all of those, so a
new file a server runs could start unscreened behind one. Trusted here: the `.gitignore` files
a commit (last good) holds, read from the object store, and the user's own rules as they were
when the workspace was opened (`.git/info/exclude` and the user's excludes file, read once
then: a rule written there later, by a child or anyone, is not trusted). A file those rules
ignore stays ignored (a `venv/`, `node_modules`, data, the user's `settings.local.py`); one
hidden only by another rule, or inside a nested repository, is listed as new.

`TrustedIgnore.ignored` answers with `git check-ignore --no-index` run in a throwaway
repository holding nothing but those rules; the rules and the verdicts are kept per commit,
so the restart path asks git again only about a path it has not seen (`new_files`).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from metasup_mcp.safety.gitcmd import git_env, run_git, user_excludes_file

if TYPE_CHECKING:
    from metasup_mcp.safety.refs import GitRepo

__all__ = ["TrustedIgnore", "walk_nested"]

MAX_VERDICTS = 20_000  # paths remembered per commit; past it the memory starts afresh
MAX_RULES_FILE = 1 << 20  # bytes read of the user's own rule files (a fifo or a huge file: nothing)


def _read_rules(path: Path) -> bytes:
    """A regular file's first MAX_RULES_FILE bytes, never through a fifo; b"" when unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_RULES_FILE) if stat.S_ISREG(os.fstat(fd).st_mode) else b""


def _users_excludes_file() -> Path:
    """The user's excludes file as git finds it: `core.excludesFile`, else the XDG default."""
    configured = user_excludes_file()
    if configured is not None:
        return Path(configured)
    home = Path(os.environ.get("HOME") or "~").expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git" / "ignore"


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
        """Reads the user's own rules now: build it when the workspace is opened."""
        self._repo = repo
        self._rules: _Rules | None = None
        self._info_exclude = _read_rules(repo.git_dir / "info" / "exclude")
        self._user_excludes = _read_rules(_users_excludes_file())

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
        if not files and not self._info_exclude and not self._user_excludes:
            return set()
        with tempfile.TemporaryDirectory(prefix="metasup-ignore-") as tmp:
            root = Path(tmp, "tree")
            git_dir = root / ".git"  # a repository by hand: no hooks, no config
            (git_dir / "objects").mkdir(parents=True)
            (git_dir / "refs").mkdir()
            (git_dir / "info").mkdir()
            (git_dir / "HEAD").write_bytes(b"ref: refs/heads/main\n")
            (git_dir / "info" / "exclude").write_bytes(self._info_exclude)
            excludes = Path(tmp, "excludes")
            excludes.write_bytes(self._user_excludes)
            for rel, data in files.items():
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            proc = run_git(
                ["-c", f"core.excludesFile={excludes}", "check-ignore", "--no-index", "-z", "--stdin"],
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
