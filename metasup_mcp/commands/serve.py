"""`metasup-mcp serve`: MCP over stdio or streamable HTTP until the transport ends or a signal."""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import anyio

from metasup_mcp.config import Config

logger = logging.getLogger("metasup_mcp")

Runner = Callable[[Config, argparse.Namespace], Awaitable[None]]


def serve(config: Config, transport: str, args: argparse.Namespace) -> int:
    from metasup_mcp.serving import serve_http, serve_stdio

    runner: Runner = serve_stdio if transport == "stdio" else serve_http
    refuse_inspection()
    anyio.run(_until_signalled, runner, config, args)
    return 0


_PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def refuse_inspection() -> bool:
    """Make this process non-dumpable (prctl PR_SET_DUMPABLE 0), so that processes of the same
    user (children running without a kernel sandbox) can no longer read its
    `/proc/<pid>/environ` or memory, where `METASUP_OPERATOR_TOKEN` and other secrets live.
    Root keeps CAP_SYS_PTRACE; children are unaffected (execve makes them dumpable again).

    Returns whether the flag was set (False off Linux, or if the call failed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


async def _until_signalled(runner: Runner, config: Config, args: argparse.Namespace) -> None:
    """Run until the transport ends (stdin closed) or SIGTERM/SIGINT; either way children stop."""
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("received %s: stopping every child, then exiting", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_signals)
        await runner(config, args)
        tg.cancel_scope.cancel()
