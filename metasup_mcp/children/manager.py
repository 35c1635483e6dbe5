"""`ServerManager`: every configured child, started, stopped and restarted as one fleet."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio
from anyio.abc import TaskGroup

from metasup_mcp.children.child import EventSink, ManagedChild, Supervision
from metasup_mcp.children.remote import RemoteChild
from metasup_mcp.config import ServerConfig


class UnknownServer(KeyError):
    """A name that no configured server has; the message lists the names that exist."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        listing = ", ".join(known) if known else "none are configured"
        super().__init__(f"no server named {name!r}; known servers: {listing}")

    def __str__(self) -> str:
        return str(self.args[0])


class ServerManager:
    def __init__(self, servers: list[ServerConfig], supervision: Supervision, emit: EventSink) -> None:
        self._supervision, self._emit = supervision, emit
        self.children: dict[str, ManagedChild] = {server.name: self.create(server) for server in servers}
        self._tg: TaskGroup | None = None
        self._scopes: dict[str, anyio.CancelScope] = {}

    def __iter__(self) -> Iterator[ManagedChild]:
        return iter(self.children.values())

    def get(self, name: str) -> ManagedChild:
        try:
            return self.children[name]
        except KeyError:
            raise UnknownServer(name, list(self.children)) from None

    @asynccontextmanager
    async def running(self, autostart: bool = True) -> AsyncIterator[ServerManager]:
        """Supervise every child for the life of the block; on exit, stop them all and reap them."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for child in self:
                self._launch(child)
                if autostart and child.config.enabled:
                    child.request_start()
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.stop_all()
                self._tg = None
                tg.cancel_scope.cancel()

    def _launch(self, child: ManagedChild) -> None:
        assert self._tg is not None
        scope = self._scopes[child.name] = anyio.CancelScope()

        async def supervise() -> None:
            with scope:
                await child.supervise()

        self._tg.start_soon(supervise, name=f"supervise {child.name}")

    def adopt(self, child: ManagedChild) -> None:
        """Supervise `child` from now on (a reload's new or restored server); it starts when asked."""
        if child.name in self.children:
            raise ValueError(f"a server named {child.name!r} is already supervised")
        self.children[child.name] = child
        if self._tg is not None:
            self._launch(child)

    def create(self, config: ServerConfig) -> ManagedChild:
        """A child for `config`, of the kind it needs (local or remote), not yet adopted."""
        return (RemoteChild if config.is_remote else ManagedChild)(config, self._supervision, self._emit)

    async def release(self, name: str) -> ManagedChild:
        """Stop `name`, end its supervision and forget it; returns it (it can be adopted again)."""
        child = self.get(name)
        child.request_stop()
        await child.wait_for(lambda c: c.at_rest, child.config.stop_timeout + 5)
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        await child.wait_for(lambda c: not c.supervising, child.config.stop_timeout + 5)
        del self.children[name]
        return child

    async def stop_all(self, timeout: float | None = None) -> None:
        """Ask every child to stop and wait until none has a live process."""
        for child in self:
            child.request_stop()
        limit = timeout if timeout is not None else max((c.config.stop_timeout for c in self), default=5) + 5
        async with anyio.create_task_group() as tg:
            for child in self:
                tg.start_soon(child.wait_for, lambda c: c.at_rest, limit)

    def start_all(self) -> None:
        for child in self:
            if child.config.enabled:
                child.request_start()
