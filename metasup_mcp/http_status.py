"""The status endpoint: `/supervisor/status`, `/supervisor/changes`, `/supervisor/events`,
`/supervisor/pending` (proposals waiting for a human, with their diff), the operator's
`POST /supervisor/changes/{id}/approve|reject` (`{"token", "note"}` as JSON, same origin only),
`/metrics` and the dashboard at `/`, served by uvicorn in the supervisor's own event loop.

Everything is read from the `Supervisor` when a request arrives (handlers are `async`, so they
run on the loop that owns the supervisor's state). The server binds 127.0.0.1:9000 unless
`status_http` says otherwise; a non-loopback host needs a bearer `token`, which every
endpoint then requires (the page also takes it as `?token=`, then sends it as a header).

`run_status_http` never takes the supervisor down: a refused host or a port in use is logged
and the supervisor carries on without its status page.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from metasup_mcp.config import StatusHttpSettings
from metasup_mcp.evolution.service import ApprovalRefused, ChangeError
from metasup_mcp.metrics import render_metrics
from metasup_mcp.operator_gate import MAX_WRONG, WINDOW_S, GuessWindow
from metasup_mcp.uvicorn_run import serve_until_cancelled

logger = logging.getLogger(__name__)

__all__ = [
    "allowed_authorities", "bind_refusal", "build_app", "foreign_request", "human_duration", "run_status_http",
    "status_document",
]

# How long a closing status server may take to finish its responses before it is cut off.
SHUTDOWN_GRACE = 3.0
RECENT_EVENTS = 10  # events carried inside the status document (newest first)
MAX_LIMIT = 200

Endpoint = Callable[[Request], Awaitable[Response]]


# -- documents -------------------------------------------------------------------------


def human_duration(seconds: float | None) -> str | None:
    """42s, 5m12s, 2h34m, 3d4h: the seed's `uptime` style."""
    if seconds is None:
        return None
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def recent_events(supervisor: Any, limit: int, kind: str | None = None) -> list[dict[str, Any]]:
    """The supervisor's notable events, newest first, optionally of one kind (see `timeline`)."""
    return supervisor.timeline(limit, kind)


def status_document(supervisor: Any) -> dict[str, Any]:
    """The seed's shape (status, current_commit, consecutive_failures, uptime, mcp_servers) and more."""
    current = supervisor.status()
    block = current["supervisor"]
    servers = current["servers"]
    return {
        **block,
        "uptime": human_duration(block["uptime_s"]),
        "mcp_servers": {name: server["state"] for name, server in servers.items()},
        "servers": servers,
        "evolution": supervisor.evolution_status(),
        "recent_events": recent_events(supervisor, RECENT_EVENTS),
        "generated_at": time.time(),
    }


# -- the app ---------------------------------------------------------------------------


def allowed_authorities(host: str, port: int) -> list[str] | None:
    """The `Host` values (host:port) a server bound to `host`:`port` answers; None for a wildcard
    bind (0.0.0.0, ::), which has no one name. A loopback bind answers all loopback names."""
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return None
    except ValueError:
        pass
    names = {host, "127.0.0.1", "localhost", "::1"} if is_loopback(host) else {host}
    authorities = []
    for name in sorted(names):
        shown = f"[{name}]" if ":" in name else name
        authorities.append(f"{shown}:{port}".lower())
        if port == 80:
            authorities.append(shown.lower())
    return authorities


def foreign_request(headers: Any, allowed: list[str] | None) -> tuple[int, str] | None:
    """(403, reason) when `Host` or `Origin` is not the bound address (DNS rebinding), else None.

    A page on another site whose name an attacker re-points at 127.0.0.1 reaches a loopback
    server with its own name in `Host` and `Origin`; only the bound names are answered.
    Source: the MCP transport's security notes (validate Origin; bind to localhost).
    """
    if allowed is None:
        return None
    host = (headers.get("host") or "").lower()
    if host not in allowed:
        return 403, (f"address the endpoint by IP address or localhost, as it is bound ({', '.join(allowed)}), "
                     f"not {host or '(no Host)'!r}")
    origin = headers.get("origin")
    if origin is not None:
        scheme, _, authority = origin.lower().partition("://")
        if scheme not in ("http", "https") or authority.rstrip("/") not in allowed:
            return 403, f"cross-origin request refused (Origin {origin!r} is not this server's address)"
    return None


