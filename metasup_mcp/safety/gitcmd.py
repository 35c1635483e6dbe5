"""The one way the supervisor runs git: obeying only the supervisor.

A workspace's `.git/config` can be written by anything the supervisor governs (a child, a
check, code a proposal brings), and many git keys name a program git will run: hooks,
`core.fsmonitor`, filter drivers (`filter.<x>.clean/smudge/process`), diff and merge drivers,
credential helpers, `core.sshCommand`, editors, pagers, gpg programs. Every call made here

- reads no system or global config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`),
  and inherits no `GIT_*` variable (GitPython cannot drop them, which is why it is not used);
- overrides, with `-c`, every fixed program-running key, and every repo-local key whose
  last name component runs a program (read fresh from the repository's own config, includes
  followed, before each call whose repository config may have changed);
- closes stdin (the supervisor's stdin is the MCP transport), has no terminal prompt, a
  fixed identity, no replace refs, and a time limit.

A failed git command becomes `WorkspaceError`; `mapped` turns OS errors into it too.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

__all__ = ["GIT_TIMEOUT", "IDENTITY", "WorkspaceError", "git_env", "mapped", "neutralizing_options", "run_git"]

IDENTITY = ("metasup", "metasup@localhost")
# A git call that takes longer is killed: a hostile `include.path` naming a FIFO would hang it.
GIT_TIMEOUT = 600.0
# Program-running keys git knows by fixed name, and the harmless value each is pinned to.
_FIXED = {
    "core.hooksPath": "/dev/null",
    "core.fsmonitor": "false",
    "core.sshCommand": "",
    "core.askPass": "",
    "core.editor": "",
    "sequence.editor": "",
    "core.pager": "cat",
    "core.alternateRefsCommand": "",
    "core.gitProxy": "",
    "core.useReplaceRefs": "false",
    "credential.helper": "",  # an empty value resets the helper list
    "diff.external": "",
    "gpg.program": "",
    "gpg.openpgp.program": "",
    "gpg.x509.program": "",
    "gpg.ssh.program": "",
    "gpg.ssh.defaultKeyCommand": "",
    "commit.gpgSign": "false",
    "tag.gpgSign": "false",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "uploadpack.packObjectsHook": "",
    "protocol.ext.allow": "never",
    "submodule.recurse": "false",
    "fetch.recurseSubmodules": "false",
}
# Last components of `<section>.<name>.<key>` keys that name a program (filter, diff, merge,
# credential, difftool/mergetool drivers), and sections whose every key does (pager.<cmd>).
_PROGRAM_KEYS = {
    "clean", "smudge", "process", "command", "textconv", "driver", "helper", "program", "cmd",
    "path", "sshcommand", "askpass", "editor", "hookspath", "fsmonitor", "defaultkeycommand",
}
_PROGRAM_SECTIONS = {"pager"}
_TOOL_SECTIONS = {"difftool", "mergetool", "filter", "diff", "merge", "credential", "gpg", "man", "browser"}
# Inherited variables git would use to find a program or a config of its own.
_DROP_ENV = {"EDITOR", "VISUAL", "PAGER", "SSH_ASKPASS", "LESS", "LV"}

P = ParamSpec("P")
R = TypeVar("R")


class WorkspaceError(Exception):
    """A git command or filesystem operation on the workspace failed."""

    def __init__(self, message: str, *, command: Sequence[str] = (), returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr


def mapped(fn: Callable[P, R]) -> Callable[P, R]:
    """The one boundary where OS-level failures become `WorkspaceError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (OSError, UnicodeError, subprocess.SubprocessError) as exc:
            raise WorkspaceError(f"{fn.__name__} failed: {exc}") from exc

    return wrapper


def git_env(git_dir: Path | None, work_tree: Path | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k not in _DROP_ENV}
    name, email = IDENTITY
    env.update(
        LC_ALL="C",
        LANGUAGE="C",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_SYSTEM="/dev/null",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_ATTR_NOSYSTEM="1",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_GRAFT_FILE="/dev/null",
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
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


def _is_program_key(key: str) -> bool:
    section, _, rest = key.lower().partition(".")
    last = rest.rpartition(".")[2]
    if section in _PROGRAM_SECTIONS:
        return True
    if last == "path":  # tools' program paths only: include.path cannot be overridden anyway
        return section in ("difftool", "mergetool", "man")
    return last in _PROGRAM_KEYS and section in (*_TOOL_SECTIONS, "core", "sequence")


# Repository config fingerprint → the `-c` overrides it needs (skipped when it has includes).
_cache: dict[tuple[object, ...], tuple[str, ...]] = {}


def _fingerprint(git_dir: Path) -> tuple[object, ...]:
    parts: list[object] = [str(git_dir)]
    for name in ("config", "config.worktree"):
        try:
            st = os.stat(git_dir / name)
            parts += [st.st_ino, st.st_size, st.st_mtime_ns]
        except OSError:
            parts.append(None)
    return tuple(parts)


@functools.lru_cache(maxsize=1)
def user_excludes_file() -> str | None:
    """`core.excludesFile` from the user's global git config (that one key, includes not
    followed; a regular file only, so a fifo cannot hang git): files the user's own git
    ignores stay ignored here, though no other global setting is read."""
    home = Path(os.environ.get("HOME") or "~").expanduser()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    found = None
    for config in (xdg / "git" / "config", home / ".gitconfig"):  # git's order: the later wins
        if not config.is_file():
            continue
        try:
            proc = subprocess.run(
                ["git", "config", "--file", str(config), "--no-includes", "--type=path", "--get", "core.excludesFile"],
                env=git_env(None, None), stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        value = proc.stdout.decode("utf-8", "surrogateescape").strip()
        if proc.returncode == 0 and value:
            found = value
    return found if found and Path(found).is_file() else None


def neutralizing_options(git_dir: Path | None, cwd: Path) -> tuple[str, ...]:
    """`-c key=value` pairs that pin every program-running key the repository config sets."""
    fixed = [arg for key, value in _FIXED.items() for arg in ("-c", f"{key}={value}")]
    if git_dir is None or not git_dir.exists():
        return tuple(fixed)
    print_ = _fingerprint(git_dir)
    if print_ in _cache:
        return (*fixed, *_cache[print_])
    env = git_env(git_dir, None)
    try:
        proc = subprocess.run(
            ["git", "config", "--list", "--includes", "-z"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, check=False, timeout=GIT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkspaceError(f"cannot read the git config of {git_dir}: {exc}") from exc
    keys = [entry.split("\n", 1)[0] for entry in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if entry]
    dynamic: list[str] = []
    for key in dict.fromkeys(keys):
        if _is_program_key(key) and key not in _FIXED:
            dynamic += ["-c", f"{key}=" if not key.lower().startswith("pager.") else f"{key}=false"]
        if key.lower().startswith("filter.") and key.lower().endswith((".clean", ".smudge", ".process")):
            dynamic += ["-c", f"{key.rsplit('.', 1)[0]}.required=false"]
    excludes = user_excludes_file()
    if excludes is not None and "core.excludesfile" not in {k.lower() for k in keys}:
        dynamic += ["-c", f"core.excludesFile={excludes}"]  # what the user's own git ignores
    if not any(k.lower().startswith(("include.", "includeif.")) for k in keys):
        _cache.clear() if len(_cache) > 64 else None
        _cache[print_] = tuple(dynamic)
    return (*fixed, *dynamic)


def run_git(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    git_dir: Path | None = None,
    input: bytes | None = None,
    ok: Iterable[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run `git <args>` hardened as the module says; raise `WorkspaceError` on an exit not in `ok`."""
    cmd = ["git", *neutralizing_options(git_dir, cwd), *args]
    try:
        proc = _run_with_time_limit(cmd, cwd, env, input)
    except subprocess.TimeoutExpired as exc:
        raise WorkspaceError(f"git {' '.join(args[:3])} did not finish within {GIT_TIMEOUT:g}s", command=cmd) from exc
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


def _run_with_time_limit(
    cmd: list[str], cwd: Path, env: dict[str, str], input: bytes | None
) -> subprocess.CompletedProcess[bytes]:
    """`subprocess.run(cmd, timeout=GIT_TIMEOUT)`, with the limit kept by a timer that kills the
    process: given a timeout, Python reaps a finished process by polling with sleeps of 0.5, 1,
    2… ms, which every git call would pay (a rollback makes several)."""
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.kill()

        watchdog = threading.Timer(GIT_TIMEOUT, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            out, err = proc.communicate(input)
        except BaseException:
            proc.kill()
            raise  # Popen's exit waits for it
        finally:
            watchdog.cancel()
    if expired.is_set():
        raise subprocess.TimeoutExpired(cmd, GIT_TIMEOUT, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
