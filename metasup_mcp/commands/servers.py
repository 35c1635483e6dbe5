"""`metasup-mcp add NAME -- COMMAND [ARGS...]` / `add NAME --url URL` and `remove NAME`.

Both edit `servers.yaml` in place (comments kept), validate the result as the supervisor
would, and write nothing if it is invalid. A running supervisor picks the change up on reload.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metasup_mcp.config_edit import ConfigDocument


class CommandLineError(Exception):
    """The arguments cannot make a valid edit; the message says which and what to do."""


def parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    """`["K=V", ...]` → `{K: V}`; `CommandLineError` naming the first item without `=`."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandLineError(f"{what} {pair!r} is not KEY=VALUE")
        result[key] = value
    return result


def server_entry(
    name: str, command: Sequence[str], *, url: str | None = None, env: Sequence[str] = (),
    headers: Sequence[str] = (), watch: Sequence[str] = (),
) -> dict[str, Any]:
    """The `mcp_servers` item for the command line of `add`."""
    if bool(command) == bool(url):
        raise CommandLineError("give the server's command after `--` (add NAME -- COMMAND ARGS...) or --url URL, not both")
    entry: dict[str, Any] = {"name": name}
    if url:
        if env:
            raise CommandLineError("--env applies to a local command; a --url server takes --header K=V")
        entry["url"] = url
        if headers:
            entry["headers"] = parse_pairs(list(headers), "--header")
    else:
        if headers:
            raise CommandLineError("--header applies to a --url server; a local command takes --env K=V")
        entry["command"], entry["args"] = command[0], list(command[1:])
        if not entry["args"]:
            del entry["args"]
        if env:
            entry["env"] = parse_pairs(list(env), "--env")
    if watch:
        entry["watch"] = list(watch)
    return entry


def add(config: Path, entry: dict[str, Any], replace: bool = False) -> int:
    """Add `entry` to `config`; a taken name is an error unless `replace`."""
    document = ConfigDocument.load(config)
    try:
        document.add_server(entry, replace=replace)
    except ValueError as exc:
        raise CommandLineError(f"{exc} (or pass --replace)") from None
    document.save()
    print(f"{document.path}: added server {entry['name']!r}; a running supervisor applies it on reload", file=sys.stderr)
    return 0


def remove(config: Path, name: str) -> int:
    """Remove the server called `name` from `config`."""
    document = ConfigDocument.load(config)
    try:
        document.remove_server(name)
    except KeyError as exc:
        raise CommandLineError(exc.args[0]) from None
    document.save()
    print(f"{document.path}: removed server {name!r}; a running supervisor applies it on reload", file=sys.stderr)
    return 0
