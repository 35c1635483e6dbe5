"""Git's view of a file on disk, computed in-process: its mode and blob id, as `git hash-object
--no-filters` would give them.

A rollback compares a few touched paths with what git holds for them. Asking git to do it
(`ls-files --modified`, `reset -- <paths>`) costs a process that reads, and pathspec-matches,
the whole index of a large repository; hashing a few files here costs next to nothing. The
bytes are taken raw (no eol conversion or filter), so a file git would convert reads as
different: the caller then does the careful thing (saves it), never the careless one.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Literal

from metasup_mcp.safety.fsops import parent_dir
from metasup_mcp.safety.gitcmd import WorkspaceError

__all__ = ["OTHER", "DiskEntry", "blob_id", "disk_entry"]

OTHER: Literal["other"] = "other"  # a folder, a fifo, a socket, or a path through a symlink
DiskEntry = tuple[str, str] | None | Literal["other"]  # (mode, blob id), absent, or OTHER
_CHUNK = 1 << 20


def blob_id(data: bytes, hex_length: int = 40) -> str:
    """The id git gives a blob of `data`: SHA-1, or SHA-256 in a repository whose ids are 64 hex long."""
    digest = hashlib.sha256() if hex_length == 64 else hashlib.sha1()  # git's object id, not a secret
    digest.update(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def disk_entry(root: Path, rel: str, hex_length: int = 40) -> DiskEntry:
    """`(mode, blob id)` of the regular file or symlink at `rel` (never following a symlink on
    the way, never blocking on a fifo); None if nothing is there; OTHER for anything git would
    not store as a blob there."""
    try:
        with parent_dir(root, rel, create=False) as (dir_fd, name):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                return "120000", blob_id(os.fsencode(os.readlink(name, dir_fd=dir_fd)), hex_length)
            if not stat.S_ISREG(st.st_mode):
                return OTHER
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as f:
                done = os.fstat(fd)
                if not stat.S_ISREG(done.st_mode) or done.st_ino != st.st_ino:
                    return OTHER  # swapped between the stat and the open
                digest = hashlib.sha256() if hex_length == 64 else hashlib.sha1()
                digest.update(b"blob %d\0" % done.st_size)
                read = 0
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    read += len(chunk)
                if read != done.st_size:
                    return OTHER  # written while read: whatever it is, it is not what git holds
    except FileNotFoundError:
        return None
    except (OSError, WorkspaceError):
        return OTHER  # a file where a folder should be, a symlinked folder, unreadable
    mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
    return mode, digest.hexdigest()
