"""The git repository the children run from, touched only along the ownership model.

Every write goes through four moves, each on an exact list of paths (never `add -A`, never
`reset --hard`, never `clean`; see docs/safety-model.md):

- `save(paths)`: the on-disk state of `paths` (tracked, untracked or ignored; absent ones
  noted) and the user's index (with a merge's conflicts and the entries' bits: index_extras),
  as a commit under `refs/metasup/saved/`, never pruned;
- `apply(changes)`: write and delete files (fd-relative, never through a symlink);
- `commit_paths(paths)`: stage exactly those paths in a private index, commit on the current
  branch, and bring the user's index entries for them along;
- `put_back(savepoint, paths)`: make `paths` on disk, and in the user's index, what a
  savepoint (or any commit) holds: what it lacks is deleted, and what stands in the way
  (a child's symlink, fifo or folder) is saved, then replaced without being followed.

Git runs through `gitcmd.run_git`, hardened against a hostile repository config. Every public
method sits behind `mapped` (OS errors → `WorkspaceError`); `ValueError` means the caller
passed something invalid. Not thread-safe: the pipeline's lock serialises its users.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from metasup_mcp.safety import bundles
from metasup_mcp.safety.blobs import blob_id, disk_entry
from metasup_mcp.safety.fsops import (
    delete_at, drop_bytecode, is_folder_inside, parent_dir, remove_empty_folders, unlink_inside, write_at,
)
from metasup_mcp.safety.gitcmd import IDENTITY, WorkspaceError, git_env, mapped, run_git
from metasup_mcp.safety.index_extras import (
    ASSUME_UNCHANGED,
    INTENT_TO_ADD,
    SKIP_WORKTREE,
    IndexExtras,
    extras_pathspecs,
    extras_tree_lines,
    flags_from_ls_files,
    parse_extras,
)
from metasup_mcp.safety.journal import atomic_write
from metasup_mcp.safety.ownership import Ownership
from metasup_mcp.safety.refs import (
    REF_LAST_GOOD,
    REF_REJECTED,
    REF_SAVED,
    REF_SNAPSHOTS,
    REF_VERIFIED,
    ZERO,
    GitRepo,
    RefInfo,
    stamp,
)
from metasup_mcp.safety.rules import FileChange, is_git_path
from metasup_mcp.safety.trusted_ignore import TrustedIgnore, keep, walk_nested

logger = logging.getLogger(__name__)

__all__ = [
    "IDENTITY",
    "REF_LAST_GOOD",
    "REF_REJECTED",
    "REF_SAVED",
    "REF_SNAPSHOTS",
    "REF_VERIFIED",
    "CommitInfo",
    "Glance",
    "RefInfo",
    "Savepoint",
    "Workspace",
    "WorkspaceError",
]


class CommitInfo(NamedTuple):
    sha: str
    summary: str
    date: datetime  # committer date, UTC


class TreeEntry(NamedTuple):
    """A file in a commit: `ls-tree -l`'s mode, object id and size (-1: not a blob)."""

    mode: str
    sha: str
    size: int


class Savepoint(NamedTuple):
    """What `save` recorded: `commit` holds the paths as they were (HEAD itself when they all
    matched it), `index` the user's index then; `ref` names it when anything differed."""

    ref: str | None
    commit: str
    index: str | None
    head: str


ARGV_BUDGET = 256 * 1024  # bytes of paths per git call: ARG_MAX is 2 MiB on Linux, less elsewhere


def _batches(paths: Sequence[str]) -> Iterator[list[str]]:
    """`paths` in runs whose bytes fit one command line, for git commands that take no stdin."""
    batch: list[str] = []
    size = 0
    for path in paths:
        cost = len(path.encode("utf-8", "surrogateescape")) + 1
        if batch and size + cost > ARGV_BUDGET:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += cost
    if batch:
        yield batch


def _is_special(path: Path) -> bool:
    """Neither a regular file, a symlink nor a folder (a fifo, a socket, a device)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode))


RAW_WRITE_LIMIT = 64 * 1024 * 1024  # bytes: a saved file larger than this goes back through a checkout


def _by_size(entries: list[tuple[str, str, str, int]]) -> Iterator[list[tuple[str, str, str, int]]]:
    """Runs of one `cat-file --batch` each, so a put-back holds at most ~RAW_WRITE_LIMIT in memory."""
    run: list[tuple[str, str, str, int]] = []
    total = 0
    for entry in entries:
        if run and total + entry[3] > RAW_WRITE_LIMIT:
            yield run
            run, total = [], 0
        run.append(entry)
        total += entry[3]
    if run:
        yield run


WRITERS = 8  # files written at once: each waits on its own fsync, which a disk serves in batches


def _write_one(root: Path, path: str, data: bytes, executable: bool) -> None:
    with parent_dir(root, path, create=True) as (dir_fd, name):
        write_at(dir_fd, name, data, executable=executable, replace_other=True)  # a child's symlink or fifo there goes


def _write_files(root: Path, files: Sequence[tuple[str, bytes, bool]]) -> None:
    """Write `(path, bytes, executable)` each atomically and durably (`write_at`), several at
    once: a put-back of many files would otherwise wait for one disk flush after another."""
    if len(files) < 2:
        for path, data, executable in files:
            _write_one(root, path, data, executable)
        return
    with ThreadPoolExecutor(max_workers=min(WRITERS, len(files)), thread_name_prefix="metasup-write") as pool:
        for done in [pool.submit(_write_one, root, *file) for file in files]:
            done.result()  # the first failure is raised, after every write has ended


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _is_sha(rev: str) -> bool:
    return len(rev) in (40, 64) and all(c in "0123456789abcdef" for c in rev)


def _ancestors(path: str) -> Iterator[str]:
    """`a/b/c` → `a/b`, `a`."""
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path


def _nul(paths: Iterable[str]) -> bytes:
    return b"\0".join(p.encode("utf-8", "surrogateescape") for p in paths)


class Glance(NamedTuple):
    """What `Workspace.glance` saw: HEAD (None on an unborn branch), the paths that may differ,
    and (asked for) what git's ignore rules on disk hide (a folder ends in `/`)."""

    head: str | None
    changed: list[str]
    untracked: list[str]
    ignored: tuple[str, ...] = ()
    gitlinks: tuple[str, ...] = ()  # changed paths the index or disk holds as a nested repository, HEAD not


