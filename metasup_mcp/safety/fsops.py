"""File operations inside the workspace: relative to directory fds, never following a symlink,
never entering `.git`. The last line of defence under `rules.validate_changes`."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from metasup_mcp.safety.gitcmd import WorkspaceError
from metasup_mcp.safety.rules import is_git_path

__all__ = ["delete_at", "drop_bytecode", "is_folder_inside", "parent_dir", "remove_empty_folders", "unlink_inside", "write_at"]

def safe_parts(path: str) -> list[str]:
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or any(p in ("", ".", "..") or "\0" in p for p in parts) or is_git_path(path):
        raise WorkspaceError(f"refusing to write {path!r}: not a plain path inside the workspace")
    return parts


@contextlib.contextmanager
def parent_dir(root: Path, rel: str, *, create: bool) -> Iterator[tuple[int, str]]:
    """An fd of rel's folder, reached one component at a time with O_NOFOLLOW (so a
    symlinked folder fails, even one swapped in after validation) and the last name."""
    parts = safe_parts(rel)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    root_fd = fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # another writer of this batch made it
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


def unlink_inside(root: Path, rel: str) -> None:
    """Delete a file below root without following symlinks; a missing one is fine."""
    try:
        with parent_dir(root, rel, create=False) as (dir_fd, name):
            delete_at(dir_fd, name)
    except FileNotFoundError:
        pass


def is_folder_inside(root: Path, rel: str) -> bool:
    """Whether a real folder stands at `rel`, its leading folders reached as `parent_dir` does
    (a symlink anywhere on the way: False, never followed)."""
    try:
        with parent_dir(root, rel, create=False) as (dir_fd, name):
            return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except (OSError, WorkspaceError):
        return False


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
MAX_FOLDER_DEPTH = 256  # folders below one put-back path: deeper ones are left (and stop it), no fd or stack runs out


def remove_empty_folders(root: Path, rel: str) -> bool:
    """Remove the folder at `rel` and every folder below it that holds nothing else, bottom up,
    through directory fds: a symlink is never entered, and a folder swapped for one meanwhile
    is left (rmdir never follows a link). Return whether no folder is left at `rel` (a file or
    symlink there is the caller's to replace).

    Raise WorkspaceError when a symlink or file stands where a leading folder of `rel` goes:
    the caller cleared it already, so something put it back during the put-back.
    """
    try:
        with parent_dir(root, rel, create=False) as (dir_fd, name):
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return True  # nothing there, or a file or symlink: no folder to empty
                raise
            try:
                _remove_empty_below(fd, MAX_FOLDER_DEPTH)
            finally:
                os.close(fd)
            with contextlib.suppress(OSError):  # not empty: the caller refuses
                os.rmdir(name, dir_fd=dir_fd)
            try:
                return not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise WorkspaceError(
                f"refusing to clear {rel!r}: a symlink or file stands where one of its folders goes "
                "(put back after it was removed); nothing was followed, retry once the child is stopped"
            ) from exc
        raise


def _remove_empty_below(fd: int, depth: int) -> None:
    if depth <= 0:
        return
    with os.scandir(fd) as entries:
        folders = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    for name in folders:
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError:
            continue  # gone, or swapped for a symlink or file: left as it is
        try:
            _remove_empty_below(sub, depth - 1)
        finally:
            os.close(sub)
        with contextlib.suppress(OSError):  # still holds something
            os.rmdir(name, dir_fd=fd)


def write_at(dir_fd: int, name: str, data: bytes, executable: bool | None = None, *, replace_other: bool = False) -> None:
    """Write `name` atomically with the mode of the file it replaces; `executable` (git's one
    mode bit) sets or clears the execute bits where the read bits are.

    A symlink, fifo, socket or device at `name` is refused, or with `replace_other` replaced
    itself (the rename swaps the entry, never following it; a put-back has saved it first).
    A folder is always refused: its caller empties it first.
    """
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        if not replace_other or stat.S_ISDIR(st.st_mode):
            raise WorkspaceError(f"refusing to write {name!r}: it is {kind}")
        st = None  # its mode says nothing about the file going back
    tmp = f".metasup-{secrets.token_hex(6)}.tmp"  # short: `name` may already be NAME_MAX long
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            mode = stat.S_IMODE(st.st_mode if st is not None else os.fstat(fd).st_mode)
            if executable is not None:
                mode = (mode | (mode & 0o444) >> 2) if executable else mode & ~0o111
            if st is not None or executable is not None:
                os.fchmod(fd, mode)
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


def delete_at(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        raise WorkspaceError(f"refusing to delete folder {name!r}")
    os.unlink(name, dir_fd=dir_fd)


def drop_bytecode(root: Path, paths: list[str]) -> None:
    """Remove `__pycache__/<stem>.*.pyc` of each changed `.py` path.

    A pyc is trusted when the source's mtime (whole seconds) and size match it, so a source put
    back within the same second at the same size would otherwise run the bytecode of the code
    it replaced (a failed trial's code surviving its rollback).
    """
    for rel in paths:
        folder, _, name = rel.rpartition("/")
        if not name.endswith(".py"):
            continue
        cache = f"{folder}/__pycache__/x" if folder else "__pycache__/x"
        try:
            with parent_dir(root, cache, create=False) as (dir_fd, _):
                for entry in os.listdir(dir_fd):
                    if entry.startswith(name[:-3] + ".") and entry.endswith(".pyc"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry, dir_fd=dir_fd)
        except (OSError, WorkspaceError):
            continue  # no cache folder (or not a plain one): nothing stale to drop
