"""Edit a `servers.yaml` in place, comments and layout kept, and never save an invalid one.

`ConfigDocument.load(path)` reads the file with ruamel.yaml's round-trip loader;
`add_server` / `remove_server` change its `supervisor.mcp_servers`; `save()` validates the
result with the same `parse_config` the supervisor uses and only then replaces the file
atomically (a temporary file renamed over it), so a failed edit leaves the file as it was.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from metasup_mcp.config import Config, ConfigError, parse_config

# Short lists (args, watch) stay on one line as in the shipped servers.yaml.
_FLOW_LISTS = ("args", "watch")


def _yaml() -> YAML:
    yaml = YAML()  # round-trip mode: comments, order, quoting and flow style survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a user's long flow mappings
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


class ConfigDocument:
    """One `servers.yaml` open for editing: `servers` is its live `mcp_servers` list."""

    def __init__(self, path: Path, root: Any) -> None:
        self.path = path
        self.root = root

    @classmethod
    def load(cls, path: Path) -> ConfigDocument:
        """Read `path`; `ConfigError` if it cannot be read or has no `supervisor:` mapping."""
        path = Path(path).resolve()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from exc
        try:
            root = _yaml().load(text)
        except YAMLError as exc:
            raise ConfigError(path, [f"not valid YAML: {exc}"]) from exc
        if not isinstance(root, CommentedMap) or not isinstance(root.get("supervisor"), CommentedMap):
            raise ConfigError(path, ["the file must be a mapping with a top-level `supervisor:` mapping"])
        return cls(path, root)

    @property
    def servers(self) -> CommentedSeq:
        supervisor = self.root["supervisor"]
        servers = supervisor.get("mcp_servers")
        if not isinstance(servers, CommentedSeq):
            servers = CommentedSeq()
            supervisor["mcp_servers"] = servers
        if not servers:
            servers.fa.set_block_style()  # `mcp_servers: []` grows into a block list
        return servers

    def names(self) -> list[str]:
        return [str(entry.get("name")) for entry in self.servers if isinstance(entry, dict)]

    def entry(self, name: str) -> dict[str, Any] | None:
        """The server called `name` as plain data, or None."""
        for existing in self.servers:
            if isinstance(existing, dict) and existing.get("name") == name:
                return _plain(existing)
        return None

    def add_server(self, entry: dict[str, Any], *, replace: bool = False) -> None:
        """Append `entry` (a `mcp_servers` item); `ValueError` if its name is taken and not `replace`."""
        name = entry["name"]
        servers = self.servers
        node = _node(entry)
        for index, existing in enumerate(servers):
            if isinstance(existing, dict) and existing.get("name") == name:
                if not replace:
                    raise ValueError(f"a server named {name!r} already exists in {self.path}: remove it first or choose another name")
                servers[index] = node
                return
        servers.append(node)

    def remove_server(self, name: str) -> None:
        """Drop the server called `name`; `KeyError` naming the servers that exist if none is."""
        servers = self.servers
        for index, existing in enumerate(servers):
            if isinstance(existing, dict) and existing.get("name") == name:
                del servers[index]
                return
        known = ", ".join(self.names()) or "none are configured"
        raise KeyError(f"no server named {name!r} in {self.path}; known servers: {known}")

    def render(self) -> str:
        out = io.StringIO()
        _yaml().dump(self.root, out)
        return out.getvalue()

    def validate(self) -> Config:
        """The edited document as the supervisor would load it; `ConfigError` naming each fault."""
        return parse_config(self.render(), source=self.path)

    def save(self) -> Config:
        """Validate, then atomically replace the file; on any error the file is untouched."""
        config = self.validate()
        write_atomically(self.path, self.render())
        return config


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, keep `path`'s mode, then rename it over."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _node(entry: dict[str, Any]) -> CommentedMap:
    node = CommentedMap()
    for key, value in entry.items():
        if isinstance(value, list):
            seq = CommentedSeq(value)
            if key in _FLOW_LISTS:
                seq.fa.set_flow_style()
            node[key] = seq
        elif isinstance(value, dict):
            node[key] = CommentedMap(value)
        else:
            node[key] = value
    return node


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
