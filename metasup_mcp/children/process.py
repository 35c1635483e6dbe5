"""One child process: spawn in its own process group, frame MCP on its pipes, drain stderr.

It starts inside its sandbox (`sandbox.py`: bubblewrap, or the reaper where bwrap cannot run),
so that whatever it starts, helpers that leave its process group included, ends with it.

The child speaks newline-delimited JSON-RPC on stdout; anything else there is recorded and
dropped, never handed to the session (a child that prints garbage stays usable). stderr is
drained continuously so that a chatty child can never block on a full pipe.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import mcp_types as types
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from metasup_mcp.aio import BorrowedStream, LineSplitter
from metasup_mcp.children.sandbox import SandboxPlan, wrap_argv
from metasup_mcp.redact import redact

logger = logging.getLogger(__name__)

STDERR_RING_LINES = 500
# Longest line kept from a child: a message over this is dropped (and counted), a log line cut.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_STDERR_LINE_BYTES = 16 * 1024
# Time a child gets to exit by itself once its stdin is closed, before SIGTERM.
STDIN_CLOSE_GRACE = 1.0
# How often exit is noticed; bounds how late an in-flight call learns of a death.
EXIT_POLL_INTERVAL = 0.05
# How often the exit code is looked for once the process is known to have died.
EXIT_REAP_POLL = 0.001
# Variables passed through from the supervisor's environment; everything else must be declared.
BASE_ENV_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM")
# Marks every process of every child; the next start kills survivors that carry a dead supervisor's mark.
INSTANCE_ENV_VAR = "METASUP_INSTANCE"


@dataclass(frozen=True)
class SpawnSpec:
    name: str
    argv: list[str]
    cwd: Path
    env: Mapping[str, str]
    stop_timeout: float = 5.0
    # None: started bare (tests of the process layer only); children and checks always get one.
    sandbox: SandboxPlan | None = None

    def command(self) -> list[str]:
        """The command line actually run: `argv` inside the sandbox or under the reaper.

        Raises FileNotFoundError / PermissionError as a bare spawn would, before the wrapper
        starts, so that a missing program reads as one and not as the wrapper's exit code.
        """
        if self.sandbox is None:
            return self.argv
        program = self.argv[0]
        if "/" in program:
            found: str | None = str(self.cwd / program)
        else:
            found = shutil.which(program, path=self.env.get("PATH", os.defpath))
        if found is None or not Path(found).is_file():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
        if not os.access(found, os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", program)
        return wrap_argv(self.sandbox, self.argv, self.cwd)


def child_environment(declared: Mapping[str, str], instance_id: str) -> dict[str, str]:
    """A minimal base environment plus what the config declares: no secret leaks by default."""
    env = {key: os.environ[key] for key in BASE_ENV_VARS if key in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(declared)
    env[INSTANCE_ENV_VAR] = instance_id
    return env


@dataclass
class StderrRing:
    """The last lines a child wrote to stderr, kept across restarts, each with its incarnation."""

    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=STDERR_RING_LINES))
    generations: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=STDERR_RING_LINES))

    def add(self, line: str, generation: int = 0) -> None:
        self.lines.append(line)
        self.generations.append(generation)

    def tail(self, count: int, since_generation: int | None = None) -> list[str]:
        """The last `count` lines; with `since_generation`, only those of later incarnations."""
        if count <= 0:
            return []
        if since_generation is None:
            return list(self.lines)[-count:]
        own = [line for line, gen in zip(self.lines, self.generations, strict=True) if gen > since_generation]
        return own[-count:]


class ChildProcess:
    """A running child process: its pid, exit, stderr and what it wrote on stdout that was not MCP."""

    def __init__(self, spec: SpawnSpec, process: Process) -> None:
        self.spec = spec
        self.pid = process.pid
        self._process = process
        self.exited = anyio.Event()
        self.garbage_lines = 0
        self.last_garbage: str | None = None
        self._pings: dict[str, anyio.Event] = {}  # request id -> set when answered

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def ping(self, timeout: float) -> float | None:
        """An MCP `ping` written and matched here, not through the session: milliseconds until
        any answer (an error, "method not found" included, proves the child reads), or None.

        The session's ping costs pydantic on both ways and a task; probing 50 children each
        second through it was most of what an idle supervisor did.
        """
        request_id = f"{PING_ID_PREFIX}{next(_ping_ids)}"
        answered = self._pings[request_id] = anyio.Event()
        started = anyio.current_time()
        try:
            with anyio.move_on_after(timeout):  # a child that reads nothing may also block the write
                await self.send_line(b'{"jsonrpc":"2.0","id":"%s","method":"ping"}\n' % request_id.encode())
                await answered.wait()
                return round((anyio.current_time() - started) * 1000, 2)
            return None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return None
        finally:
            self._pings.pop(request_id, None)

    def _answer_ping(self, line: bytes) -> bool:
        """Whether `line` answers one of our pings (then taken away from the session)."""
        try:
            request_id = json.loads(line).get("id")
        except (ValueError, AttributeError):
            return False
        answered = self._pings.get(request_id) if isinstance(request_id, str) else None
        if answered is None:
            return isinstance(request_id, str) and request_id.startswith(PING_ID_PREFIX)  # late: dropped
        answered.set()
        return True

    async def send_line(self, data: bytes) -> None:
        """Write one message line to the child's stdin, whole (the gateway's raw relay)."""
        assert self._process.stdin is not None
        await send_whole(self._process.stdin, data)

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the child's whole process group; a group already gone is fine."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill_tree(self) -> None:
        """SIGKILL every process the child ever started, helpers that left its group included.

        In bwrap the group's SIGKILL reaches the namespace's init, and the kernel ends the rest
        of the PID namespace. Under the reaper, SIGUSR1 asks it to end its subtree first (a
        SIGKILL would kill the reaper before it could); the group's SIGKILL follows regardless.
        """
        if self.spec.sandbox is not None and self.spec.sandbox.kind == "reaper" and self.returncode is None:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGUSR1)
            return
        self.signal_group(signal.SIGKILL)

    async def stop(self, stop_timeout: float) -> int | None:
        """Close stdin, grace, SIGTERM to the group, `stop_timeout`, SIGKILL to the group; always reap."""
        with anyio.CancelScope(shield=True):
            if self._process.stdin is not None:
                with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self._process.stdin.aclose()
            if not await self._wait_exit(STDIN_CLOSE_GRACE):
                self.signal_group(signal.SIGTERM)
                if not await self._wait_exit(stop_timeout):
                    self.kill_tree()
                    if not await self._wait_exit(2.0):
                        self.signal_group(signal.SIGKILL)
                        await self._wait_exit(2.0)
            # The leader is gone; descendants left in its group (a forked helper) go too.
            self.signal_group(signal.SIGKILL)
            return self.returncode

    async def _wait_exit(self, timeout: float) -> bool:
        # Not process.wait(): it also waits for pipe EOF, which a grandchild holding the
        # pipes would delay forever. Not `exited.wait()` either: when the supervisor is
        # cancelled, _watch_exit is cancelled with it and would never set the event.
        with anyio.move_on_after(timeout):
            while self._process.returncode is None:
                await anyio.sleep(EXIT_POLL_INTERVAL)
        if self._process.returncode is not None:
            self.exited.set()
        return self.exited.is_set()

    async def _watch_exit(self) -> None:
        """Set `exited` the moment the process dies: a pidfd turns readable then, at no cost
        while it lives (polling 50 children at 20 Hz kept an idle supervisor busy); polling
        remains where pidfds are missing."""
        pidfd = _open_pidfd(self.pid)
        try:
            if pidfd is not None:
                await anyio.wait_readable(pidfd)
            # The event loop's child watcher reaps it and records the code a moment later.
            interval = EXIT_REAP_POLL if pidfd is not None else EXIT_POLL_INTERVAL
            while self._process.returncode is None:
                await anyio.sleep(interval)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        self.exited.set()

    def _parse(self, line: bytes) -> SessionMessage | None:
        try:
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
        except ValueError as exc:
            text = redact(line.decode(errors="replace"))
            self.garbage_lines += 1
            self.last_garbage = text[:200]
            logger.warning("%s wrote a non-JSON-RPC line on stdout (dropped): %.200s", self.spec.name, text)
            return _unusable_answer(line, exc)

    async def _drain_stderr(self, on_line: Callable[[str], None]) -> None:
        assert self._process.stderr is not None
        splitter = LineSplitter(MAX_STDERR_LINE_BYTES, truncate=True)
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            while True:
                for line in splitter.feed(await self._process.stderr.receive()):
                    on_line(line.decode(errors="replace"))
        if rest := splitter.rest():
            on_line(rest.decode(errors="replace"))


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (Linux 5.3+), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


PING_ID_PREFIX = "metasup-ping-"
_PING_MARK = b'"' + PING_ID_PREFIX.encode()
_ping_ids = itertools.count(1)

# `data` of the error that stands in for an answer the child sent but nobody can use.
UNUSABLE_ANSWER = "unusable_answer"


def _unusable_answer(line: bytes, problem: ValueError) -> SessionMessage | None:
    """An error response in place of a malformed answer to one of our requests, so the request
    ends at once instead of waiting out its timeout; None for a line that answers nothing."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or "method" in message:
        return None
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (int, str)):
        return None
    first = problem.errors()[0]["msg"] if isinstance(problem, ValidationError) else str(problem)
    error = types.ErrorData(
        code=types.INTERNAL_ERROR, message=f"malformed answer ({first}): {line[:120].decode(errors='replace')}",
        data=UNUSABLE_ANSWER,
    )
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


