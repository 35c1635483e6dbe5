"""Small async helpers shared by the layers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (git, fsync) off the event loop, so children keep being served."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))
