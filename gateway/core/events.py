"""Gateway events (silence alarms, recording errors, DTMF, calls) for live feeds and logs.

Publishing never waits: every subscriber has a bounded queue, and a subscriber that does
not keep up loses its oldest events (counted), so a stalled browser tab cannot hold up
the gateway. The last few events are kept for subscribers that join later.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from typing import Any


class Subscription:
    def __init__(self, bus: EventBus, stream: str | None, size: int) -> None:
        self.bus = bus
        self.stream = stream  # only this stream's events, or all
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)
        self.dropped = 0

    def offer(self, event: dict[str, Any]) -> None:
        if self.stream is not None and event.get("stream") != self.stream:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()

    def close(self) -> None:
        self.bus.subscribers.discard(self)


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self.subscribers: set[Subscription] = set()
        self.recent: deque[dict[str, Any]] = deque(maxlen=history)
        self._ids = itertools.count(1)

    def publish(self, type_: str, stream: str | None = None, **fields: Any) -> dict[str, Any]:
        event = {"id": next(self._ids), "type": type_, "time": time.time(), **fields}
        if stream is not None:
            event["stream"] = stream
        self.recent.append(event)
        for sub in list(self.subscribers):
            sub.offer(event)
        return event

    def subscribe(self, stream: str | None = None, size: int = 256) -> Subscription:
        sub = Subscription(self, stream, size)
        self.subscribers.add(sub)
        return sub