class ChildReader(BorrowedStream):
    """The child's stdout as the message stream a `ClientSession` reads.

    Lines are parsed where they are read, with no pump task and memory stream in between:
    on a relayed call those hops cost as much as everything else the supervisor does.
    """

    def __init__(self, child: ChildProcess, stdout: ByteReceiveStream) -> None:
        self._child = child
        self._stdout = stdout
        self._lines: collections.deque[bytes] = collections.deque()
        self._splitter = LineSplitter(MAX_MESSAGE_BYTES)
        # Sees every line first; True takes it away from the session (the gateway's raw relay).
        self.intercept: Callable[[bytes], Awaitable[bool]] | None = None

    def __aiter__(self) -> ChildReader:
        return self

    async def __anext__(self) -> SessionMessage:
        while True:
            while self._lines:
                line = self._lines.popleft()
                if _PING_MARK in line and self._child._answer_ping(line):
                    continue
                if self.intercept is not None and await self.intercept(line):
                    continue
                message = self._child._parse(line)
                if message is not None:
                    return message
            try:
                chunk = await self._stdout.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                raise StopAsyncIteration from None
            before = self._splitter.overlong
            self._lines.extend(line for line in self._splitter.feed(chunk) if line.strip())
            if self._splitter.overlong > before:
                self._child.garbage_lines += self._splitter.overlong - before
                self._child.last_garbage = f"a line over {MAX_MESSAGE_BYTES} bytes (dropped)"