IDENTITY_KEY_FILE = "status_http.key"  # in the state folder: what lets `metasup-mcp approve` know its supervisor


def identity_proof(key: bytes, nonce: str) -> str:
    """The answer to `GET /supervisor/identity?nonce=`: only the holder of the key can give it."""
    return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()


def build_app(
    supervisor: Any, token: str | None = None, allowed_hosts: list[str] | None = None,
    identity_key: bytes | None = None,
) -> Starlette:
    """The ASGI app; with a `token`, every endpoint answers 401 without it; with `allowed_hosts`
    (host:port values, see `allowed_authorities`), a request naming another Host or Origin is refused.
    With `identity_key`, `/supervisor/identity?nonce=N` proves this is the supervisor whose state
    folder holds the key, so that the operator token is never sent to another program holding the port."""

    async def identity(request: Request) -> Response:
        nonce = request.query_params.get("nonce", "")
        if identity_key is None or not 16 <= len(nonce) <= 128:
            return _json({"error": "send ?nonce= (16-128 characters)"}, status=400)
        return _json({"proof": identity_proof(identity_key, nonce)})

    async def status(request: Request) -> Response:
        return _json(status_document(supervisor))

    async def changes(request: Request) -> Response:
        return _json({"changes": supervisor.list_changes(request.query_params.get("status") or None,
                                                         _limit(request, 50))})

    async def events(request: Request) -> Response:
        kind = request.query_params.get("event") or None
        return _json({"events": recent_events(supervisor, _limit(request, 50), kind)})

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(supervisor), media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(_dashboard_html(), headers={**_NO_STORE, "Referrer-Policy": "no-referrer"})

    async def pending(request: Request) -> Response:
        return _json({"pending": supervisor.pending_changes()})

    def deciding(approve: bool) -> Endpoint:
        async def decide(request: Request) -> Response:
            refusal = _cross_site(request)
            if refusal is not None:
                return _json({"error": refusal}, status=403)
            body = await _json_body(request)
            token, note = body.get("token"), body.get("note", "")
            if not isinstance(token, str) or not isinstance(note, str):
                raise _BadRequest('send {"token": "<operator token>", "note": "<why>"} as JSON')
            try:
                supervisor.get_change(request.path_params["id"])
            except ChangeError as exc:
                return _json({"error": str(exc)}, status=404)
            try:
                proposal = await supervisor.decide_change(request.path_params["id"], approve, token, note, None, "http")
            except ApprovalRefused as exc:
                return _json({"error": str(exc)}, status=403)
            except ChangeError as exc:
                return _json({"error": str(exc)}, status=409)
            return _json(proposal.result())

        return decide

    guesses: dict[str, GuessWindow] = {}  # by client address: a remote guesser cannot lock the others out

    def guarded(endpoint: Endpoint, page: bool = False) -> Endpoint:
        async def handle(request: Request) -> Response:
            if (foreign := foreign_request(request.headers, allowed_hosts)) is not None:
                return _json({"error": foreign[1]}, status=foreign[0])
            if token is not None:
                client = request.client.host if request.client else ""
                if (window := guesses.get(client)) is not None and (wait := window.closed_for()):
                    return _json({"error": f"{MAX_WRONG} wrong status tokens from {client} in {WINDOW_S:.0f} s: "
                                           f"try again in {wait:.0f} s"},
                                 status=429, headers={"Retry-After": str(math.ceil(wait))})
                if (given := _presented_token(request, allow_query=page)) is None or not hmac.compare_digest(
                    given.encode(), token.encode()
                ):
                    if given is not None:  # a guess; no token at all is a first visit
                        _count_wrong(guesses, client)
                    return _json(
                        {"error": "unauthorized: send the status_http token as 'Authorization: Bearer <token>'"},
                        status=401, headers={"WWW-Authenticate": 'Bearer realm="metasup"'},
                    )
            try:
                return await endpoint(request)
            except _BadRequest as exc:
                return _json({"error": str(exc)}, status=400)

        return handle

    return Starlette(
        routes=[
            Route("/", guarded(dashboard, page=True)),
            Route("/supervisor/status", guarded(status)),
            Route("/supervisor/changes", guarded(changes)),
            Route("/supervisor/events", guarded(events)),
            Route("/supervisor/pending", guarded(pending)),
            Route("/supervisor/identity", guarded(identity)),
            Route("/supervisor/changes/{id}/approve", guarded(deciding(True)), methods=["POST"]),
            Route("/supervisor/changes/{id}/reject", guarded(deciding(False)), methods=["POST"]),
            Route("/metrics", guarded(metrics)),
        ]
    )


