"""stdin lines for the stdio transport, read without a thread so that a shutdown can cancel them.

The SDK's default reads stdin in a worker thread; a blocked `read()` cannot be cancelled, so
after SIGTERM the process would wait for its client to close stdin before it could exit.
Reading the pipe non-blocking through the event loop lets cancellation end the read at once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator

import anyio

_CHUNK = 1 << 16


def cancellable_stdin(fd: int = 0) -> CancellableLines | None:
    """A cancellable reader for `fd`, or None where polling cannot work (a regular file)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        return None
    return CancellableLines(fd)


class CancellableLines:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        pending = b""
        while True:
            await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace") + "\n"
        if pending:
            yield pending.decode("utf-8", errors="replace")
