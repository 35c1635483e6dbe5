"""Run a `Supervisor` behind its MCP surface on a transport: stdio, or streamable HTTP at `/mcp`."""

from __future__ import annotations

import argparse
import logging
import signal

import anyio
import uvicorn
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from metasup_mcp.config import WIRE_MESSAGE_BYTES, Config
from metasup_mcp.http_status import QuietServer, allowed_authorities, is_loopback, run_status_http
from metasup_mcp.mcp_server import SupervisorSurface
from metasup_mcp.stdio import wire
from metasup_mcp.supervisor import Supervisor, SupervisorError
from metasup_mcp.uvicorn_run import serve_until_cancelled

logger = logging.getLogger(__name__)

HTTP_SHUTDOWN_GRACE = 2.0  # seconds open requests get to finish once SIGTERM arrives


async def serve_stdio(config: Config, args: argparse.Namespace) -> None:
    """Serve until the client closes stdin; leaving the block stops every child."""
    supervisor = Supervisor(config)
    async with supervisor.running(), anyio.create_task_group() as tg:
        tg.start_soon(run_status_http, supervisor, config.supervisor.status_http)
        tg.start_soon(reload_on_sighup, supervisor)
        surface = SupervisorSurface(supervisor)
        server = surface.build()
        options = surface.initialization_options(server)
        with wire() as pipes:
            if pipes is not None:
                # Calls of child tools are relayed as raw lines where they can be (gateway/fastpath.py).
                pipes[0].intercept = supervisor.gateway.fastpath.on_upstream_line
                supervisor.gateway.fastpath.write_upstream = pipes[1].send_raw
                await server.run(*pipes, options)
            else:  # stdin or stdout is a regular file: the SDK's threaded transport
                async with stdio_server() as (read, write):
                    await server.run(read, write, options)
        logger.info("client closed stdin: stopping")
        tg.cancel_scope.cancel()


async def serve_http(config: Config, args: argparse.Namespace) -> None:
    """Serve streamable HTTP at http://HOST:PORT/mcp until signalled (loopback only)."""
    if not is_loopback(args.host):
        # Anyone who reaches /mcp can propose changes and roll back: no unauthenticated remote surface.
        raise SupervisorError(
            f"--host {args.host} would serve MCP, changes included, to other machines without "
            "authentication: bind to 127.0.0.1 and put an authenticating reverse proxy in front"
        )
    supervisor = Supervisor(config)
    async with supervisor.running(), anyio.create_task_group() as tg:
        tg.start_soon(run_status_http, supervisor, config.supervisor.status_http)
        tg.start_soon(reload_on_sighup, supervisor)
        server = SupervisorSurface(supervisor).build()
        # Only the bound address in Host and Origin (DNS rebinding), the exact port included.
        authorities = allowed_authorities(args.host, args.port) or []
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=authorities,
            allowed_origins=[f"{scheme}://{a}" for a in authorities for scheme in ("http", "https")],
        )
        app = server.streamable_http_app(
            host=args.host, transport_security=security, max_request_body_size=WIRE_MESSAGE_BYTES
        )
        uv = QuietServer(uvicorn.Config(
            app, host=args.host, port=args.port, log_level="warning", lifespan="on",
            timeout_graceful_shutdown=HTTP_SHUTDOWN_GRACE,  # open SSE streams must not hold the exit
        ))
        logger.info("serving MCP over streamable HTTP at http://%s:%d/mcp", args.host, args.port)
        await serve_until_cancelled(uv, "the MCP HTTP server", HTTP_SHUTDOWN_GRACE + 1)
        tg.cancel_scope.cancel()


async def reload_on_sighup(supervisor: Supervisor) -> None:
    """SIGHUP reloads the config file (as `metasup-mcp reload` asks); the outcome is logged and audited."""
    from metasup_mcp.reload import ReloadRefused

    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            logger.info("SIGHUP: reloading %s", supervisor.config.source)
            try:
                result = await supervisor.reload_config(trigger="sighup")
            except (ReloadRefused, SupervisorError) as exc:
                logger.error("reload refused: %s", exc)
                continue
            logger.info("reload %s: %s", result["verdict"], result["diff"])
