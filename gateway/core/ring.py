"""Bounded single-writer, many-reader ring buffer: the forwarding core's only queue.

The writer never waits: it overwrites the oldest slot. Each reader owns a cursor.
A reader that falls more than ``capacity`` items behind is moved to the live head
and the items it missed are counted, so one slow reader never slows the writer or
any other reader. Readers waiting for data share one future per ring, resolved on
each write: no polling, and the cost of a write does not grow with the reader count.

A reader may instead be *driven*: the writer calls it right after each write (the media
clock's tick hands a frame to the shared encoders, and their packets to the fan-outs, in
the tick's own callback, with no task wake-up in between). It reads with
``read_nowait`` like any reader, so cursors, skips and lag mean the same for both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class RingClosed(Exception):
    """The ring's writer has finished; no more items will arrive."""


class Ring(Generic[T]):
    """Fixed-capacity ring of items numbered by a monotonically growing index."""

    __slots__ = ("capacity", "_slots", "_head", "_waiter", "_closed", "readers", "_cursors",
                 "_skipped_closed", "on_demand", "_driven")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self.capacity = capacity
        self._slots: list[T | None] = [None] * capacity
        self._head = 0  # index the next write will get
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.readers = 0
        self._cursors: set[RingReader[T]] = set()  # every open reader, passive ones included
        self._skipped_closed: dict[str, int] = {}  # what closed readers skipped, by kind
        #: Called when the count of (non-passive) readers goes from 0 to 1 or from 1 to 0.
        self.on_demand: Callable[[], None] | None = None
        self._driven: tuple[Callable[[], None], ...] = ()  # called after each write

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
        if self._driven:
            self._drive(self._driven)
        return index

    def advance(self, count: int, filler: T) -> None:
        """Move the head ``count`` items on without delivering them: media time that
        passed while the event loop stalled. Readers at the head move with it (they
        missed nothing they could have had); readers behind keep their lag, and the
        slots passed over hold ``filler``."""
        old = self._head
        for index in range(old, old + min(count, self.capacity)):
            self._slots[index % self.capacity] = filler
        self._head = old + count
        for reader in self._cursors:
            if reader.cursor == old:
                reader.cursor = self._head

    def close(self) -> None:
        """Tell readers the stream of items has ended."""
        self._closed = True
        self._wake()
        driven, self._driven = self._driven, ()  # nothing is written after the end
        self._drive(driven)  # they read RingClosed, as a waiting reader does

    def reader(self, passive: bool = False, kind: str = "reader") -> RingReader[T]:
        """A new reader positioned at the live head (late joiners hear what comes next).

        A ``passive`` reader (the stream's own analysers) is not counted in ``readers``,
        so it does not keep an otherwise idle stream alive. ``kind`` (encoder, webrtc,
        rtp, recording, analysis) labels its skips in ``skipped_by_kind``.
        """
        return RingReader(self, passive, kind)

    def drive(self, pump: Callable[[], None]) -> None:
        """Call ``pump`` after every write and on close (it reads its own cursor with
        ``read_nowait``). It runs in the writer's call: it must be quick and not wait.
        On a ring already closed it is called once, at once, to read the end."""
        if self._closed:
            self._drive((pump,))
        else:
            self._driven = (*self._driven, pump)

    def undrive(self, pump: Callable[[], None]) -> None:
        self._driven = tuple(p for p in self._driven if p != pump)

    @staticmethod
    def _drive(pumps: tuple[Callable[[], None], ...]) -> None:
        for pump in pumps:  # a tuple: a pump may drive or undrive meanwhile
            try:
                pump()
            except Exception:  # noqa: BLE001 - one broken consumer, not the writer
                log.exception("ring consumer %r failed", pump)

    def skipped_by_kind(self) -> dict[str, int]:
        """Items readers lost by being moved to the live head, by reader kind: the open
        readers' counts plus the closed ones' (kept here, so the sums never go down)."""
        skipped = dict(self._skipped_closed)
        for reader in list(self._cursors):
            skipped[reader.kind] = skipped.get(reader.kind, 0) + reader.skipped
        return skipped

    def behind(self, ignore: Collection[object] = ()) -> int:
        """Open readers (not in ``ignore``) that have not read the newest item."""
        head = self._head
        return sum(1 for r in self._cursors if r.cursor != head and r not in ignore)

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

    __slots__ = ("ring", "kind", "cursor", "skipped", "delivered", "_open", "_counted")

    def __init__(self, ring: Ring[T], passive: bool = False, kind: str = "reader") -> None:
        self.ring = ring
        self.kind = kind
        self.cursor = ring.head
        self.skipped = 0
        self.delivered = 0
        self._open = True
        self._counted = not passive
        if self._counted:
            ring.readers += 1
            if ring.readers == 1 and ring.on_demand is not None:
                ring.on_demand()
        ring._cursors.add(self)

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
            ring = self.ring
            ring._cursors.discard(self)
            ring._skipped_closed[self.kind] = ring._skipped_closed.get(self.kind, 0) + self.skipped
            if self._counted:
                ring.readers -= 1
                if ring.readers == 0 and ring.on_demand is not None:
                    ring.on_demand()
