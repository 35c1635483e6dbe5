"""Running a uvicorn server inside the supervisor's task tree."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio
import uvicorn

logger = logging.getLogger(__name__)


async def serve_until_cancelled(
    server: uvicorn.Server, what: str, grace: float, sockets: list[socket.socket] | None = None,
    started: Callable[[], None] = lambda: None,
) -> None:
    """Run `server` until it stops or this task is cancelled (SIGTERM, the supervisor stopping).

    uvicorn runs shielded, so a cancellation becomes a graceful shutdown bounded by `grace`
    seconds (then it is cut off, logged naming `what`), and its lifespan ends cleanly instead of
    dying with a traceback. `started` is called once uvicorn's task is scheduled.
    """
    done = anyio.Event()
    shield = anyio.CancelScope(shield=True)

    async def serve() -> None:
        with shield:
            try:
                await server.serve(sockets=sockets)
            except SystemExit:  # uvicorn's reaction to a failed startup
                logger.warning("%s stopped: uvicorn could not start", what)
            finally:
                done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        started()
        try:
            await done.wait()
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(grace):
                    await done.wait()
                if not done.is_set():
                    logger.warning("%s did not stop within %gs: cutting it off", what, grace)
                    server.force_exit = True
                    shield.cancel()