_NO_STORE = {"Cache-Control": "no-store"}


class _BadRequest(ValueError):
    pass


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, default=str, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers={**_NO_STORE, **(headers or {})})


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        return max(1, min(int(raw), MAX_LIMIT))
    except ValueError:
        raise _BadRequest(f"limit must be a whole number (1-{MAX_LIMIT}), got {raw!r}") from None


def _cross_site(request: Request) -> str | None:
    """Why a state-changing request must be refused as coming from another site; None if not.

    A browser sends `Origin` (and `Sec-Fetch-Site`) on every POST: it must be this endpoint's
    own origin. The JSON content type also forces a CORS preflight that is never granted.
    Command-line clients send neither header.
    """
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return "send the body as application/json"
    host = request.url.hostname or ""
    if not (host == "localhost" or _is_ip(host)):
        # A page that re-points its own name at this address (DNS rebinding) is "same origin".
        return f"address the endpoint by IP address or localhost, not {host!r}"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin != own:
        return f"cross-origin request refused (Origin {origin!r} is not {own!r})"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise _BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _count_wrong(guesses: dict[str, GuessWindow], client: str, keep: int = 1024) -> None:
    if len(guesses) >= keep:  # bounded: forget the addresses that are not locked out
        for address in [a for a, window in guesses.items() if not window.closed_for()]:
            del guesses[address]
    guesses.setdefault(client, GuessWindow()).wrong()


def _presented_token(request: Request, allow_query: bool) -> str | None:
    """The bearer token the request carries (the page may carry it as `?token=`), None if none."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return given.strip()
    return request.query_params.get("token") if allow_query else None


@functools.cache
def _dashboard_html() -> str:
    """The page, read once: it is package data and does not change while the supervisor runs."""
    return resources.files("metasup_mcp").joinpath("dashboard.html").read_text(encoding="utf-8")


# -- serving ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def bind_refusal(settings: StatusHttpSettings) -> str | None:
    """Why the status server must not listen as configured, or None when it may."""
    if not is_loopback(settings.host) and not settings.token:
        return (
            f"status_http.host is {settings.host!r}, which is reachable from other machines, and no "
            "status_http.token is set: set a token (every endpoint will then require it) or use host 127.0.0.1"
        )
    return None


async def run_status_http(
    supervisor: Any,
    settings: StatusHttpSettings,
    *,
    task_status: TaskStatus[str | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the status endpoint until cancelled. With `tg.start()`, report the base URL (or None
    when it does not serve: disabled, refused, or the port is taken)."""
    if not settings.enabled:
        logger.info("status page disabled (status_http.enabled: false)")
        task_status.started(None)
        return
    refusal = bind_refusal(settings)
    if refusal is not None:
        logger.error("status page not started: %s", refusal)
        task_status.started(None)
        return
    try:
        sock = _listen(settings.host, settings.port)
    except OSError as exc:
        logger.warning(
            "status page not started: cannot listen on %s:%d (%s); the supervisor carries on without it. "
            "Stop whatever holds the port or set status_http.port to a free one",
            settings.host, settings.port, exc.strerror or exc,
        )
        task_status.started(None)
        return
    url = _base_url(sock)
    identity_key = secrets.token_bytes(32)
    _write_identity_key(supervisor.settings.state_dir / IDENTITY_KEY_FILE, identity_key)
    server = QuietServer(
        uvicorn.Config(
            build_app(
                supervisor, settings.token, allowed_authorities(settings.host, sock.getsockname()[1]), identity_key
            ),
            lifespan="off",
            log_config=None,  # no handlers of uvicorn's own: its default access log writes to stdout
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    with sock:
        logger.info("status page at %s/ (JSON at %s/supervisor/status, metrics at %s/metrics)", url, url, url)
        await serve_until_cancelled(server, "status page", SHUTDOWN_GRACE, [sock], lambda: task_status.started(url))


def _write_identity_key(path: Path, key: bytes) -> None:
    """Owner-only, replaced atomically (a client never reads half a key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    os.replace(partial, path)


class QuietServer(uvicorn.Server):
    """uvicorn that leaves signals alone: the CLI owns SIGINT and SIGTERM."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        pass


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