async def send_whole(stdin: ByteSendStream, data: bytes) -> None:
    """Write `data` to a child's stdin. On asyncio the transport takes it at once and the event
    loop is entered only when its buffer is over the high-water mark: anyio's `send` always
    yields a loop iteration, which on a relayed call costs as much as the relay's own work."""
    writer = getattr(stdin, "_stream", None)  # anyio's asyncio wrapper around a StreamWriter
    if writer is None or writer.is_closing():
        await stdin.send(data)
        return
    writer.write(data)  # ordered with every other write: the transport buffers what the pipe does not take
    transport = writer.transport
    if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
        await writer.drain()


class ChildWriter(BorrowedStream):
    """The child's stdin as the message stream a `ClientSession` writes (one line per message)."""

    def __init__(self, stdin: ByteSendStream) -> None:
        self._stdin = stdin

    async def send(self, message: SessionMessage) -> None:
        data = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
        try:
            await send_whole(self._stdin, data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            # The child is gone or going: the session sees it as a closed connection.
            raise anyio.BrokenResourceError from exc



@dataclass
class ChildStreams:
    process: ChildProcess
    read: ChildReader
    write: ChildWriter


@asynccontextmanager
async def spawn_child(spec: SpawnSpec, on_stderr_line: Callable[[str], None]) -> AsyncIterator[ChildStreams]:
    """Start the child, its exit watch and stderr drain; on exit from the block, stop it and reap it."""
    process = await anyio.open_process(
        spec.command(),
        cwd=spec.cwd,
        env=dict(spec.env),
        start_new_session=True,  # its own process group: one signal reaches the whole tree
    )
    child = ChildProcess(spec, process)
    assert process.stdout is not None and process.stdin is not None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child._watch_exit)
            tg.start_soon(child._drain_stderr, on_stderr_line)
            try:
                yield ChildStreams(child, ChildReader(child, process.stdout), ChildWriter(process.stdin))
            finally:
                await child.stop(spec.stop_timeout)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0), suppress(Exception):
            await process.aclose()
