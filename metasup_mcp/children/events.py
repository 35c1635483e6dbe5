"""Fan-out of child events to whoever is watching right now (the pipeline while it verifies,
the on-disk guard while a candidate is on trial, tests)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from metasup_mcp.children.child import ChildEvent


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[MemoryObjectSendStream[ChildEvent]] = set()

    def publish(self, event: ChildEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(subscriber)

    @contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[ChildEvent]]:
        """Every event published while the block runs, in order (unbounded: consumers are short-lived)."""
        send, receive = anyio.create_memory_object_stream[ChildEvent](math.inf)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()
