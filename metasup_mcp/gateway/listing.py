"""Re-listing one child's resources, templates and prompts over its live session."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from metasup_mcp.gateway.catalog import Offer

logger = logging.getLogger(__name__)

# Bound on one listing; on expiry the caller keeps the previous offer.
LIST_TIMEOUT = 10.0


async def list_offer(
    session: ClientSession, capabilities: types.ServerCapabilities, tools: list[types.Tool], previous: Offer,
    what: set[str], server: str = "child",
) -> Offer:
    """The child's offer: `tools` as the child session last listed them, and whatever `what`
    names ("all", "resources", "prompts") listed afresh; the rest as `previous` had it."""
    resources, templates, prompts = previous.resources, previous.templates, previous.prompts
    if "all" in what or "resources" in what:
        resources, templates = (), ()
        if capabilities.resources is not None:
            resources = tuple(await _list_all(session.list_resources, "resources", server))
            templates = tuple(await _list_all(session.list_resource_templates, "resource_templates", server))
    if "all" in what or "prompts" in what:
        prompts = tuple(await _list_all(session.list_prompts, "prompts", server)) if capabilities.prompts else ()
    return Offer(tuple(tools), resources, templates, prompts)


async def _list_all(method: Callable[..., Awaitable[Any]], field: str, server: str) -> list[Any]:
    """Every page of a listing within LIST_TIMEOUT; a method the child lacks lists nothing; a
    cursor the child already sent ends the listing with what was listed (and a warning)."""
    items: list[Any] = []
    cursor: str | None = None
    seen: set[str] = set()
    with anyio.fail_after(LIST_TIMEOUT):
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            try:
                page = await method(params=params)
            except MCPError as exc:
                if exc.code == types.METHOD_NOT_FOUND:
                    return items
                raise
            items.extend(getattr(page, field))
            cursor = page.next_cursor
            if not cursor:
                return items
            if cursor in seen:  # a child repeating its cursor would be asked forever
                logger.warning("%s: %s cursor %.80r sent twice; keeping the %d listed", server, field, cursor, len(items))
                return items
            seen.add(cursor)