class Workspace(GitRepo):
    """Open with `Workspace.open_or_init` or `Workspace.restore_from_bundle`."""

    _trusted_ignore: TrustedIgnore | None = None

    @property
    def _trusted(self) -> TrustedIgnore:
        if self._trusted_ignore is None:
            self._trusted_ignore = TrustedIgnore(self)
        return self._trusted_ignore

    @contextlib.contextmanager
    def _temp_index(self, start: str | None) -> Iterator[dict[str, str]]:
        """A private index (loaded with `start`'s tree), so the user's staging area is never touched."""
        index = self.git_dir / "index"  # a linked worktree's git dir holds its own index
        tmp = index.with_name(f"metasup-index-{secrets.token_hex(6)}")
        env = {"GIT_INDEX_FILE": str(tmp)}
        try:
            if start is not None:
                self._git("read-tree", start, env=env)
            yield env
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".lock")):
                leftover.unlink(missing_ok=True)

    def _user_index_tree(self) -> tuple[str, list[str]]:
        """The tree of the user's index, written from a copy (write-tree would update its cache),
        and its unmerged entries (`ls-files --stage` lines of a merge in progress), which no
        tree can hold: they are left out of it."""
        index = self.git_dir / "index"  # a linked worktree's git dir holds its own index
        with self._temp_index(None) as env:
            if index.exists():
                shutil.copyfile(index, env["GIT_INDEX_FILE"])
            written = self._git("write-tree", env=env, ok=(0, 128))
            if written.returncode == 0:
                return written.stdout.decode().strip(), []
            unmerged = self._z("ls-files", "--unmerged", "-z", env=env)  # only asked when write-tree refused
            conflicted = sorted({line.partition("\t")[2] for line in unmerged})
            self._git("update-index", "--force-remove", "-z", "--stdin", input=_nul(conflicted), env=env)
            return self._out("write-tree", env=env), unmerged

    def _index_flags(self, paths: Sequence[str], index_tree: str) -> dict[str, frozenset[str]]:
        """The skip-worktree, assume-unchanged and intent-to-add bits of the user's entries for `paths`."""
        lines = [line for batch in _batches(paths)
                 for line in self._z("--literal-pathspecs", "ls-files", "-v", "--stage", "-z", "--", *batch)]
        empty = blob_id(b"", len(index_tree))
        maybe = [line.partition("\t")[2] for line in lines if f" {empty} 0\t" in line]  # i-t-a is never in a tree
        in_tree = set(self._entries(index_tree, maybe)) if maybe else set()
        return flags_from_ls_files(lines, empty, in_tree)

    def _extras_commit(self, extras: IndexExtras, hex_length: int) -> str:
        """A commit whose tree holds what a tree of the index cannot (see index_extras)."""
        lines = extras_tree_lines(extras, blob_id(b"", hex_length))
        with self._temp_index(None) as env:
            self._git("update-index", "--add", "-z", "--index-info", input=_nul(lines) + b"\0", env=env)
            tree = self._out("write-tree", "--missing-ok", env=env)  # the empty blob need not be stored
        return self._commit_tree(tree, [], "metasup: the index's unmerged entries and bits at save\n")

    def _extras_at(self, index: str, paths: Sequence[str]) -> IndexExtras:
        """What a savepoint's index commit kept of `paths` beyond its tree (none: nothing kept)."""
        second = self._git("rev-parse", "--quiet", "--verify", f"{index}^2^{{commit}}", ok=(0, 1))
        if second.returncode != 0:
            return IndexExtras([], {})
        commit = second.stdout.decode().strip()
        return parse_extras(line for batch in _batches(extras_pathspecs(paths))
                            for line in self._z("--literal-pathspecs", "ls-tree", "-r", "-z", commit, "--", *batch))

    def _flags_back(self, flags: Mapping[str, frozenset[str]]) -> None:
        """Give the user's entries their saved bits back (after `_index_from` wrote them)."""
        def having(flag: str) -> list[str]:
            return sorted(p for p, bits in flags.items() if flag in bits)
        intent = [p for p in having(INTENT_TO_ADD) if os.path.lexists(self.root / p)]  # git adds only what is there
        if intent:
            self._git("--literal-pathspecs", "add", "--intent-to-add", "--force", "--pathspec-from-file=-",
                      "--pathspec-file-nul", input=_nul(intent))
        for flag in (SKIP_WORKTREE, ASSUME_UNCHANGED):
            if having(flag):
                self._git("update-index", f"--{flag}", "-z", "--stdin", input=_nul(having(flag)))

    def _stage(self, paths: Sequence[str], env: Mapping[str, str] | None = None, *, replace: bool = False) -> None:
        """Index entries for `paths` from disk, ignore rules not consulted; absent ones removed.
        `replace`: an entry a path now stands in the way of (`a/b` of a file `a`) goes."""
        if paths:
            flags = ("--replace",) if replace else ()
            self._git("update-index", "--add", "--remove", *flags, "-z", "--stdin", input=_nul(paths), env=env)

    def _index_from(self, entries: Mapping[str, TreeEntry], paths: Sequence[str], unmerged: Sequence[str] = ()) -> None:
        """The user's index entries for `paths` as `entries` (a listing of the source) has them;
        a path it lacks is removed; `unmerged` (`ls-files --stage` lines) go back as conflicts.
        One `update-index --index-info`: `reset -- <paths>` would pathspec-match every entry of
        a large index."""
        zero = "0" * len(next(iter(entries.values())).sha) if entries else ZERO
        lines = [f"0 {zero}\t{p}" for p in paths if p not in entries]
        lines += [f"{e.mode} {e.sha}\t{p}" for p, e in sorted(entries.items())]
        # a stage above 0 goes in only once the path's entry is gone (git update-index, "USING --INDEX-INFO")
        lines += [f"0 {zero}\t{p}" for p in sorted({line.partition("\t")[2] for line in unmerged})]
        lines += unmerged
        self._git("update-index", "-z", "--index-info", input=_nul(lines) + b"\0")

    # --- opening -----------------------------------------------------------------------

    @classmethod
    @mapped
    def open_or_init(cls, root: Path, exclude: Sequence[str] = (), ownership: Ownership | None = None) -> Workspace:
        """Open the repository at `root`, or create it (and the folder) with a first commit of
        what is there, except ignored files, data and operator-owned paths.

        `exclude` are gitignore patterns written to .git/info/exclude.
        """
        root = Path(root).absolute()
        root.mkdir(parents=True, exist_ok=True)
        # The ceiling stops discovery at root: a workspace inside another repository
        # (.metasup-workspace/ in a project) must get its own repo, not the parent's.
        probe = run_git(
            ["rev-parse", "--absolute-git-dir"], cwd=root,
            env=git_env(None, None, {"GIT_CEILING_DIRECTORIES": str(root.parent)}), ok=(0, 128),
        )
        if probe.returncode == 0:
            git_dir = Path(probe.stdout.decode("utf-8", "surrogateescape").strip())
        elif os.path.lexists(root / ".git"):
            raise WorkspaceError(
                f"{root / '.git'} exists but is not a usable repository; restore it with "
                "Workspace.restore_from_bundle or move it aside"
            )
        else:
            run_git(["init", "-q", "--initial-branch=main", str(root)], cwd=root, env=git_env(None, None))
            git_dir = root / ".git"
        ws = cls(root, git_dir, ownership or Ownership(root))
        ws.add_excludes(exclude)
        ws._trusted_ignore = TrustedIgnore(ws)  # the user's own ignore rules as they are now
        if ws._git("rev-parse", "--verify", "--quiet", "HEAD", ok=(0, 1)).returncode == 1:
            ws._first_commit()
        return ws

    def _first_commit(self) -> None:
        staged, _ = self._user_index_tree()  # `git add` before any commit: kept, the index is rebuilt below
        if staged != self._out("hash-object", "-t", "tree", "/dev/null"):
            kept = self._commit_tree(staged, [], "metasup saved: the index before the first snapshot\n")
            self._create_ref(REF_SAVED + stamp(), kept)
        with self._temp_index(None) as env:
            self._git("add", "-A", env=env)  # unborn HEAD: what is there (not ignored) is the start
            unwanted = [p for p in self._z("ls-files", "-z", env=env) if self.ownership.never_code(p)]
            if unwanted:
                self._git("rm", "-q", "--cached", "--pathspec-from-file=-", "--pathspec-file-nul", env=env, input=_nul(unwanted))
            tree = self._out("write-tree", env=env)
        sha = self._commit_tree(tree, [], "metasup: first snapshot of the workspace\n")
        self._git("update-ref", "-m", "metasup: first snapshot", "HEAD", sha, ZERO)
        self._git("reset", "-q")  # the user's index from the new HEAD

    @mapped
    def add_excludes(self, patterns: Iterable[str]) -> None:
        path = Path(self.root, self._out("rev-parse", "--git-path", "info/exclude"))
        existing = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        missing = [p for p in dict.fromkeys(patterns) if p not in existing]
        if missing:
            header = [] if "# added by metasup-mcp" in existing else ["# added by metasup-mcp"]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, ("\n".join([*existing, *header, *missing]) + "\n").encode("utf-8"))

    # --- questions ---------------------------------------------------------------------

    @mapped
    def head(self) -> str:
        return self._resolve("HEAD")

    @mapped
    def tracked_files(self, commit: str = "HEAD") -> list[str]:
        """The files of `commit` (workspace-relative), in git's order."""
        return self._z("ls-tree", "-r", "--name-only", "-z", commit)

    @mapped
    def is_dirty(self) -> bool:
        """Modified, staged, deleted or untracked (not ignored) files."""
        return bool(self._git("status", "--porcelain=v1", "-z", "--untracked-files=normal").stdout)

    @mapped
    def changed_paths(self, since: str, *, untracked: bool = True, worktree: bool = True) -> list[str]:
        """Paths where HEAD, or (with `worktree`) the working tree, differs from `since`; with
        `untracked`, also untracked files that are not ignored."""
        base = self._resolve(since)
        changed = set(self._z("diff-tree", "-r", "--name-only", "-z", "--no-renames", base, "HEAD"))
        if worktree:
            changed |= set(self._z("diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv", base, "--"))
        if untracked:
            changed |= set(self._z("ls-files", "-z", "--others", "--exclude-standard"))
        return sorted(changed)

    @mapped
    def changes_since(self, since: str, watched: Callable[[str], bool] | None = None) -> tuple[list[str], list[str]]:
        """(tracked paths where HEAD or the working tree differs from `since`, untracked files
        that are not ignored): `changed_paths` split in one pass. With `watched`, the untracked
        files are `new_files(since, watched)`: judged by `since`'s committed ignore rules alone."""
        tracked = self.changed_paths(since, untracked=False)
        if watched is None:
            return tracked, sorted(set(self._z("ls-files", "-z", "--others", "--exclude-standard")) - set(tracked))
        listed, walked = self._new_files(since, watched, None)
        tracked = [p for p in tracked if p not in walked]  # a new gitlink is its files, as an untracked nested repo
        return tracked, sorted(set(listed) - set(tracked))

    @mapped
    def new_files(self, since: str, watched: Callable[[str], bool], seen: Glance | None = None) -> list[str]:
        """The untracked files `watched` names that `since`'s COMMITTED `.gitignore` files do not
        ignore, sorted: what is new code under an explicit `watch`. Git's other rules are not
        trusted (anyone can write them): a file hidden only by info/exclude, the user's excludes
        file, or a `.gitignore` untracked or edited on disk is listed, as is every file of an
        untracked nested repository, and of one staged or committed as a gitlink that `since`
        lacks (git lists only the gitlink). A symlink counts when `watched` names it or, asked
        as a folder (`link/`), anything under it: the server loads code through it; it is listed
        as the symlink it is, never followed. `seen`: a `glance(ignored=True)` already taken
        (the restart path's); past it, git runs only when something hidden may be a watched file.
        See safety/trusted_ignore.py."""
        return self._new_files(since, watched, seen)[0]

    def _new_files(self, since: str, watched: Callable[[str], bool], seen: Glance | None) -> tuple[list[str], set[str]]:
        """`new_files`, and the gitlinks it walked as nested repositories."""
        commit = since if _is_sha(since) else self._resolve(since)  # the restart path passes a sha
        seen = seen if seen is not None else self.glance(ignored=True)

        def named(path: str) -> bool:  # the lstat only for a path that may be a link to watched code
            return watched(path) or (watched(path + "/") and os.path.islink(self.root / path))

        hidden = [p for p in seen.ignored if p.endswith("/") or named(p)]
        untrusted = sorted(set(hidden) - self._trusted.ignored(commit, hidden)) if hidden else []
        folders = [p for p in untrusted if p.endswith("/")]
        inside = [p for batch in _batches(folders) for p in self._z("--literal-pathspecs", "ls-files", "-z", "--others", "--", *batch)]
        gitlinks = {p for p in self._gitlinks_since(commit, seen) if watched(p + "/")}
        nested = [p for p in [*seen.untracked, *inside] if p.endswith("/")] + [f"{p}/" for p in sorted(gitlinks)]
        found = keep([*seen.untracked, *untrusted, *inside, *walk_nested(self.root, nested)], named)
        return (sorted(set(found) - self._trusted.ignored(commit, found)) if found else []), gitlinks

    def _gitlinks_since(self, commit: str, seen: Glance) -> list[str]:
        """Gitlinks (mode 160000) the user's index or HEAD holds and `commit` does not: the
        glance's, and (HEAD moved past `commit`) those HEAD gained, from one `diff-tree`."""
        found = list(seen.gitlinks)
        if seen.head is not None and seen.head != commit:
            records = iter(self._z("diff-tree", "-r", "-z", "--no-renames", commit, seen.head))
            for meta, path in zip(records, records):  # ":<old mode> <new mode> <old> <new> <status>", the path
                old_mode, new_mode = meta[1:].split(" ", 2)[:2]
                if new_mode == "160000" and old_mode != "160000":
                    found.append(path)
        return found

    @mapped
    def glance(self, ignored: bool = False) -> Glance:
        """HEAD and every path that may differ from it on disk, in ONE git call (`git status`):
        the restart path's quick look (`DiskGuard.before_start`). A superset: staged, unstaged
        and unmerged paths (`changed`), untracked files that are not ignored (`untracked`).

        Git's index stat cache decides which files to read (`core.trustctime` and
        `core.checkStat` pinned: an edit whose mtime was set back still differs by its ctime).
        Git compares ctime by the second only: a same-size edit in the second the index
        recorded, mtime set back, is not seen here (`evolution/content_check.py` finds it).
        `--no-optional-locks`: the user's index is read, never rewritten. With `ignored`, also
        what the ignore rules on disk hide (`--ignored=matching`: an ignored folder as `dir/`,
        never walked): the same walk, for `new_files`."""
        proc = self._git(
            "-c", "core.trustctime=true", "-c", "core.checkStat=default", "--no-optional-locks",
            "status", "--porcelain=v2", "-z", "--branch", "--untracked-files=all", "--no-renames",
            *(["--ignored=matching"] if ignored else []),
        )
        head: str | None = None
        changed: list[str] = []
        untracked: list[str] = []
        hidden: list[str] = []
        gitlinks: list[str] = []
        records = iter(proc.stdout.decode("utf-8", "surrogateescape").split("\0"))
        for record in records:
            kind, _, rest = record.partition(" ")
            if kind == "#" and rest.startswith("branch.oid "):
                oid = rest.split(" ", 1)[1]
                head = oid if oid != "(initial)" else None
            elif kind == "1":  # "<XY> <sub> <mH> <mI> <mW> <hH> <hI> <path>"
                fields = rest.split(" ", 7)
                changed.append(fields[7])
                if fields[2] != "160000" and "160000" in fields[3:5]:
                    gitlinks.append(fields[7])
            elif kind == "2":  # a rename (not asked for): both of its paths
                changed += [rest.split(" ", 8)[8], next(records, "")]
            elif kind == "u":  # "<XY> <sub> <m1> <m2> <m3> <mW> <h1> <h2> <h3> <path>"
                fields = rest.split(" ", 9)
                changed.append(fields[9])
                if "160000" in fields[2:6]:
                    gitlinks.append(fields[9])
            elif kind == "?":
                untracked.append(rest)
            elif kind == "!":
                hidden.append(rest)
        return Glance(head, sorted(p for p in changed if p), sorted(untracked), tuple(sorted(hidden)), tuple(sorted(gitlinks)))

    @mapped
    def untracked_files(self, exclude_standard: bool = True) -> list[str]:
        """Files git does not track; with `exclude_standard`, not those the ignore rules on disk
        (and info/exclude, the user's excludes file) ignore."""
        return self._z("ls-files", "-z", "--others", *(["--exclude-standard"] if exclude_standard else []))

    @mapped
    def tree_entries(self, commit: str) -> dict[str, tuple[str, str]]:
        """Every file of `commit`: path → (git mode, object id)."""
        entries: dict[str, tuple[str, str]] = {}
        for record in self._z("ls-tree", "-r", "-z", "--full-tree", self._resolve(commit)):
            meta, _, path = record.partition("\t")
            mode, _, oid = meta.split(" ")
            entries[path] = (mode, oid)
        return entries

    @mapped
    def hash_files(self, paths: Sequence[str]) -> list[str]:
        """The object id each of `paths` would have if committed now (the repository's eol and
        attribute conversions applied; filter drivers neutralised), in order. Nothing is written."""
        if not paths:
            return []
        if any("\n" in p for p in paths):
            raise ValueError("a path with a newline cannot be hashed through --stdin-paths")
        text = "".join(f"{p}\n" for p in paths).encode("utf-8", "surrogateescape")
        return self._out("hash-object", "--stdin-paths", input=text).split()

    @mapped
    def ignored(self, paths: Sequence[str]) -> set[str]:
        """Those of `paths` that HEAD's committed `.gitignore` files ignore and git does not track
        (HEAD or the user's index): never a rule on disk another process could write (see
        `new_files`)."""
        if not paths:
            return set()
        head = self._resolve("HEAD")
        tracked = self._trusted.rules(head).tracked
        hits = self._trusted.ignored(head, [p for p in paths if p not in tracked])
        for batch in _batches(sorted(hits)):
            hits -= set(self._z("--literal-pathspecs", "ls-files", "-z", "--cached", "--", *batch))
        return hits

    @mapped
    def ignored_at(self, commit: str, paths: Sequence[str]) -> set[str]:
        """Those of `paths` that the `.gitignore` files `commit` holds would ignore (no other
        rule: info/exclude and the user's excludes file are anyone's to write): what was data
        before a `.gitignore` on disk was edited. A folder ends in `/`."""
        if not paths:
            return set()
        return self._trusted.ignored(commit if _is_sha(commit) else self._resolve(commit), paths)

    @mapped
    def initial_commit(self) -> str:
        return self._out("rev-list", "--max-parents=0", "HEAD").splitlines()[-1]

    @mapped
    def is_ancestor(self, a: str, b: str) -> bool:
        proc = self._git("merge-base", "--is-ancestor", self._resolve(a), self._resolve(b), ok=(0, 1))
        return proc.returncode == 0

    @mapped
    def only_ours_between(self, base: str, tip: str) -> bool:
        """Every commit in base..tip was made by the supervisor (and base is an ancestor of tip)."""
        if not self.is_ancestor(base, tip):
            return False
        emails = self._out("log", "--format=%ae", f"{self._resolve(base)}..{self._resolve(tip)}").split()
        return all(email == IDENTITY[1] for email in emails)

    @mapped
    def commit_info(self, sha: str) -> CommitInfo:
        full, summary, ts = self._out("show", "-s", "--format=%H%x00%s%x00%ct", self._resolve(sha)).split("\0")
        return CommitInfo(full, summary, datetime.fromtimestamp(int(ts), timezone.utc))

    @mapped
    def commit_message(self, sha: str) -> str:
        return self._out("show", "-s", "--format=%B", self._resolve(sha))

    @mapped
    def is_healthy(self) -> bool:
        """HEAD's commit and tree readable, index readable, every reachable object present."""
        try:
            self._git("rev-parse", "--verify", "--quiet", "HEAD^{tree}")
            self._git("status", "--porcelain", "--untracked-files=no")
            self._git("fsck", "--connectivity-only", "--no-dangling", "--no-progress")
        except WorkspaceError:
            return False
        return True

    @mapped
    def read_text(self, rel: str, limit: int) -> str | None:
        """A regular file's text (None: absent, not regular, over `limit` bytes or not UTF-8)."""
        try:
            with parent_dir(self.root, rel, create=False) as (dir_fd, name):
                # O_NONBLOCK: opening a fifo a child planted must not hang the supervisor.
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as f:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        return None
                    data = f.read(limit + 1)
        except (OSError, WorkspaceError):
            return None
        if len(data) > limit:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    # --- the four moves ----------------------------------------------------------------

    def _on_disk(self, paths: Iterable[str]) -> list[str]:
        """The files a write of `paths` could remove: each path, or every file under it when it
        is a folder on disk, and a file (or symlink) standing where a path needs a folder (then
        nothing below it: git holds no path both as a file and as a folder)."""
        found: set[str] = set()
        for path in paths:
            parts = path.split("/")
            for i in range(1, len(parts)):
                prefix = "/".join(parts[:i])
                here = self.root / prefix
                if here.is_symlink() or (os.path.lexists(here) and not here.is_dir()):
                    found.add(prefix)
                    break
            else:
                full = self.root / path
                if full.is_dir() and not full.is_symlink():
                    for folder, dirs, files in os.walk(full):  # symlinked folders are listed, not entered
                        dirs[:] = [d for d in dirs if not is_git_path(d)]
                        rel = Path(folder).relative_to(self.root).as_posix()
                        found.update(f"{rel}/{name}" for name in files)
                        found.update(f"{rel}/{d}" for d in dirs if Path(folder, d).is_symlink())
                else:
                    found.add(path)
        return sorted(found)

    @mapped
    def save(self, paths: Sequence[str], reason: str) -> Savepoint:
        """Record `paths` as they are on disk (a folder standing at one: every file under it),
        and the user's index, before anything touches them."""
        head = self.head()
        head_tree = self._out("rev-parse", "HEAD^{tree}")
        index_tree, unmerged = self._user_index_tree()
        paths = self._on_disk(paths)
        extras = IndexExtras(unmerged, self._index_flags(paths, index_tree))
        special = [p for p in paths if _is_special(self.root / p)]  # fifos, sockets: no bytes to keep
        regular = [p for p in paths if _is_regular(self.root / p)]
        with self._temp_index(head) as env:
            # --replace: a file or symlink now where the tree has a folder (a child's link out) drops what was below
            self._stage([p for p in paths if p not in special and p not in regular], env, replace=True)  # symlinks, absent
            if special:
                self._git("update-index", "--force-remove", "-z", "--stdin", input=_nul(special), env=env)
            if regular:  # their bytes exactly: no eol conversion or filter a .gitattributes asks for
                self._git("update-index", "--replace", "-z", "--index-info", input=self._raw_entries(regular), env=env)
            tree = self._out("write-tree", env=env)
        if tree == head_tree and index_tree == head_tree and not extras:
            return Savepoint(None, head, None, head)
        parents = [head]
        index = None
        if index_tree != head_tree or extras:  # a merge's conflicts, and entries' bits: in a second parent
            more = [self._extras_commit(extras, len(head))] if extras else []
            index = self._commit_tree(index_tree, [head, *more], f"metasup: the index at save: {reason}\n")
            parents.append(index)
        listed = "".join(f"  {p}\n" for p in sorted(set(paths))[:200])
        message = (f"metasup saved: {reason}\n\nPaths as they were on disk (absent here = did not exist):\n"
                   f"{listed}\nMetasup-Saved-Head: {head}\n")
        sha = self._commit_tree(tree, parents, message)
        return Savepoint(self._create_ref(REF_SAVED + stamp(), sha), sha, index, head)

    def _raw_entries(self, regular: Sequence[str]) -> bytes:
        """`update-index --index-info` lines for regular files, hashed as the bytes on disk."""
        lines = []
        for batch in _batches(regular):
            shas = self._out("hash-object", "-w", "--no-filters", "--", *batch).split()
            for path, sha in zip(batch, shas, strict=True):
                mode = "100755" if (self.root / path).lstat().st_mode & stat.S_IXUSR else "100644"
                lines.append(f"{mode} {sha}\t{path}")
        return _nul(lines) + b"\0"

    def _write_raw(self, entries: Mapping[str, TreeEntry], paths: Sequence[str]) -> list[str]:
        """Write the regular files among `paths` (listed in `entries`) byte for byte (no eol
        conversion or filter: a savepoint holds them as they were on disk), skipping those on
        disk already; return the paths left to a checkout (symlinks, and files over
        RAW_WRITE_LIMIT, which are not held in memory)."""
        regular: list[tuple[str, str, str, int]] = []
        for path in paths:
            entry = entries[path]
            if entry.mode in ("100644", "100755") and 0 <= entry.size <= RAW_WRITE_LIMIT:
                regular.append((entry.mode, entry.sha, path, entry.size))
        written = {path for _, _, path, _ in regular}
        regular = [r for r in regular if not self._holds(r[2], r[0], r[1], r[3])]
        for run in _by_size(regular):
            out = self._git("cat-file", "--batch", input="".join(f"{sha}\n" for _, sha, _, _ in run).encode()).stdout
            files: list[tuple[str, bytes, bool]] = []
            at = 0
            for mode, _, path, _ in run:
                header_end = out.index(b"\n", at)
                size = int(out[at:header_end].split()[2])
                files.append((path, out[header_end + 1: header_end + 1 + size], mode == "100755"))
                at = header_end + 1 + size + 1
            _write_files(self.root, files)
        return [p for p in paths if p not in written]

    def _holds(self, path: str, mode: str, sha: str, size: int) -> bool:
        """Whether the file at `path` is already exactly that blob, with that mode."""
        try:
            if (self.root / path).lstat().st_size != size:
                return False
        except OSError:
            return False
        return disk_entry(self.root, path, len(sha)) == (mode, sha)

    @mapped
    def untouched_since_commit(self, paths: Sequence[str]) -> bool:
        """Whether `paths` are on disk exactly as the user's index has them (after `commit_paths`:
        as committed), none of them untracked or ignored: a cheap check before a second save.

        One `ls-files --stage` for the index entries and the files hashed here, raw: git's own
        `--modified` check would stat and pathspec-match every entry of a large index.
        """
        if not paths:
            return True
        wanted = set(paths)
        staged: dict[str, tuple[str, str]] = {}
        for batch in _batches(sorted(wanted)):
            for line in self._z("--literal-pathspecs", "ls-files", "--stage", "-z", "--", *batch):
                meta, _, path = line.partition("\t")
                mode, sha, stage = meta.split()
                if stage != "0" or path not in wanted:
                    return False  # a conflict, or entries under a path that is a folder in the index
                staged[path] = (mode, sha)
        hex_length = len(next(iter(staged.values()))[1]) if staged else 40  # nothing staged: only absence matches
        return all(disk_entry(self.root, path, hex_length) == staged.get(path) for path in wanted)

    @mapped
    def apply(self, changes: Sequence[FileChange]) -> None:
        """Write and delete files, never following a symlink and never entering .git.

        Callers validate first (rules.validate_changes); these checks are the last line.
        Writes are atomic per file and keep the mode of the file they replace.
        """
        for change in changes:
            try:
                with parent_dir(self.root, change.path, create=not change.delete) as (dir_fd, name):
                    if change.content is None:
                        delete_at(dir_fd, name)
                    else:
                        write_at(dir_fd, name, change.content.encode("utf-8"))
                    os.fsync(dir_fd)
            except OSError as exc:
                raise WorkspaceError(f"cannot apply {change.path}: {exc.strerror or exc}") from exc
        drop_bytecode(self.root, [c.path for c in changes])

    @mapped
    def commit_paths(
        self, paths: Sequence[str], message: str, trailers: Mapping[str, str] | None = None,
        ignored: Iterable[str] | None = None,
    ) -> str:
        """Commit exactly `paths` as they are on disk on the current branch; raise
        WorkspaceError("nothing to commit...") when that changes nothing.

        Operator-owned and data paths, and untracked files git ignores (`ignored`: as asked
        before the change was written, so a change emptying .gitignore sweeps nothing in), are
        never staged, whatever the caller passes. The user's index entries for them follow.
        """
        head = self.head()
        wanted = self.ownership.code_only(sorted(set(paths)))
        skip = set(self.ignored(wanted)) | set(ignored or ())
        wanted = [p for p in wanted if p not in skip]
        # --replace: a file of a nested repository staged as a gitlink takes the gitlink's place
        with self._temp_index(head) as env:
            self._stage(wanted, env, replace=True)
            tree = self._out("write-tree", env=env)
        if tree == self._out("rev-parse", "HEAD^{tree}"):
            raise WorkspaceError("nothing to commit: the working tree matches HEAD")
        text = message.strip() + "\n"
        if trailers:
            text += "\n" + "".join(f"{k}: {v}\n" for k, v in trailers.items())
        sha = self._commit_tree(tree, [head], text)
        self._git("update-ref", "-m", f"metasup: {message.strip().splitlines()[0][:72]}", "HEAD", sha, head)
        self._stage(wanted, replace=True)  # the user's index: these entries as committed (from disk, with stat data)
        return sha

    @mapped
    def put_back(self, source: str | Savepoint, paths: Sequence[str]) -> None:
        """Make `paths` on disk what `source` holds (deleted where it lacks them), and the
        user's index entries for them what they were at the savepoint (or `source`'s)."""
        commit = source.commit if isinstance(source, Savepoint) else self._resolve(source)
        index = (source.index or source.head) if isinstance(source, Savepoint) else commit
        paths = sorted(set(paths))
        if not paths:
            return
        entries = self._entries(commit, paths)
        present = set(entries)
        folders = {f for p in present for f in _ancestors(p)}
        absent = [p for p in paths if p not in present and p not in folders]
        way, through = self._in_the_way_of_absent(commit, absent)
        in_the_way = sorted((set(self._on_disk(present)) - set(paths)) | way)
        if in_the_way:  # a folder where a file goes back, or a file where a folder does: git would delete them
            kept = self.save(in_the_way, f"in the way of putting back {len(paths)} paths from {commit[:12]}")
            logger.warning("saved %d files in the way of a put-back under %s", len(in_the_way), kept.ref)
        absent = [p for p in absent if p not in through]  # below a file or symlink the source holds: nothing there
        rest = sorted(present)
        self._clear_way(in_the_way, absent, rest)
        if isinstance(source, Savepoint) and rest:
            rest = self._write_raw(entries, rest)
        if rest:
            with self._temp_index(commit) as env:
                self._git("checkout-index", "-f", "-z", "--stdin", env=env, input=_nul(rest))
        drop_bytecode(self.root, paths)
        extras = self._extras_at(source.index, paths) if isinstance(source, Savepoint) and source.index else None
        self._index_from(entries if index == commit else self._entries(index, paths), paths, extras.unmerged if extras else ())
        if extras and extras.flags:
            self._flags_back(extras.flags)

    def _in_the_way_of_absent(self, commit: str, absent: Sequence[str]) -> tuple[set[str], set[str]]:
        """What stands at paths `commit` lacks and must go (files under a folder there, and a
        file or symlink where a folder leads to them, a child's link out), and those paths that
        lie below a file or symlink `commit` itself holds (left alone: the user's own link)."""
        way: set[str] = set()
        prefixes: dict[str, list[str]] = {}
        for path in absent:
            for found in self._on_disk([path]):
                if found.startswith(path + "/"):
                    way.add(found)
                elif found != path:
                    prefixes.setdefault(found, []).append(path)
        held = self._entries(commit, sorted(prefixes)) if prefixes else {}
        through = {path for prefix, below in prefixes.items() if prefix in held for path in below}
        way.update(prefix for prefix in prefixes if prefix not in held)
        return way, through

    def _entries(self, commit: str, paths: Sequence[str]) -> dict[str, TreeEntry]:
        """What `commit` holds at `paths` (a path that is a folder there: every file under it)."""
        found: dict[str, TreeEntry] = {}
        for batch in _batches(paths):
            for line in self._z("--literal-pathspecs", "ls-tree", "-r", "-z", "-l", commit, "--", *batch):
                meta, _, path = line.partition("\t")
                mode, _, sha, size = meta.split()
                found[path] = TreeEntry(mode, sha, int(size) if size.isdigit() else -1)
        return found

    def _clear_way(self, in_the_way: Sequence[str], absent: Sequence[str], targets: Sequence[str]) -> None:
        """Remove what stands where `targets` go and at `absent` paths (saved already), and the
        folders that leaves empty; a folder still holding something (a nested repository)
        stops the put-back. Every step goes through directory fds, never a symlink: one put back
        meanwhile on the way to a path stops the put-back (WorkspaceError)."""
        for path in [*in_the_way, *absent]:
            if not is_folder_inside(self.root, path):
                try:
                    unlink_inside(self.root, path)
                except OSError as exc:
                    raise WorkspaceError(f"cannot put back {path}: {exc.strerror or exc} on the way to it (a symlink put back?)") from exc
        for target in [*targets, *absent]:
            if not remove_empty_folders(self.root, target):
                raise WorkspaceError(f"cannot put back {target}: the folder there still holds files it may not remove")

    @mapped
    def move_head(self, expected: str, to: str) -> bool:
        """Point the current branch at `to` if it is still at `expected`; the tree is not touched."""
        proc = self._git("update-ref", "-m", f"metasup: back to {to[:12]}", "HEAD", self._peeled(to), self._peeled(expected), ok=(0, 1, 128))
        if proc.returncode != 0:
            self._resolve(to)  # an invalid `to` is an error, not a branch that moved on
        return proc.returncode == 0

    # --- backups -----------------------------------------------------------------------

    @mapped
    def write_bundle(self, backup_dir: Path, keep: int = 3) -> Path:
        """`git bundle create --all` into backup_dir atomically; keep the newest `keep`."""
        return bundles.write_bundle(self._git, backup_dir, keep)

    @classmethod
    @mapped
    def restore_from_bundle(cls, root: Path, backup_dir: Path, exclude: Sequence[str] = (), ownership: Ownership | None = None) -> Workspace:
        """Rebuild `root/.git` from the newest usable bundle; the broken one moves to
        `.git.broken-<time>`. The working tree is left as it is (the index is rebuilt
        from HEAD), so user work survives as uncommitted changes."""
        root = Path(root).absolute()
        dot_git, patterns = bundles.rebuild_git_dir(root, backup_dir)
        ws = cls(root, dot_git, ownership or Ownership(root))
        ws.add_excludes([*patterns, *exclude])
        ws._trusted_ignore = TrustedIgnore(ws)
        ws._git("reset", "-q")  # index from HEAD; the working tree is untouched
        return ws

