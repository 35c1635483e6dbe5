"""Small async helpers shared by the layers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Self, TypeVar

import anyio

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (git, fsync) off the event loop, so children keep being served."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


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
