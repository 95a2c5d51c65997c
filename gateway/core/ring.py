"""Bounded single-writer, many-reader ring buffer: the forwarding core's only queue.

The writer never waits: it overwrites the oldest slot. Each reader owns a cursor.
A reader that falls more than ``capacity`` items behind is moved to the live head
and the items it missed are counted, so one slow reader never slows the writer or
any other reader. Readers waiting for data share one future per ring, resolved on
each write: no polling, and the cost of a write does not grow with the reader count.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class RingClosed(Exception):
    """The ring's writer has finished; no more items will arrive."""


class Ring(Generic[T]):
    """Fixed-capacity ring of items numbered by a monotonically growing index."""

    __slots__ = ("capacity", "_slots", "_head", "_waiter", "_closed", "readers")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self.capacity = capacity
        self._slots: list[T | None] = [None] * capacity
        self._head = 0  # index the next write will get
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.readers = 0

    @property
    def head(self) -> int:
        """Index of the next item to be written (= number of items written so far)."""
        return self._head

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, item: T) -> int:
        """Store ``item``, wake every waiting reader, and return its index. Never blocks."""
        if self._closed:
            raise RingClosed("write to a closed ring")
        index = self._head
        self._slots[index % self.capacity] = item
        self._head = index + 1
        self._wake()
        return index

    def close(self) -> None:
        """Tell readers the stream of items has ended."""
        self._closed = True
        self._wake()

    def reader(self, passive: bool = False) -> RingReader[T]:
        """A new reader positioned at the live head (late joiners hear what comes next).

        A ``passive`` reader (the stream's own analysers) is not counted in ``readers``,
        so it does not keep an otherwise idle stream alive.
        """
        return RingReader(self, passive)

    def get(self, index: int) -> T:
        """The item at ``index``; the caller must ensure it has not been overwritten."""
        item = self._slots[index % self.capacity]
        assert item is not None
        return item

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        """A future resolved by the next write or by close()."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter


class RingReader(Generic[T]):
    """One consumer's cursor into a ring."""

    __slots__ = ("ring", "cursor", "skipped", "delivered", "_open", "_counted")

    def __init__(self, ring: Ring[T], passive: bool = False) -> None:
        self.ring = ring
        self.cursor = ring.head
        self.skipped = 0
        self.delivered = 0
        self._open = True
        self._counted = not passive
        if self._counted:
            ring.readers += 1

    @property
    def lag(self) -> int:
        """How many written items this reader has not consumed yet."""
        return self.ring.head - self.cursor

    def seek_head(self) -> None:
        """Jump to the live head without counting a skip (a consumer starting late)."""
        self.cursor = self.ring.head

    def read_nowait(self) -> tuple[int, T] | None:
        """The next item and its index, or None if the reader is at the head.

        A reader overrun by more than the capacity jumps to the head; the jump is
        counted in ``skipped``.
        """
        ring = self.ring
        lag = ring.head - self.cursor
        if lag == 0:
            if ring.closed:
                raise RingClosed("ring closed")
            return None
        if lag > ring.capacity:
            self.skipped += lag
            self.cursor = ring.head
            return None
        index = self.cursor
        self.cursor = index + 1
        self.delivered += 1
        return index, ring.get(index)

    async def read(self) -> tuple[int, T]:
        """Wait for and return the next item and its index."""
        while True:
            got = self.read_nowait()
            if got is not None:
                return got
            # shield: a cancelled reader must not cancel the future other readers share
            await asyncio.shield(self.ring.wait())

    def close(self) -> None:
        if self._open:
            self._open = False
            if self._counted:
                self.ring.readers -= 1
