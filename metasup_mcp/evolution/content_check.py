"""Tracked files compared with a commit by their content, not by git's index stat cache.

Git trusts an index entry whose size, inode, mtime and ctime *seconds* match the file (ctime
nanoseconds only with a build option most distributions leave off). A process can set mtime
back, and a write in the same second as the entry was recorded keeps the ctime second: an edit
of the same size made then is invisible to `git status` and `git diff` until the entry is
refreshed. So before a child starts, its watched tracked files are compared with the commit
here: hashed as git hashes a blob, again only when their stat data (nanoseconds) moved since a
hash that matched, and never trusted by stat when they changed within `RACY_NS` of being read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable

from metasup_mcp.safety.integrity import RACY_NS
from metasup_mcp.safety.workspace import Workspace

__all__ = ["ContentCheck"]

_REGULAR = ("100644", "100755")


class ContentCheck:
    """`differing(commit, wanted)`: tracked paths of `commit` whose file on disk is not its blob."""

    def __init__(self, workspace: Workspace) -> None:
        self._ws = workspace
        self._trees: dict[str, dict[str, tuple[str, str]]] = {}  # commit → path → (mode, object id)
        self._matched: dict[str, tuple[tuple[int, ...], str]] = {}  # path → (stat key, object id it matched)

    def differing(self, commit: str, wanted: Callable[[str], bool]) -> list[str]:
        """Paths `commit` tracks, `wanted`, whose file on disk differs from it (missing, another
        kind, other content). Git runs once per new `commit` (`ls-tree`), and once more only when
        some file's bytes are not its blob (`hash-object`, for eol conversions); else stat and hash."""
        tree = self._trees.get(commit)
        if tree is None:
            if len(self._trees) >= 4:
                self._trees.clear()
            tree = self._trees[commit] = self._ws.tree_entries(commit)
        unsure: dict[str, tuple[tuple[int, ...], int]] = {}  # regular files whose bytes are not the blob
        differ: list[str] = []
        for path, (mode, oid) in tree.items():
            if wanted(path) and not self._matches(path, mode, oid, unsure):
                differ.append(path)
        differ += [p for p in unsure if "\n" in p]  # not expressible to `hash-object --stdin-paths`: differs
        if paths := [p for p in unsure if "\n" not in p]:  # eol or attribute conversions: git hashes as it would commit
            for path, oid in zip(paths, self._ws.hash_files(paths), strict=True):
                if oid != tree[path][1]:
                    differ.append(path)
                else:
                    self._remember(path, oid, *unsure[path])
        return sorted(differ)

    def _matches(self, path: str, mode: str, oid: str, unsure: dict[str, tuple[tuple[int, ...], int]]) -> bool:
        full = os.path.join(self._ws.root, path)
        try:
            st = os.lstat(full)
        except OSError:
            return False
        if mode == "160000":
            return True  # a submodule: `git status` (the glance) reports its commit moving
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
        if self._matched.get(path) == (key, oid):
            return True
        read_at = time.time_ns()
        algorithm = "sha256" if len(oid) == 64 else "sha1"
        try:
            if mode == "120000" and stat.S_ISLNK(st.st_mode):
                target = os.fsencode(os.readlink(full))
                found = hashlib.new(algorithm, b"blob %d\0" % len(target) + target).hexdigest()
            elif mode in _REGULAR and stat.S_ISREG(st.st_mode):
                found = _blob_id(full, algorithm)
            else:
                return False
        except OSError:
            return False
        if found != oid:
            self._matched.pop(path, None)
            if mode in _REGULAR:
                unsure[path] = (key, read_at)
                return True  # for now: `differing` asks git
            return False
        self._remember(path, oid, key, read_at)
        return True

    def _remember(self, path: str, oid: str, key: tuple[int, ...], read_at: int) -> None:
        mtime_ns, ctime_ns = key[4], key[5]
        if max(mtime_ns, ctime_ns) < read_at - RACY_NS:
            self._matched[path] = (key, oid)  # any later write moves ctime past what was read
        else:
            self._matched.pop(path, None)  # racily clean: read again next time


def _blob_id(full: str, algorithm: str) -> str:
    """The object id git gives the bytes of the regular file `full`, read in chunks."""
    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a fifo swapped in cannot hang it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{full} is no longer a regular file")
        digest, left = hashlib.new(algorithm, b"blob %d\0" % st.st_size), st.st_size
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
            left -= len(chunk)
        return digest.hexdigest() if left == 0 else ""  # it changed size while read: not the blob
    finally:
        os.close(fd)
