"""What the children offer and the merged, namespaced index the upstream client sees.

`Offer` is one child's capabilities as it last listed them, under its own names. `build_index`
merges every offer into routing tables and ready-made upstream lists; it is pure apart from the
`ClaimBook`, which remembers who offered a name first so that a collision keeps the first owner
(across rebuilds) and refuses the newcomer with a message naming both sides and a way out.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import mcp_types as types

from metasup_mcp.config import ServerConfig
from metasup_mcp.gateway.naming import (
    MAX_NAME_LENGTH,
    address_uri,
    allowed,
    client_safe_name,
    exposed_name,
    name_problem,
    resource_key,
)

Kind = Literal["tools", "prompts", "resources"]
_Named = TypeVar("_Named", types.Tool, types.Prompt)


@dataclass(frozen=True)
class Offer:
    """One child's capabilities under its own names and URIs."""

    tools: tuple[types.Tool, ...] = ()
    resources: tuple[types.Resource, ...] = ()
    templates: tuple[types.ResourceTemplate, ...] = ()
    prompts: tuple[types.Prompt, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """Where an exposed name leads: the server (by name) and the child's own name."""

    server: str
    name: str


class ClaimBook:
    """First-come order of (kind, exposed name, server) claims; the earliest claim owns a name."""

    def __init__(self) -> None:
        self._order: dict[tuple[str, str, str], int] = {}
        self._next = itertools.count()

    def claim(self, kind: str, exposed: str, server: str) -> int:
        key = (kind, exposed, server)
        if key not in self._order:
            self._order[key] = next(self._next)
        return self._order[key]

    def keep_only(self, live: set[tuple[str, str, str]]) -> None:
        """Forget claims that nobody makes any more, so a name dropped by its owner moves on."""
        self._order = {key: seq for key, seq in self._order.items() if key in live}


@dataclass
class Index:
    """The merged view: routing tables plus the lists served to `*/list` as they are."""

    tools: dict[str, Route] = field(default_factory=dict)
    prompts: dict[str, Route] = field(default_factory=dict)
    tool_list: list[types.Tool] = field(default_factory=list)
    prompt_list: list[types.Prompt] = field(default_factory=list)
    resource_list: list[types.Resource] = field(default_factory=list)
    template_list: list[types.ResourceTemplate] = field(default_factory=list)
    exposed_tools: dict[str, int] = field(default_factory=dict)  # per server
    problems: dict[str, list[str]] = field(default_factory=dict)  # per server

    def changed(self, before: Index) -> set[Kind]:
        """The kinds whose upstream listing differs from `before` (each needs a list_changed)."""
        kinds: set[Kind] = set()
        if self.tool_list != before.tool_list:
            kinds.add("tools")
        if self.prompt_list != before.prompt_list:
            kinds.add("prompts")
        if self.resource_list != before.resource_list or self.template_list != before.template_list:
            kinds.add("resources")
        return kinds


def build_index(
    servers: Sequence[ServerConfig],
    offers: dict[str, Offer],
    reserved_tools: Iterable[str],
    reserved_prompts: Iterable[str],
    claims: ClaimBook,
    max_name: int = MAX_NAME_LENGTH,
) -> Index:
    """Merge every server's offer, in config order, into one namespaced index; exposed tool and
    prompt names are at most `max_name` characters (`max_tool_name`)."""
    index = Index(problems={server.name: [] for server in servers})
    live: set[tuple[str, str, str]] = set()
    index.tools, index.tool_list = _merge_named(
        "tool", servers, offers, set(reserved_tools), claims, live, index.problems, max_name
    )
    index.prompts, index.prompt_list = _merge_named(
        "prompt", servers, offers, set(reserved_prompts), claims, live, index.problems, max_name
    )
    claims.keep_only(live)
    for server in servers:
        offer, key = offers[server.name], resource_key(server)
        index.resource_list.extend(r.model_copy(update={"uri": address_uri(key, r.uri)}) for r in offer.resources)
        index.template_list.extend(
            t.model_copy(update={"uri_template": address_uri(key, t.uri_template)}) for t in offer.templates
        )
    for route in index.tools.values():
        index.exposed_tools[route.server] = index.exposed_tools.get(route.server, 0) + 1
    return index


def _merge_named(
    kind: Literal["tool", "prompt"],
    servers: Sequence[ServerConfig],
    offers: dict[str, Offer],
    reserved: set[str],
    claims: ClaimBook,
    live: set[tuple[str, str, str]],
    problems: dict[str, list[str]],
    max_name: int,
) -> tuple[dict[str, Route], list[_Named]]:
    candidates: dict[str, list[tuple[int, ServerConfig, _Named]]] = {}
    for server in servers:
        offer = offers[server.name]
        items: tuple[_Named, ...] = offer.tools if kind == "tool" else offer.prompts  # type: ignore[assignment]
        for item in items:
            if kind == "tool" and not allowed(server.tools, item.name):
                continue
            renamed = server.tools.rename.get(item.name) if kind == "tool" else None
            if renamed is not None:
                exposed = exposed_name(server.exposed_namespace, renamed)
            else:
                exposed = client_safe_name(server.exposed_namespace, item.name, max_name) or exposed_name(
                    server.exposed_namespace, item.name
                )
            problem = name_problem(server.name, kind, item.name, exposed, max_name)
            if problem is None and exposed in reserved:
                problem = (
                    f"{kind} {item.name!r} of server {server.name!r} would be exposed as {exposed!r}, the name of "
                    f"a {kind} of the supervisor itself (kept): give {server.name!r} a `namespace` in servers.yaml"
                    + (f", or add {item.name!r} to its `tools.deny`" if kind == "tool" else "")
                )
            if problem is not None:
                problems[server.name].append(problem)
                continue
            live.add((kind, exposed, server.name))
            candidates.setdefault(exposed, []).append((claims.claim(kind, exposed, server.name), server, item))
    routes: dict[str, Route] = {}
    listing: list[_Named] = []
    for exposed, offered in candidates.items():
        offered.sort(key=lambda candidate: candidate[0])
        _, owner, item = offered[0]
        routes[exposed] = Route(owner.name, item.name)
        listing.append(item if item.name == exposed else item.model_copy(update={"name": exposed}))
        for _, other, other_item in offered[1:]:
            way_out = (
                f", name it in its `tools.rename`, or add {other_item.name!r} to its `tools.deny`" if kind == "tool" else ""
            )
            problems[other.name].append(
                f"{kind} {other_item.name!r} of server {other.name!r} would be exposed as {exposed!r}, which server "
                f"{owner.name!r} already offers (kept there): give {other.name!r} its own `namespace` in "
                f"servers.yaml{way_out}"
            )
    return routes, listing
