"""`metasup-mcp import-claude-config [FILE]`: Claude Desktop's servers as `mcp_servers` entries.

Printed as YAML (default), or merged into `--config` with `--merge`; `--print-client-config`
prints the single `mcpServers` entry that replaces them in Claude Desktop's config.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from metasup_mcp.claude_config import client_config, default_claude_config_path, read_claude_servers, valid_name
from metasup_mcp.config import HIDDEN, hide_secrets
from metasup_mcp.config_edit import ConfigDocument


def import_claude_config(source: Path | None, config: Path, merge: bool, print_client_config: bool) -> int:
    """Print or merge the imported servers; notes (renamed, skipped) go to stderr."""
    if print_client_config:
        print(json.dumps(client_config(config), indent=2))
        return 0
    source = source or default_claude_config_path()
    imported = read_claude_servers(source)
    for note in imported.notes:
        print(f"note: {note}", file=sys.stderr)
    if not merge:
        shown = [hide_secrets(entry) for entry in imported.servers]
        print(yaml.safe_dump({"mcp_servers": shown}, sort_keys=False, default_flow_style=None), end="")
        if shown != imported.servers:
            print(f"note: env and header values are shown as {HIDDEN}; --merge writes them as they are", file=sys.stderr)
        return 0
    document = ConfigDocument.load(config)
    added = []
    for entry in imported.servers:
        same = next((name for name in document.names() if _unnamed(document.entry(name)) == _unnamed(entry)), None)
        if same is not None:
            print(f"note: {entry['name']!r} is already in {document.path} as {same!r}: left as it is", file=sys.stderr)
            continue
        if document.entry(entry["name"]) is not None:
            renamed = valid_name(entry["name"], set(document.names()))
            print(f"note: {entry['name']!r} is taken in {document.path}: imported as {renamed!r}", file=sys.stderr)
            entry = {**entry, "name": renamed}
        document.add_server(entry)
        added.append(entry["name"])
    document.save()
    names = ", ".join(added) or "none"
    print(f"{document.path}: imported {len(added)} server(s) from {source}: {names}", file=sys.stderr)
    print(
        "next: point Claude Desktop at the supervisor alone: "
        f"metasup-mcp import-claude-config --print-client-config --config {config}",
        file=sys.stderr,
    )
    return 0


def _unnamed(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {k: v for k, v in entry.items() if k != "name"}
