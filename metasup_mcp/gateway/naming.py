"""How child capabilities are named upstream: pure functions, no I/O.

Tools and prompts: `<namespace>__<name>` (bare `<name>` when the namespace is ""); split on
the first `__`. Exposed names must match `[A-Za-z0-9_-]{1,64}` (what Claude Desktop and most
clients accept) and fit `max_tool_name`: a child's name that does not is exposed sanitized
(`client_safe_name`) or under the name its server's `tools.rename` gives it; a configured name
that still does not fit is refused with a message that names the tool and a way out.

Resources: `metasup://ns/<key>/<original URI, verbatim>`. The key is the server's namespace
(or its name made name-safe where the namespace is ""); it cannot contain `/`, so the first `/`
after the key ends it and the rest is the child's URI byte for byte. That round-trips any
string, and a child's URI template stays a valid template: its expressions are left as they
are, so a client expands them exactly as it would have expanded the child's own template.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from fnmatch import fnmatchcase
from typing import Any

from metasup_mcp.config import MAX_EXPOSED_NAME, ServerConfig, ToolFilter

SEPARATOR = "__"
MAX_NAME_LENGTH = MAX_EXPOSED_NAME
EXPOSED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SAFE_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_HASH_TAIL = "_123456"
URI_PREFIX = "metasup://ns/"


def exposed_name(namespace: str, name: str) -> str:
    """The upstream name of a child tool or prompt whose own name is already name-safe."""
    return f"{namespace}{SEPARATOR}{name}" if namespace else name


def client_safe_name(namespace: str, name: str, limit: int = MAX_NAME_LENGTH) -> str | None:
    """The upstream name of a child tool or prompt, made acceptable to clients; None if the
    namespace leaves no room for any name within `limit`.

    Characters outside `[A-Za-z0-9_-]` become `_` (accents are dropped first: `ü` gives `u`),
    so `files.read` is `ns__files_read`. A name still over `limit` is cut and ends in `_` and
    six hex digits of its original's SHA-256, which keeps cut names apart and stable.
    """
    own = name if _SAFE_CHARS.fullmatch(name) else _sanitized(name)
    exposed = exposed_name(namespace, own)
    if len(exposed) <= limit:
        return exposed
    room = limit - len(exposed) + len(own) - len(_HASH_TAIL)
    if room < 1:
        return None
    return exposed_name(namespace, f"{own[:room]}_{hashlib.sha256(name.encode()).hexdigest()[:6]}")


def _sanitized(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return _UNSAFE_CHAR.sub("_", folded) or "_"


def split_name(exposed: str) -> tuple[str, str]:
    """(namespace, child's name), split on the first `__`; ("", name) when there is none."""
    namespace, sep, rest = exposed.partition(SEPARATOR)
    return (namespace, rest) if sep else ("", exposed)


def name_problem(server: str, kind: str, original: str, exposed: str, limit: int = MAX_NAME_LENGTH) -> str | None:
    """Why `exposed` cannot be offered upstream, with a way out; None when it can."""
    if EXPOSED_NAME.match(exposed) and len(exposed) <= limit:
        return None
    deny = f"or add {original!r} to its `tools.deny`" if kind == "tool" else "or rename it in the server"
    if len(exposed) > limit:
        return (
            f"{kind} {original!r} of server {server!r} would be exposed as {exposed!r} "
            f"({len(exposed)} characters, over the {limit} that clients accept (`max_tool_name`)): "
            f"give {server!r} a shorter `namespace` in servers.yaml, a shorter name in its `tools.rename`, "
            f"{deny}"
        )
    return (
        f"{kind} {original!r} of server {server!r} would be exposed as {exposed!r}, which has characters "
        f"outside A-Z a-z 0-9 _ - that clients reject: {deny.removeprefix('or ')}"
    )


def resource_key(server: ServerConfig) -> str:
    """The path segment that addresses this server's resources (never empty, never contains `/`)."""
    return server.resource_key


def address_uri(key: str, uri: str) -> str:
    """A child's resource URI (or URI template) re-addressed under its server's key."""
    return f"{URI_PREFIX}{key}/{uri}"


def resolve_uri(exposed: str) -> tuple[str, str] | None:
    """(key, child's URI) for a re-addressed URI; None for any URI the gateway did not make."""
    if not exposed.startswith(URI_PREFIX):
        return None
    key, sep, uri = exposed[len(URI_PREFIX) :].partition("/")
    if not sep or not key:
        return None
    return key, uri


def allowed(tools: ToolFilter, name: str) -> bool:
    """A child's tool passes `tools: {allow, deny}` (names or fnmatch globs of its own names).

    An empty allow list allows everything; deny wins over allow.
    """
    if tools.allow and not any(fnmatchcase(name, pattern) for pattern in tools.allow):
        return False
    return not any(fnmatchcase(name, pattern) for pattern in tools.deny)


def readdress_links(content: list[dict[str, Any]], key: str) -> None:
    """Point resource links and embedded resources in a tool result at their re-addressed URIs."""
    for block in content:
        kind = block.get("type")
        if kind == "resource_link" and isinstance(block.get("uri"), str):
            block["uri"] = address_uri(key, block["uri"])
        elif kind == "resource" and isinstance(resource := block.get("resource"), dict):
            if isinstance(resource.get("uri"), str):
                resource["uri"] = address_uri(key, resource["uri"])
