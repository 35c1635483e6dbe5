"""Plumbing shared by every workspace operation, and the supervisor's refs under refs/metasup/.

- `last-good`: the commit that last passed verification; `verified/<time>-<n>`: every commit
  that once was (pruned by `keep_commits`, never one in the last-good history). Without a
  kernel sandbox a child can move a ref, so last good is read as the supervisor last set it
  (or found it at start), never as the ref says: a ref moved by anyone else is reported
  (`on_foreign_last_good`, a `tamper`) and put back;
- `rejected/<id>`: changes that failed (pruned by `keep_commits`);
- `saved/<time>-<n>`: user work saved before the supervisor overwrote it (never pruned).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from metasup_mcp.safety.gitcmd import WorkspaceError, git_env, mapped, run_git
from metasup_mcp.safety.ownership import Ownership

__all__ = ["REF_LAST_GOOD", "REF_REJECTED", "REF_SAVED", "REF_SNAPSHOTS", "REF_VERIFIED", "ZERO", "GitRepo", "RefInfo", "stamp"]

REF_LAST_GOOD = "refs/metasup/last-good"
REF_REJECTED = "refs/metasup/rejected/"
REF_SAVED = "refs/metasup/saved/"  # user work: never pruned
REF_SNAPSHOTS = REF_SAVED  # the old name
REF_VERIFIED = "refs/metasup/verified/"
ZERO = "0" * 40
_REF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_PRUNED = (REF_REJECTED, REF_VERIFIED)


class RefInfo(NamedTuple):
    name: str
    sha: str
    date: datetime  # committer date, UTC


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _natural(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class GitRepo:
    """A repository at `root` whose git dir is `git_dir`, reached only through `run_git`."""

    def __init__(self, root: Path, git_dir: Path, ownership: Ownership | None = None) -> None:
        self.root = root
        self.git_dir = git_dir
        self.ownership = ownership or Ownership(root)
        # Run before every git call: without a kernel sandbox, the integrity check of what the
        # supervisor trusts (docs/isolation.md); it records findings, it never blocks git.
        self.before_git: Callable[[], object] | None = None
        self._last_good_set: str | None = None  # last good as this supervisor set it (or first found it)
        self._last_good_lock = threading.Lock()  # held while the ref is read against, or moved with, it
        # Told (found, set) when the last-good ref holds another commit than the one set: not ours.
        self.on_foreign_last_good: Callable[[str | None, str], object] | None = None

    # --- plumbing ----------------------------------------------------------------------

    def _git(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None, ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess[bytes]:
        if self.before_git is not None:
            self.before_git()
        return run_git(args, cwd=self.root, env=git_env(self.git_dir, self.root, env), git_dir=self.git_dir, input=input, ok=ok)

    def _out(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
        return self._git(*args, input=input, env=env).stdout.decode("utf-8", "surrogateescape").strip()

    def _z(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None) -> list[str]:
        out = self._git(*args, input=input, env=env).stdout.decode("utf-8", "surrogateescape")
        return [p for p in out.split("\0") if p]

    def _resolve(self, rev: str) -> str:
        if not rev or rev.startswith("-"):
            raise ValueError(f"not a commit: {rev!r}")
        proc = self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", ok=(0, 1, 128))
        if proc.returncode != 0:
            raise WorkspaceError(f"{rev!r} is not a commit in {self.root}", returncode=proc.returncode)
        return proc.stdout.decode().strip()

    def _peeled(self, rev: str) -> str:
        """`rev` as update-ref's new value: peeled to a commit by git itself (a tree, a blob or an
        unknown name fails the update), which spares a `rev-parse` process."""
        if not rev or rev.startswith("-"):
            raise ValueError(f"not a commit: {rev!r}")
        return f"{rev}^{{commit}}"

    def _commit_tree(self, tree: str, parents: Sequence[str], message: str) -> str:
        args = ["commit-tree", "--no-gpg-sign", tree]
        for parent in parents:
            args += ["-p", parent]
        return self._out(*args, "-F", "-", input=message.encode("utf-8", "surrogateescape"))  # names as on disk

    # --- refs --------------------------------------------------------------------------

    def _create_ref(self, base: str, sha: str) -> str:
        first = f"{base}-1"  # almost always free: `base` carries the time to the second
        if self._git("update-ref", first, sha, ZERO, ok=(0, 128)).returncode == 0:
            return first
        taken = {r.name for r in self.list_refs(base)}
        n = 1
        while f"{base}-{n}" in taken:
            n += 1
        ref = f"{base}-{n}"
        self._git("update-ref", ref, sha, ZERO)  # zero old value: fail rather than overwrite
        return ref

    @mapped
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
        if not self._last_good_lock.acquire(blocking=False):
            return head, self._last_good_set  # the supervisor is moving it right now
        try:
            found = ref(REF_LAST_GOOD)
            ours, foreign = self._as_set(found) if found is not None else (self._last_good_set, False)
        finally:
            self._last_good_lock.release()
        if foreign:  # unreadable here: `last_good()` tells
            self._tell_foreign(found, ours)
        return head, ours

    @mapped
    def last_good(self) -> str | None:
        """Last good as the supervisor set it; a ref someone else moved is reported and put back."""
        with self._last_good_lock:
            proc = self._git("rev-parse", "--verify", "--quiet", REF_LAST_GOOD + "^{commit}", ok=(0, 1))
            found = proc.stdout.decode().strip() if proc.returncode == 0 else None
            ours, foreign = self._as_set(found)
            # A symbolic last-good (`ref: refs/heads/main`) resolves to ours while that branch is
            # there, and an update through it would move the user's branch: foreign either way.
            if (target := self._symbolic_target(REF_LAST_GOOD)) is not None:
                found, foreign = f"ref: {target}", True
            if foreign and ours is not None:
                self._git("update-ref", "--no-deref", REF_LAST_GOOD, ours)
        if foreign:
            self._tell_foreign(found, ours)
        return ours

    def _symbolic_target(self, name: str) -> str | None:
        """The ref a loose symbolic ref `name` points at, read from its file (git packs no
        symbolic refs); None for a plain ref."""
        try:
            text = (self.git_dir / name).read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        return text[4:].strip() if text.startswith("ref:") else None

    def _as_set(self, found: str | None) -> tuple[str | None, bool]:
        """(the last good this supervisor set, whether the ref's value `found` differs from it).
        Before it set or read one, `found` is taken as set (at start, as the integrity guard
        seals what it finds)."""
        if self._last_good_set is None:
            self._last_good_set = found
        return self._last_good_set, found != self._last_good_set

    def _tell_foreign(self, found: str | None, ours: str | None) -> None:
        if self.on_foreign_last_good is not None and ours is not None:
            self.on_foreign_last_good(found, ours)

    @mapped
    def mark_last_good(self, commit: str) -> None:
        """Move last good, and remember the commit as verified (a rollback target later)."""
        sha = self._resolve(commit)
        with self._last_good_lock:
            self._git("update-ref", "--no-deref", REF_LAST_GOOD, sha)  # never through a symbolic ref
            self._last_good_set = sha
        if sha not in self.verified_commits():
            self._create_ref(REF_VERIFIED + stamp(), sha)

    @mapped
    def verified_commits(self) -> list[str]:
        """Commits that were once last good, newest first (bounded by `prune`)."""
        return list(dict.fromkeys(r.sha for r in self.list_refs(REF_VERIFIED)))

    @mapped
    def resolve(self, rev: str) -> str:
        """The full sha of a commit named by `rev` (a sha, a prefix, a ref)."""
        return self._resolve(rev)

    @mapped
    def keep_rejected(self, proposal_id: str, commit: str) -> str:
        if not _REF_ID.fullmatch(proposal_id) or ".." in proposal_id or proposal_id.endswith((".", ".lock")):
            raise ValueError(f"proposal id {proposal_id!r} cannot be a ref name")
        ref = REF_REJECTED + proposal_id
        self._git("update-ref", ref, self._peeled(commit))
        return ref

    @mapped
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

    @mapped
    def prune(self, keep: int, protect: Iterable[str] = ()) -> list[str]:
        """Keep the newest `keep` refs under rejected/ and verified/ (and any pointing at a
        commit in `protect`); return the deleted. Saved user work is never pruned."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        kept = set(protect)
        doomed = [r.name for prefix in _PRUNED for r in self.list_refs(prefix)[keep:] if r.sha not in kept]
        if doomed:
            self._git("update-ref", "--stdin", input="".join(f"delete {r}\n" for r in doomed).encode("utf-8"))
        return doomed

