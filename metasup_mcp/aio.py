"""Small async helpers shared by the layers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Self, TypeVar

import anyio

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (git, fsync) off the event loop, so children keep being served."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class BorrowedStream:
    """A message stream over a pipe it does not own: `async with` and `aclose` leave the pipe
    open, because whoever owns it closes it in its own order (a child's stdin close is how
    its stop begins)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def aclose(self) -> None:
        pass


class LineSplitter:
    """Splits a byte stream into lines without ever buffering more than `limit` bytes of one.

    A peer that writes without newlines must not grow the supervisor's memory: a line over the
    limit is cut to its first `limit` bytes (`truncate=True`, for logs) or dropped and counted
    in `overlong` (for protocol messages, where half a message is worth nothing).
    """

    ENDS_KEPT = 512

    def __init__(self, limit: int, *, truncate: bool = False) -> None:
        self.limit = limit
        self.truncate = truncate
        self.overlong = 0
        # (first, last) ENDS_KEPT bytes of each dropped line, until taken: enough to find its id.
        self.dropped: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._overflowed = False
        self._head = self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._take(chunk[start:end])
            if self._overflowed:
                self.overlong += 1
                if self.truncate:
                    lines.append(b"".join(self._parts))
                else:
                    self.dropped.append((self._head, self._tail))
                    del self.dropped[:-16]
            else:
                lines.append(b"".join(self._parts))
            self._parts, self._size, self._overflowed = [], 0, False
            self._head = self._tail = b""
            start = end + 1
        self._take(chunk[start:])
        return lines

    def rest(self) -> bytes:
        """What came after the last newline (at end of stream)."""
        return b"" if self._overflowed and not self.truncate else b"".join(self._parts)

    def _take(self, piece: bytes) -> None:
        if not piece:
            return
        if self._overflowed and not self.truncate:
            self._tail = (self._tail + piece)[-self.ENDS_KEPT :]
            return
        room = self.limit - self._size
        if len(piece) > room:
            self._overflowed = True
            if not self.truncate:
                self._head = b""
                for part in (*self._parts, piece):
                    self._head += part[: self.ENDS_KEPT - len(self._head)]
                    if len(self._head) >= self.ENDS_KEPT:
                        break
                self._tail = piece[-self.ENDS_KEPT :]
                self._parts, self._size = [], 0
                return
            piece = piece[: max(room, 0)]
        if piece:
            self._parts.append(piece)
            self._size += len(piece)
