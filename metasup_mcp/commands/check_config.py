"""`metasup-mcp check-config [PATH]`: validate and print the effective configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metasup_mcp.config import check_executables, effective_config, load_config


def check_config(path: Path) -> int:
    """Print the effective config as JSON (exit 0); `ConfigError` (exit 2) names each bad key."""
    config = load_config(path)
    for warning in check_executables(config):
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(effective_config(config), indent=2))
    return 0
