"""Claude Desktop's `claude_desktop_config.json` ⇄ `servers.yaml` entries.

`read_claude_servers(path)` turns its `mcpServers` into `mcp_servers` entries: stdio entries
(`command`, `args`, `env`) keep their environment; remote entries (`url`, with `type` `http`
or `streamable-http`, and `headers`) become `url` entries; legacy SSE entries cannot be
supervised and are reported as skipped. Names become valid namespaces (`[A-Za-z0-9_-]`, no
`__`, short enough for 64-character tool names) and unique.

`client_config(config_path)` is the single `mcpServers` entry that replaces them all.
Claude Desktop's config locations: https://modelcontextprotocol.io/quickstart/user
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasup_mcp.config import MAX_EXPOSED_NAME, shown_url

# Leaves room for `__` and a tool name of a dozen characters within MAX_EXPOSED_NAME.
MAX_IMPORTED_NAME = MAX_EXPOSED_NAME - 2 - 12
_REMOTE_TYPES = {"http", "streamable-http", "streamableHttp", "streamable_http"}


class ClaudeConfigError(Exception):
    """The Claude config cannot be read or has no usable `mcpServers`; the message says which file and why."""


@dataclass
class Imported:
    """What an import produced: the `mcp_servers` entries, and what was renamed or skipped, and why."""

    servers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def default_claude_config_path() -> Path:
    """Where Claude Desktop keeps its config on this platform."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", home / "AppData" / "Roaming")) / "Claude" / "claude_desktop_config.json"
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return config_home / "Claude" / "claude_desktop_config.json"


def valid_name(raw: str, taken: set[str]) -> str:
    """`raw` made a valid, unused server name and namespace: `My Server!` → `My_Server`."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", raw.strip())
    name = re.sub(r"_{2,}", "_", name).strip("_-") or "server"
    name = name[:MAX_IMPORTED_NAME].rstrip("_-")
    candidate, n = name, 2
    while candidate in taken:
        suffix = f"-{n}"
        candidate, n = name[: MAX_IMPORTED_NAME - len(suffix)] + suffix, n + 1
    return candidate


def read_claude_servers(path: Path) -> Imported:
    """The `mcpServers` of the Claude config at `path` as `mcp_servers` entries, with valid, distinct names."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClaudeConfigError(f"{path}: no such file; pass the Claude Desktop config's path") from None
    except (OSError, ValueError) as exc:
        raise ClaudeConfigError(f"{path}: cannot read it as JSON: {exc}") from exc
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ClaudeConfigError(f"{path}: has no `mcpServers` object: is this a Claude Desktop config?")
    result, used = Imported(), set[str]()
    for raw_name, spec in servers.items():
        if not isinstance(spec, dict):
            result.notes.append(f"skipped {raw_name!r}: its entry is not an object")
            continue
        entry = _entry(raw_name, spec, result.notes)
        if entry is None:
            continue
        name = valid_name(raw_name, used)
        if name != raw_name:
            result.notes.append(f"{raw_name!r} is named {name!r} (tools appear as {name}__<tool>)")
        used.add(name)
        result.servers.append({"name": name, **entry})
    return result


def _entry(name: str, spec: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    problem = _shape_problem(spec)
    if problem is not None:  # Claude Desktop itself would not run it; the values are never shown
        notes.append(f"skipped {name!r}: {problem}; fix it in the Claude config and import again")
        return None
    kind = spec.get("type") or spec.get("transport")
    if "url" in spec:
        if kind in ("sse",):
            notes.append(f"skipped {name!r}: legacy SSE ({shown_url(spec['url'])}); only streamable HTTP servers can be supervised")
            return None
        if kind not in (None, *_REMOTE_TYPES):
            notes.append(f"skipped {name!r}: unknown transport type {kind!r}")
            return None
        entry: dict[str, Any] = {"url": spec["url"]}
        if spec.get("headers"):
            entry["headers"] = dict(spec["headers"])
        return entry
    if not spec.get("command"):
        notes.append(f"skipped {name!r}: it has neither `command` nor `url`")
        return None
    entry = {"command": spec["command"]}
    if spec.get("args"):
        entry["args"] = list(spec["args"])
    if spec.get("env"):
        entry["env"] = dict(spec["env"])
    if spec.get("cwd"):
        notes.append(f"{name!r}: its `cwd` {spec['cwd']!r} is dropped: children run in the workspace")
    return entry


def _shape_problem(spec: dict[str, Any]) -> str | None:
    """What is malformed in an `mcpServers` entry (`args` as one string would become a list of
    letters; a number would be taken as a command), or None."""
    for key in ("command", "url"):
        if key in spec and not isinstance(spec[key], str):
            return f"`{key}` must be a string"
    if "args" in spec and not (isinstance(spec["args"], list) and all(isinstance(a, str) for a in spec["args"])):
        return '`args` must be a list of strings (["-y", "package"]), not one string'
    for key in ("env", "headers"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            return f'`{key}` must be an object of string values ({{"NAME": "value"}})'
    return None


def client_config(config_path: Path, name: str = "metasup") -> dict[str, Any]:
    """The `mcpServers` object that runs this supervisor on `config_path` (absolute paths only)."""
    executable = shutil.which("metasup-mcp")
    beside = Path(sys.executable).parent / "metasup-mcp"
    if beside.exists():  # the one installed with the interpreter running now, whatever PATH says
        executable = str(beside)
    serve = ["serve", "--config", str(Path(config_path).resolve())]
    if executable:
        return {"mcpServers": {name: {"command": executable, "args": serve}}}
    return {"mcpServers": {name: {"command": sys.executable, "args": ["-m", "metasup_mcp.cli", *serve]}}}
