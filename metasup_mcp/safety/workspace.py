"""The git repository the children run from: snapshot, apply, commit, reset, rescue refs.

Git runs through one helper (`_run`) with a cleaned environment instead of GitPython's
command wrapper: GitPython always starts from ``os.environ`` and honours inherited
``GIT_DIR``/``GIT_WORK_TREE``/``GIT_OBJECT_DIRECTORY`` (set, for example, when the
supervisor is started from a git hook), and it has no way to drop them. Every call pins
``GIT_DIR`` and ``GIT_WORK_TREE``, a fixed identity, hooks off and signing off, and
closes stdin (the supervisor's stdin is the MCP transport). A failed git command
becomes `WorkspaceError` in `_run`, and every public method is wrapped by `_mapped`,
the one boundary where OS errors become `WorkspaceError` too; `ValueError` means the
caller passed something invalid.

Not thread-safe: the pipeline runs one transaction at a time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, ParamSpec, TypeVar

from metasup_mcp.safety.journal import atomic_write, fsync_dir
from metasup_mcp.safety.rules import FileChange, is_git_path

__all__ = [
    "IDENTITY",
    "REF_LAST_GOOD",
    "REF_REJECTED",
    "REF_SNAPSHOTS",
    "REF_VERIFIED",
    "CommitInfo",
    "RefInfo",
    "Workspace",
    "WorkspaceError",
]

IDENTITY = ("metasup", "metasup@localhost")
REF_LAST_GOOD = "refs/metasup/last-good"
REF_REJECTED = "refs/metasup/rejected/"
REF_SNAPSHOTS = "refs/metasup/snapshots/"
REF_VERIFIED = "refs/metasup/verified/"
_BUNDLE_GLOB = "metasup-*.bundle"
_ZERO = "0" * 40
# Inherited GIT_* that describe the user's git, not which repository to act on (the
# same allow-list idea as pre-commit's no_git_env).
_KEEP_ENV = {"GIT_EXEC_PATH", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_COUNT"}
# Hooks would run user code inside our transaction (even update-ref runs
# reference-transaction); signing could prompt for a passphrase.
_GIT_OPTS = ("-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false")
_RESTORE_EXCLUDES = ("/.git.broken-*/", "/.git.restoring-*/")
_REF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

P = ParamSpec("P")
R = TypeVar("R")


class WorkspaceError(Exception):
    """A git command or filesystem operation on the workspace failed."""

    def __init__(self, message: str, *, command: Sequence[str] = (), returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr


class RefInfo(NamedTuple):
    name: str
    sha: str
    date: datetime  # committer date, UTC


class CommitInfo(NamedTuple):
    sha: str
    summary: str
    date: datetime  # committer date, UTC


def _mapped(fn: Callable[P, R]) -> Callable[P, R]:
    """The one boundary where OS-level failures become `WorkspaceError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (OSError, UnicodeError, subprocess.SubprocessError) as exc:
            raise WorkspaceError(f"{fn.__name__} failed: {exc}") from exc

    return wrapper


def _env(git_dir: Path | None, work_tree: Path | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GIT_") or k in _KEEP_ENV or k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
    }
    name, email = IDENTITY
    env.update(
        LC_ALL="C",
        LANGUAGE="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_OPTIONAL_LOCKS="0",  # status must not take index.lock under a user's feet
        GIT_AUTHOR_NAME=name,
        GIT_AUTHOR_EMAIL=email,
        GIT_COMMITTER_NAME=name,
        GIT_COMMITTER_EMAIL=email,
    )
    if git_dir is not None:
        env["GIT_DIR"] = str(git_dir)
    if work_tree is not None:
        env["GIT_WORK_TREE"] = str(work_tree)
    env.update(extra or {})
    return env


def _run(args: Sequence[str], *, cwd: Path, env: dict[str, str], input: bytes | None = None, ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess[bytes]:
    cmd = ["git", *_GIT_OPTS, *args]
    stdin = None if input is not None else subprocess.DEVNULL
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, input=input, stdin=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise WorkspaceError(f"cannot run git ({exc.strerror}); is git installed?", command=cmd) from exc
    if proc.returncode not in tuple(ok):
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise WorkspaceError(
            f"git {' '.join(args[:3])} failed (exit {proc.returncode}): {err[-2000:] or '(no output)'}",
            command=cmd,
            returncode=proc.returncode,
            stderr=err,
        )
    return proc


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _natural(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Workspace:
    """Open with `Workspace.open_or_init` or `Workspace.restore_from_bundle`."""

    def __init__(self, root: Path, git_dir: Path) -> None:
        self.root = root
        self.git_dir = git_dir
        self._written: set[str] = set()  # applied since the last commit/reset, see commit_all

    # --- plumbing ----------------------------------------------------------------------

    def _git(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None, ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess[bytes]:
        return _run(args, cwd=self.root, env=_env(self.git_dir, self.root, env), input=input, ok=ok)

    def _out(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
        return self._git(*args, input=input, env=env).stdout.decode("utf-8", "surrogateescape").strip()

    def _resolve(self, rev: str) -> str:
        if not rev or rev.startswith("-"):
            raise ValueError(f"not a commit: {rev!r}")
        proc = self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", ok=(0, 1, 128))
        if proc.returncode != 0:
            raise WorkspaceError(f"{rev!r} is not a commit in {self.root}", returncode=proc.returncode)
        return proc.stdout.decode().strip()

    def _commit_tree(self, tree: str, parents: Sequence[str], message: str) -> str:
        args = ["commit-tree", "--no-gpg-sign", tree]
        for parent in parents:
            args += ["-p", parent]
        return self._out(*args, "-F", "-", input=message.encode("utf-8"))

    @contextlib.contextmanager
    def _temp_index(self, *, copy: bool) -> Iterator[dict[str, str]]:
        """Env for git to use a private index, so the user's staging area is never touched."""
        index = Path(self.root, self._out("rev-parse", "--git-path", "index"))
        tmp = index.with_name(f"metasup-index-{secrets.token_hex(6)}")
        try:
            if copy and index.exists():
                shutil.copyfile(index, tmp)  # keeps the stat cache: add -A stays fast
            yield {"GIT_INDEX_FILE": str(tmp)}
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".lock")):
                leftover.unlink(missing_ok=True)

    def _z(self, *args: str) -> list[str]:
        out = self._git(*args).stdout.decode("utf-8", "surrogateescape")
        return [p for p in out.split("\0") if p]

    # --- opening -----------------------------------------------------------------------

    @classmethod
    @_mapped
    def open_or_init(cls, root: Path, exclude: Sequence[str] = ()) -> Workspace:
        """Open the repository at `root`, or create it (and the folder) with a first commit.

        `exclude` are gitignore patterns (e.g. ``/.metasup/``) written to .git/info/exclude.
        """
        root = Path(root).absolute()
        root.mkdir(parents=True, exist_ok=True)
        # The ceiling stops discovery at root: a workspace inside another repository
        # (.metasup-workspace/ in a project) must get its own repo, not the parent's.
        probe = _run(
            ["rev-parse", "--absolute-git-dir"],
            cwd=root,
            env=_env(None, None, {"GIT_CEILING_DIRECTORIES": str(root.parent)}),
            ok=(0, 128),
        )
        if probe.returncode == 0:
            git_dir = Path(probe.stdout.decode("utf-8", "surrogateescape").strip())
        elif os.path.lexists(root / ".git"):
            raise WorkspaceError(
                f"{root / '.git'} exists but is not a usable repository; restore it with "
                "Workspace.restore_from_bundle or move it aside"
            )
        else:
            _run(["init", "-q", "--initial-branch=main", str(root)], cwd=root, env=_env(None, None))
            git_dir = root / ".git"
        ws = cls(root, git_dir)
        ws._add_excludes(exclude)
        if ws._git("rev-parse", "--verify", "--quiet", "HEAD", ok=(0, 1)).returncode == 1:
            ws._git("add", "-A")  # unborn HEAD: record what is there as the first commit
            tree = ws._out("write-tree")
            sha = ws._commit_tree(tree, [], "metasup: first snapshot of the workspace\n")
            ws._git("update-ref", "-m", "metasup: first snapshot", "HEAD", sha, _ZERO)
        return ws

    def _add_excludes(self, patterns: Iterable[str]) -> None:
        path = Path(self.root, self._out("rev-parse", "--git-path", "info/exclude"))
        existing = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        missing = [p for p in dict.fromkeys(patterns) if p not in existing]
        if missing:
            header = [] if "# added by metasup-mcp" in existing else ["# added by metasup-mcp"]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, ("\n".join([*existing, *header, *missing]) + "\n").encode("utf-8"))

    # --- questions ---------------------------------------------------------------------

    @_mapped
    def head(self) -> str:
        return self._resolve("HEAD")

    @_mapped
    def tracked_files(self, commit: str = "HEAD") -> list[str]:
        """The files of `commit` (workspace-relative), in git's order."""
        return self._z("ls-tree", "-r", "--name-only", "-z", commit)

    @_mapped
    def is_dirty(self) -> bool:
        """Modified, staged, deleted or untracked (not ignored) files."""
        return bool(self._git("status", "--porcelain=v1", "-z", "--untracked-files=normal").stdout)

    @_mapped
    def changed_paths(self, since: str) -> list[str]:
        """Paths that differ between `since` and the working tree, untracked ones included."""
        base = self._resolve(since)
        changed = self._z("diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", base, "--")
        untracked = self._z("ls-files", "-z", "--others", "--exclude-standard")
        return sorted(set(changed) | set(untracked))

    @_mapped
    def initial_commit(self) -> str:
        return self._out("rev-list", "--max-parents=0", "HEAD").splitlines()[-1]

    @_mapped
    def is_ancestor(self, a: str, b: str) -> bool:
        proc = self._git("merge-base", "--is-ancestor", self._resolve(a), self._resolve(b), ok=(0, 1))
        return proc.returncode == 0

    @_mapped
    def commit_info(self, sha: str) -> CommitInfo:
        full, summary, ts = self._out("show", "-s", "--format=%H%x00%s%x00%ct", self._resolve(sha)).split("\0")
        return CommitInfo(full, summary, datetime.fromtimestamp(int(ts), timezone.utc))

    @_mapped
    def is_healthy(self) -> bool:
        """HEAD's commit and tree readable, index readable, every reachable object present."""
        try:
            self._git("rev-parse", "--verify", "--quiet", "HEAD^{tree}")
            self._git("status", "--porcelain", "--untracked-files=no")
            self._git("fsck", "--connectivity-only", "--no-dangling", "--no-progress")
        except WorkspaceError:
            return False
        return True

    # --- changing the tree -------------------------------------------------------------

    @_mapped
    def snapshot(self, reason: str) -> str | None:
        """Record uncommitted state under refs/metasup/snapshots/ without touching the
        working tree, HEAD or the user's index; None when there is nothing to record.

        Like `git stash`: the commit's tree is the working tree (untracked files
        included), its first parent HEAD and, when the index differed from HEAD, a second
        parent whose tree is the index.
        """
        head, head_tree = self._out("rev-parse", "HEAD", "HEAD^{tree}").split()
        with self._temp_index(copy=True) as env:
            index_tree = self._out("write-tree", env=env)
            self._git("add", "-A", env=env)
            work_tree = self._out("write-tree", env=env)
        if index_tree == head_tree == work_tree:
            return None
        parents = [head]
        if index_tree != head_tree:
            parents.append(self._commit_tree(index_tree, [head], f"metasup index at snapshot: {reason}\n"))
        sha = self._commit_tree(work_tree, parents, f"metasup snapshot: {reason}\n\nMetasup-Snapshot-Head: {head}\n")
        return self._create_ref(REF_SNAPSHOTS + _stamp(), sha)

    def _create_ref(self, base: str, sha: str) -> str:
        first = f"{base}-1"  # almost always free: `base` carries the time to the second
        if self._git("update-ref", first, sha, _ZERO, ok=(0, 128)).returncode == 0:
            return first
        taken = {r.name for r in self.list_refs(base)}
        n = 1
        while f"{base}-{n}" in taken:
            n += 1
        ref = f"{base}-{n}"
        self._git("update-ref", ref, sha, _ZERO)  # zero old value: fail rather than overwrite
        return ref

    @_mapped
    def apply(self, changes: Sequence[FileChange]) -> None:
        """Write and delete files, never following a symlink and never entering .git.

        Callers validate first (rules.validate_changes); these checks are the last line.
        Writes are atomic per file and keep the mode of the file they replace.
        """
        for change in changes:
            try:
                with _parent_dir(self.root, change.path, create=not change.delete) as (dir_fd, name):
                    if change.content is None:
                        _delete_at(dir_fd, name)
                    else:
                        self._written.add(change.path)
                        _write_at(dir_fd, name, change.content.encode("utf-8"))
                    os.fsync(dir_fd)
            except OSError as exc:
                raise WorkspaceError(f"cannot apply {change.path}: {exc.strerror or exc}") from exc

    @_mapped
    def commit_all(self, message: str, trailers: Mapping[str, str] | None = None) -> str:
        """Stage everything and commit; refuse with WorkspaceError when nothing changed.

        Files written by `apply` are staged even if a .gitignore (perhaps written by the
        same change) ignores them: whatever a change wrote must be removable by rollback.
        """
        if not message.strip():
            raise ValueError("a commit needs a message")
        for key, value in (trailers or {}).items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", key) or "\n" in value:
                raise ValueError(f"bad trailer {key!r}: {value!r}")
        head = self.head()
        self._git("add", "-A")
        forced = sorted(p for p in self._written if os.path.lexists(self.root / p))
        if forced:
            pathspec = b"\0".join(p.encode("utf-8", "surrogateescape") for p in forced)
            self._git("--literal-pathspecs", "add", "-f", "--pathspec-from-file=-", "--pathspec-file-nul", input=pathspec)
        tree = self._out("write-tree")
        if tree == self._out("rev-parse", "HEAD^{tree}"):
            raise WorkspaceError("nothing to commit: the working tree matches HEAD")
        text = message.strip() + "\n"
        if trailers:
            text += "\n" + "".join(f"{k}: {v}\n" for k, v in trailers.items())
        sha = self._commit_tree(tree, [head], text)
        self._git("update-ref", "-m", f"metasup: {message.strip().splitlines()[0][:72]}", "HEAD", sha, head)
        self._written.clear()
        return sha

    @_mapped
    def reset_to(self, commit: str) -> None:
        """`reset --hard` + `clean -fd`: ignored files stay, except ones `apply` wrote."""
        sha = self._resolve(commit)
        self._git("reset", "-q", "--hard", sha)
        self._git("clean", "-fdq")
        if self._written:  # ignored files an uncommitted change wrote: clean -fd skips them
            self._git("--literal-pathspecs", "clean", "-fdqx", "--", *sorted(self._written))
            self._written.clear()

    @_mapped
    def restore_uncommitted(self, snapshot_ref: str) -> None:
        """Put the work a `snapshot` recorded back on top of HEAD (normally the commit it
        was taken at, after `reset_to`): working tree files, deletions, untracked files
        and, if the snapshot kept one, the staged index. HEAD does not move.
        """
        snap = self._resolve(snapshot_ref)
        entries = self._z("diff-tree", "-r", "-z", "--no-renames", "--name-status", "HEAD", snap)
        pairs = list(zip(entries[::2], entries[1::2]))
        for status, path in pairs:
            if status == "D":
                _unlink_inside(self.root, path)
        wanted = [path for status, path in pairs if status != "D"]
        if wanted:
            with self._temp_index(copy=False) as env:
                self._git("read-tree", snap, env=env)
                paths = b"\0".join(p.encode("utf-8", "surrogateescape") for p in wanted)
                self._git("checkout-index", "-f", "-z", "--stdin", env=env, input=paths)
        parents = self._out("rev-list", "--parents", "-n", "1", snap).split()
        if len(parents) > 2:  # the index as it was, staged changes included
            self._git("read-tree", parents[2])
            self._git("update-index", "-q", "--refresh", ok=(0, 1))

    @_mapped
    def restore_paths(self, commit: str, paths: Sequence[str]) -> None:
        """Make `paths` (working tree and index) match `commit`; a path the commit does
        not have is deleted. Other paths and HEAD are left alone."""
        sha = self._resolve(commit)
        if not paths:
            return
        present = set(self._z("--literal-pathspecs", "ls-tree", "-r", "-z", "--name-only", sha, "--", *paths))
        if present:
            spec = b"\0".join(p.encode("utf-8", "surrogateescape") for p in sorted(present))
            self._git("--literal-pathspecs", "checkout", "-q", sha, "--pathspec-from-file=-", "--pathspec-file-nul", input=spec)
        absent = [p for p in paths if p not in present]
        if absent:
            self._git("--literal-pathspecs", "rm", "-q", "--cached", "--ignore-unmatch", "--", *absent)
            for path in absent:
                _unlink_inside(self.root, path)

    # --- refs --------------------------------------------------------------------------

    @_mapped
    def peek(self) -> tuple[str | None, str | None]:
        """(HEAD, last good) read from the ref files, without running git: cheap enough for a
        status poll on the event loop. None where a ref cannot be read this way (callers that
        must be exact use `head()` and `last_good()`)."""
        packed: dict[str, str] | None = None

        def ref(name: str) -> str | None:
            nonlocal packed
            try:
                return (self.git_dir / name).read_text(encoding="ascii").strip() or None
            except (OSError, UnicodeError):
                pass
            if packed is None:
                packed = {}
                with contextlib.suppress(OSError, UnicodeError):
                    for line in (self.git_dir / "packed-refs").read_text(encoding="ascii").splitlines():
                        sha, _, refname = line.partition(" ")
                        if refname and not line.startswith(("#", "^")):
                            packed[refname] = sha
            return packed.get(name)

        head = ref("HEAD")
        if head is not None and head.startswith("ref: "):
            head = ref(head[5:])
        return head, ref(REF_LAST_GOOD)

    @_mapped
    def last_good(self) -> str | None:
        proc = self._git("rev-parse", "--verify", "--quiet", REF_LAST_GOOD + "^{commit}", ok=(0, 1))
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    @_mapped
    def mark_last_good(self, commit: str) -> None:
        """Move last good, and remember the commit as verified (a rollback target later)."""
        sha = self._resolve(commit)
        self._git("update-ref", REF_LAST_GOOD, sha)
        if sha not in self.verified_commits():
            self._create_ref(REF_VERIFIED + _stamp(), sha)

    @_mapped
    def verified_commits(self) -> list[str]:
        """Commits that were once last good, newest first (bounded by `prune`)."""
        return list(dict.fromkeys(r.sha for r in self.list_refs(REF_VERIFIED)))

    @_mapped
    def resolve(self, rev: str) -> str:
        """The full sha of a commit named by `rev` (a sha, a prefix, a ref)."""
        return self._resolve(rev)

    @_mapped
    def keep_rejected(self, proposal_id: str, commit: str) -> str:
        if not _REF_ID.fullmatch(proposal_id) or ".." in proposal_id or proposal_id.endswith((".", ".lock")):
            raise ValueError(f"proposal id {proposal_id!r} cannot be a ref name")
        ref = REF_REJECTED + proposal_id
        self._git("update-ref", ref, self._resolve(commit))
        return ref

    @_mapped
    def list_refs(self, prefix: str = "refs/metasup/") -> list[RefInfo]:
        """Refs starting with `prefix`, newest committer date first."""
        fmt = "%(refname)%00%(objectname)%00%(committerdate:unix)"
        out = self._out("for-each-ref", f"--format={fmt}", prefix[: prefix.rfind("/") + 1] or "refs/")
        refs = []
        for line in out.splitlines():
            name, sha, ts = line.split("\0")
            if name.startswith(prefix):
                refs.append(RefInfo(name, sha, datetime.fromtimestamp(int(ts or 0), timezone.utc)))
        refs.sort(key=lambda r: (r.date, _natural(r.name)), reverse=True)
        return refs

    @_mapped
    def prune(self, keep: int) -> list[str]:
        """Keep the newest `keep` refs under rejected/, snapshots/ and verified/; return the deleted."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        prefixes = (REF_REJECTED, REF_SNAPSHOTS, REF_VERIFIED)
        doomed = [r.name for prefix in prefixes for r in self.list_refs(prefix)[keep:]]
        if doomed:
            self._git("update-ref", "--stdin", input="".join(f"delete {r}\n" for r in doomed).encode("utf-8"))
        return doomed

    # --- backups -----------------------------------------------------------------------

    @_mapped
    def write_bundle(self, backup_dir: Path, keep: int = 3) -> Path:
        """`git bundle create --all` into backup_dir atomically; keep the newest `keep`."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        backup_dir = Path(backup_dir)
        backup_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        final = backup_dir / f"metasup-{stamp}.bundle"
        tmp = backup_dir / f".{final.name}.tmp"
        try:
            self._git("bundle", "create", "--quiet", str(tmp), "--all")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(backup_dir)
        for old in sorted(backup_dir.glob(_BUNDLE_GLOB), reverse=True)[keep:]:
            old.unlink()
        return final

    @classmethod
    @_mapped
    def restore_from_bundle(cls, root: Path, backup_dir: Path, exclude: Sequence[str] = ()) -> Workspace:
        """Rebuild `root/.git` from the newest usable bundle; the broken one moves to
        `.git.broken-<time>`. The working tree is left as it is (the index is rebuilt
        from HEAD), so user work survives as uncommitted changes: snapshot, then reset.
        """
        root = Path(root).absolute()
        bundles = sorted(Path(backup_dir).glob(_BUNDLE_GLOB), reverse=True)
        if not bundles:
            raise WorkspaceError(f"no {_BUNDLE_GLOB} in {backup_dir} to restore from")
        stamp = _stamp()
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
        ws = cls(root, dot_git)
        patterns = [p for p in old_excludes if p.strip() and not p.startswith("#")]
        ws._add_excludes([*patterns, *exclude, *_RESTORE_EXCLUDES])
        ws._git("reset", "-q")  # index from HEAD; the working tree is untouched
        return ws


def _head_hint(dot_git: Path) -> str | None:
    """The branch the broken repository had checked out, if its HEAD file still says."""
    try:
        text = (dot_git / "HEAD").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError):
        return None
    return text[5:].strip() if text.startswith("ref: refs/heads/") else None


def _build_from_bundle(new_dir: Path, bundle: Path, hint: str | None, cwd: Path) -> None:
    _run(["init", "-q", "--bare", str(new_dir)], cwd=cwd, env=_env(None, None))
    env = _env(new_dir, None)
    heads: dict[str, str] = {}
    for line in _run(["bundle", "list-heads", str(bundle)], cwd=cwd, env=env).stdout.decode().splitlines():
        sha, _, name = line.partition(" ")
        heads[name] = sha
    _run(["fetch", "-q", "--no-write-fetch-head", str(bundle), "+refs/*:refs/*"], cwd=cwd, env=env)
    head = heads.get("HEAD")
    branches = [n for n, s in heads.items() if n.startswith("refs/heads/") and (head is None or s == head)]
    if hint in heads and (head is None or heads[hint] == head):
        _run(["symbolic-ref", "HEAD", hint], cwd=cwd, env=env)
    elif branches:
        _run(["symbolic-ref", "HEAD", sorted(branches)[0]], cwd=cwd, env=env)
    elif head is not None:
        _run(["update-ref", "--no-deref", "HEAD", head], cwd=cwd, env=env)
    else:
        raise WorkspaceError(f"{bundle.name} has neither HEAD nor a branch")
    _run(["config", "core.bare", "false"], cwd=cwd, env=env)
    _run(["config", "core.logAllRefUpdates", "true"], cwd=cwd, env=env)


# --- file operations: relative to directory fds, never following symlinks ---------------


def _safe_parts(path: str) -> list[str]:
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or any(p in ("", ".", "..") or "\0" in p for p in parts) or is_git_path(path):
        raise WorkspaceError(f"refusing to write {path!r}: not a plain path inside the workspace")
    return parts


@contextlib.contextmanager
def _parent_dir(root: Path, rel: str, *, create: bool) -> Iterator[tuple[int, str]]:
    """An fd of rel's folder, reached one component at a time with O_NOFOLLOW (so a
    symlinked folder fails, even one swapped in after validation) and the last name."""
    parts = _safe_parts(rel)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    root_fd = fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, dir_fd=fd)
                os.fsync(fd)
                nxt = os.open(part, flags, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = nxt
        yield fd, parts[-1]
    finally:
        if fd != root_fd:
            os.close(fd)
        os.close(root_fd)


def _unlink_inside(root: Path, rel: str) -> None:
    """Delete a file below root without following symlinks; a missing one is fine."""
    try:
        with _parent_dir(root, rel, create=False) as (dir_fd, name):
            _delete_at(dir_fd, name)
    except FileNotFoundError:
        pass


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise WorkspaceError(f"refusing to write {name!r}: it is {kind}")
    tmp = f".metasup-{secrets.token_hex(6)}.tmp"  # short: `name` may already be NAME_MAX long
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if st is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise


def _delete_at(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        raise WorkspaceError(f"refusing to delete folder {name!r}")
    os.unlink(name, dir_fd=dir_fd)
