"""The stdio wire, read and written through the event loop instead of worker threads.

The SDK's default stdio transport reads stdin and writes stdout in worker threads, behind
two pump tasks and memory streams. A read blocked in a thread cannot be cancelled, so after
SIGTERM the process had to wait for its client to close stdin; and the hops are most of what
a relayed call costs. Here both pipes are non-blocking, polled by the event loop, and
handed to the server as the message streams it reads and writes.

As the SDK does, the wire keeps private duplicates of fds 0 and 1 and points fd 0 at
/dev/null and fd 1 at stderr while serving, so a stray print can never corrupt the wire.
Where polling cannot work (stdin or stdout is a regular file), `wire()` yields None and the
SDK's default applies.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage

from metasup_mcp.aio import BorrowedStream, LineSplitter
from metasup_mcp.config import WIRE_MESSAGE_BYTES

_CHUNK = 1 << 16
MAX_MESSAGE_BYTES = WIRE_MESSAGE_BYTES  # a client line over this is refused, never buffered whole
# The request id in the first or last bytes kept of a dropped line (before "params", or after it).
_ID = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')


class WireReader(BorrowedStream):
    """Messages from a non-blocking fd; a line that is not JSON-RPC comes as its error, for the
    server to answer (as the SDK's transport does)."""

    def __init__(self, fd: int, answer: WireWriter | None = None) -> None:
        self.fd = fd
        self._lines: deque[bytes] = deque()
        self._splitter = LineSplitter(MAX_MESSAGE_BYTES)
        self._eof = False
        self._answer = answer  # where a request too large to read is told so
        # Sees every line first; True takes it away from the server (the gateway's raw relay).
        self.intercept: Callable[[bytes], Awaitable[bool]] | None = None

    def __aiter__(self) -> WireReader:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        while True:
            message = await self._next_line()
            if isinstance(message, Exception) or self.intercept is None or not await self.intercept(message):
                break
        if isinstance(message, Exception):
            return message
        try:
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(message, by_name=False))
        except ValueError as exc:
            return exc

    async def _next_line(self) -> bytes | Exception:
        while not self._lines:
            if self._eof:
                raise StopAsyncIteration
            await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                self._eof = True
                chunk = b"\n"  # the last line may lack its newline
            before = self._splitter.overlong
            self._lines.extend(line for line in self._splitter.feed(chunk) if line.strip())
            if self._splitter.overlong > before:
                await self._refuse_dropped()
                return ValueError(f"a message over {MAX_MESSAGE_BYTES} bytes was dropped")
        return self._lines.popleft()

    async def _refuse_dropped(self) -> None:
        """Answer each dropped request with an error, so its sender is not left waiting for ever."""
        dropped, self._splitter.dropped = self._splitter.dropped, []
        for head, tail in dropped:
            request_id = request_id_of(head, tail)
            if request_id is None or self._answer is None:
                continue
            error = types.JSONRPCError(
                jsonrpc="2.0", id=request_id,
                error=types.ErrorData(
                    code=types.INVALID_REQUEST,
                    message=f"request over the wire limit of {MAX_MESSAGE_BYTES // (1024 * 1024)} MiB: not read. "
                    "Send a smaller one (for propose_change, split the change into several proposals)",
                ),
            )
            await self._answer.send(SessionMessage(error))


def request_id_of(head: bytes, tail: bytes) -> str | int | None:
    """The JSON-RPC id of a line known only by its first and last bytes, or None."""
    before_params = head.split(b'"params"', 1)[0]
    body = tail.rstrip().removesuffix(b"}")  # the message's own closing brace
    after_params = body[body.rfind(b"}") + 1 :] if b"}" in body else b""
    for part in (before_params, after_params):
        if match := _ID.search(part):
            raw = match.group(1)
            try:
                return json.loads(raw)
            except ValueError:
                return None
    return None


class WireWriter(BorrowedStream):
    """Messages to a non-blocking fd, one JSON line each, written whole before the next."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # fast_acquire: an uncontended write does not yield to the event loop first (a loop
        # iteration is a measurable part of a relayed call).
        self._lock = anyio.Lock(fast_acquire=True)

    async def send(self, message: SessionMessage) -> None:
        await self.send_raw(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")

    async def send_raw(self, line: bytes) -> None:
        """Write one message line (newline included) as it is."""
        data = memoryview(line)
        async with self._lock:  # a partial write must not interleave with another message
            while data:
                try:
                    data = data[os.write(self.fd, data) :]
                except BlockingIOError:
                    await anyio.wait_writable(self.fd)



@contextmanager
def wire() -> Iterator[tuple[WireReader, WireWriter] | None]:
    """Claim fds 0 and 1 for MCP for the life of the block; restore them after."""
    if not (_pollable(0) and _pollable(1)):
        yield None
        return
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
        os.dup2(2, 1)  # stray prints go to stderr
        os.set_blocking(wire_in, False)
        os.set_blocking(wire_out, False)
        writer = WireWriter(wire_out)
        yield WireReader(wire_in, answer=writer), writer
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        for fd in (null, wire_in, wire_out, saved_in, saved_out):
            os.close(fd)


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
