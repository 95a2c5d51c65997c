"""Wake the media clock ahead of the event loop's queue.

asyncio runs, in each turn of its loop, every callback that was ready when the turn
began, then looks at its timers; a timer that falls due meanwhile waits for all of them.
At 80 % load the media clock's tick lands in the middle of such a queue more often than
not (aiortc's per-listener RTCP and consent callbacks, datagrams, paced work), and
waits for the whole queue: 5-15 ms in bench/tick_lateness.py, with no single callback
over 2 ms. Here the loop's ready queue itself checks, each time the loop takes the next
callback, whether a clock's deadline has passed, and if so hands out that clock's
wake-up first: the tick waits for the callback that is running, not for the queue.

It reaches into asyncio's ``BaseEventLoop._ready``: a deque that ``_run_once`` empties
with ``popleft``, the same in Python 3.11, 3.12 and 3.13 (behind forty 1 ms callbacks a
wake-up ran 0.4-0.6 ms after its deadline on each). On a loop without one (uvloop, a
future asyncio), ``wait_until`` is a plain timer, as before.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from typing import Any

_now = time.monotonic  # asyncio's own loop.time()


class _ReadyQueue(deque):  # type: ignore[type-arg]
    """The loop's ready queue, with the clocks' deadlines in it (earliest first)."""

    def __init__(self, items: deque) -> None:  # type: ignore[type-arg]
        super().__init__(items)
        self.deadlines: list[tuple[float, int, asyncio.Future[None]]] = []

    def popleft(self) -> Any:
        deadlines = self.deadlines
        if deadlines and _now() >= deadlines[0][0]:
            woken = deadlines.pop(0)[2]
            if not woken.done():
                queued = len(self)
                woken.set_result(None)  # appends the clock task's wake-up on the right,
                if len(self) > queued:  # which runs now, ahead of the queue (a thread's
                    return self.pop()  # call_soon_threadsafe just then would go instead)
        return super().popleft()


def _queue(loop: asyncio.AbstractEventLoop) -> _ReadyQueue | None:
    ready = getattr(loop, "_ready", None)
    if isinstance(ready, _ReadyQueue):
        return ready
    if type(ready) is not deque:
        return None
    queue = _ReadyQueue(ready)
    loop._ready = queue  # type: ignore[attr-defined]
    return queue


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_until(deadline: float) -> None:
    """Sleep until ``deadline`` (event-loop time); once it has passed, resume before the
    callbacks already queued. A timer wakes it too, when the loop has nothing to run."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    timer = loop.call_at(deadline, _wake, future)
    queue = _queue(loop)
    entry = (deadline, id(future), future)
    if queue is not None:
        bisect.insort(queue.deadlines, entry)
    try:
        await future
    finally:
        timer.cancel()
        if queue is not None and entry in queue.deadlines:
            queue.deadlines.remove(entry)
