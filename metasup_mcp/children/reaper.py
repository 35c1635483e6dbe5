"""Run a command so that every process it ever starts ends with it, without a PID namespace.

Usage: python -I -S reaper.py -- ARGV...   (stdlib only: it runs isolated, outside the package)

The reaper makes itself a child subreaper (PR_SET_CHILD_SUBREAPER, Linux 3.4): a descendant
whose parent exits, one that called `setsid` or double-forked included, is re-parented to the
reaper instead of to init, so the reaper's descendants are exactly the command's tree. It ends
them all (SIGKILL) when:
- the command's main process exits (its exit status is then passed on as the reaper's own);
- it receives SIGUSR1 (the supervisor's "kill the whole tree now");
- the supervisor dies, however it dies (PR_SET_PDEATHSIG delivers SIGHUP).
SIGTERM and SIGINT reach the command through its process group; the reaper ignores them.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _descendants() -> set[int]:
    """Every process below this one (all of them are re-parented here, never elsewhere)."""
    me = os.getpid()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields resume after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    below, frontier = set(), {me}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in below}
        below |= frontier
    return below


def _end_tree() -> None:
    """SIGKILL every descendant and reap them, until none is left (a forking tree converges:
    a killed process forks no more)."""
    while True:
        living = _descendants()
        for pid in living:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap_all(block=bool(living))
        if not living:
            return


def _reap_all(block: bool) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        block = False


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):  # die of the same signal, so the supervisor reads the same story
        sig = signal.Signals(os.WTERMSIG(status))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("reaper: no command given\n")
        os._exit(2)
    parent = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
    if os.getppid() != parent:  # the supervisor died before the death signal was armed
        os._exit(1)
    signal.signal(signal.SIGHUP, lambda *_: (_end_tree(), os._exit(129)))
    signal.signal(signal.SIGUSR1, lambda *_: (_end_tree(), os._exit(137)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        # SIGPIPE and SIGXFSZ too: Python ignores them, and an ignored signal survives exec.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            sys.stderr.write(f"cannot run {argv[0]!r}: {exc.strerror or exc}\n")
            os._exit(127)
    # The pipes belong to the command: holding them would keep the supervisor from seeing EOF.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if done == pid:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR1})
            _end_tree()
            os.dup2(null, 2)
            _exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
