"""`metasup-mcp status`: ask a running supervisor's status endpoint and print a table (or the JSON).

The URL defaults to `status_http` of servers.yaml (when the file is there), else
http://127.0.0.1:9000. A supervisor that does not answer is a one-line message and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from metasup_mcp.config import ConfigError, load_config
from metasup_mcp.http_status import human_duration

__all__ = ["StatusTarget", "default_target", "run_status", "render_table"]

DEFAULT_URL = "http://127.0.0.1:9000"
TOKEN_ENV = "METASUP_STATUS_TOKEN"
REQUEST_TIMEOUT = 5.0  # a live supervisor answers in milliseconds; this only bounds a wedged one
ERROR_WIDTH = 60
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True)
class StatusTarget:
    url: str
    token: str | None = None
    note: str = ""  # added to the message when nothing answers
    config: Path | None = None  # the servers.yaml whose supervisor is expected to answer

    def request(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> urllib.request.Request:
        """A request for `path` under this endpoint (a POST with `body`), with its bearer token
        (`token`, else METASUP_STATUS_TOKEN) when there is one."""
        request = urllib.request.Request(self.url.rstrip("/") + path, data=body, headers=headers or {},
                                         method="POST" if body is not None else "GET")
        token = self.token or os.environ.get(TOKEN_ENV)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        return request


def default_target(config_path: Path) -> StatusTarget:
    """Where servers.yaml says the status endpoint listens, or the default when there is no file."""
    if not config_path.is_file():
        return StatusTarget(DEFAULT_URL, note=f" ({config_path} does not exist: pass --config with your servers.yaml, or --url)")
    try:
        settings = load_config(config_path).supervisor.status_http
    except ConfigError as exc:
        print(f"warning: {config_path} is not usable ({exc.problems[0]}); trying {DEFAULT_URL}", file=sys.stderr)
        return StatusTarget(DEFAULT_URL)
    host = _WILDCARD.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host else host
    note = "" if settings.enabled else f" ({config_path} has status_http.enabled: false)"
    return StatusTarget(f"http://{host}:{settings.port}", settings.token, note, config_path.resolve())


def run_status(target: StatusTarget, as_json: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    base = target.url.rstrip("/")
    request = target.request("/supervisor/status", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return _fail(f"the status endpoint at {base} wants its token: pass --token or set {TOKEN_ENV}")
        return _fail(f"the status endpoint at {base} answered HTTP {exc.code} {exc.reason}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        return _fail(
            f"no supervisor is answering at {base} ({reason}){target.note}. "
            "Start one with `metasup-mcp serve`, or point --url at its status endpoint"
        )
    except ValueError:
        return _fail(f"{base}/supervisor/status did not answer with JSON: is that a metasup-mcp status endpoint?")
    config = document.get("config") if isinstance(document, dict) else None
    answering = config.get("path") if isinstance(config, dict) else config  # {path, ...}, or a bare path
    if target.config is not None and answering and Path(answering) != target.config:
        return _fail(
            f"the supervisor answering at {base} runs {answering}, not {target.config}: the supervisor of "
            f"{target.config} is not running, or listens elsewhere. Point --url at its status endpoint"
        )
    if as_json:
        print(json.dumps(document, indent=2), file=out)
    else:
        print(render_table(document, base), file=out)
    return 0


def _fail(message: str) -> int:
    print(f"metasup-mcp status: {message}", file=sys.stderr)
    return 1


def render_table(doc: dict[str, Any], url: str = "") -> str:
    lines = [
        f"supervisor {doc['status']}  mode {doc['mode']}  up {doc.get('uptime') or human_duration(doc.get('uptime_s'))}"
        f"  strategy {doc.get('strategy', '-')}" + (f"  ({url})" if url else ""),
    ]
    if doc.get("mode") == "emergency":
        lines.append(f"EMERGENCY: {doc.get('emergency_reason') or 'no reason given'}; call `recover` once fixed")
    elif doc.get("mode") == "changes_paused":
        lines.append(f"CHANGES PAUSED (evolution breaker): {doc.get('breaker_reason') or 'no reason given'}; "
                     "servers keep serving last good; call `recover` to allow changes again")
    if doc.get("tamper"):
        lines.append(f"TAMPER: {'; '.join(doc['tamper'])}; changes refused until `recover`")
    if sandbox := doc.get("sandbox"):
        held = "kernel-enforced (PID namespace, protected paths read-only)" if sandbox.get("kernel_enforced") \
            else "detection only"
        lines.append(f"sandbox {sandbox.get('mode')}: {sandbox.get('in_force')}, {held}")
    current, good = doc.get("current_commit"), doc.get("last_good_commit")
    sync = "no commit yet" if not current else ("at last good" if current == good else "DIFFERS from last good")
    lines.append(f"commit {_short(current)}  last good {_short(good)}  ({sync})"
                 f"  consecutive failures {doc['consecutive_failures']}/{doc.get('max_failures', '?')}")
    evolution = doc.get("evolution") or {}
    if evolution:
        lines.append(f"proposals {evolution.get('proposals', 0)}: {evolution.get('applied', 0)} applied, "
                     f"{evolution.get('rolled_back', 0)} rolled back, {evolution.get('rejected', 0)} rejected")
    lines += ["", *_table(["SERVER", "STATE", "PID", "UPTIME", "RESTARTS", "MEMORY", "CPU", "PROBE", "TOOLS",
                           "LAST ERROR"], [_server_row(s) for s in doc.get("servers", {}).values()])]
    events = doc.get("recent_events") or []
    if events:
        lines += ["", "RECENT EVENTS", *_table(None, [_event_row(e) for e in events], indent="  ")]
    return "\n".join(lines)


def _server_row(server: dict[str, Any]) -> list[str]:
    health = server.get("health") or {}
    error = server.get("last_error") or "-"
    return [
        server["name"], server["state"], _text(server.get("pid")), human_duration(server.get("uptime_s")) or "-",
        _text(server.get("restarts")), _unit(health.get("rss_mb"), " MB"), _unit(health.get("cpu_percent"), "%"),
        _unit(health.get("probe_ms"), " ms"), _text(server.get("tools")),
        error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…",
    ]


def _event_row(event: dict[str, Any]) -> list[str]:
    at = time.strftime("%H:%M:%S", time.localtime(event.get("at") or 0))
    if event.get("event") == "rollback":
        what = f"{_short(event.get('from'))} -> {_short(event.get('to'))}  {event.get('reason') or ''}"
        return [at, "rollback", event.get("trigger") or "-", what.strip()]
    detail = event.get("detail") or event.get("reason") or ""
    return [at, str(event.get("event")), event.get("server") or "-", str(detail)]


def _table(header: list[str] | None, rows: list[list[str]], indent: str = "") -> list[str]:
    everything = ([header] if header else []) + rows
    if not everything:
        return []
    widths = [max(len(row[i]) for row in everything) for i in range(len(everything[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in everything]


def _short(sha: Any) -> str:
    return str(sha)[:10] if sha else "-"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _unit(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.1f}{unit}"
