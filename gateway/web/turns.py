"""API work that walks every session, stream or call takes turns with the media clock.

The event loop runs every callback that is ready before it looks at its timers again. Ten
listing requests that arrive together would each describe and encode hundreds of
sessions in that one turn of the loop, and the media clock's tick would wait behind all
of them (20-40 ms at 350 sessions: docs/benchmarks.md, "Timing under load"). Slicing each
request alone is not enough: the slices of ten requests are ready together, so they run
in the same turn again.

Work done through :class:`Turns` is cut into slices of about ``slice_s`` of CPU, and one
slice, across all requests, runs per turn of the loop: a burst of requests waits its
turn (first come, first served); the clock does not. Each slice also asks the gateway's
CPU budget (gateway/core/cpu_budget.py), shared with SIP: it waits for a later turn when
other work that can wait already ran in this one, and under a container CPU quota for
room in the quota's period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel

from ..core.cpu_budget import CpuBudget
from .reply import json_of

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
R = TypeVar("R")

#: CPU per slice. A tick's own work plus one slice stays well inside the 5 ms a tick may
#: be late (issue 14); 1 ms is 10-30 session descriptions.
SLICE_S = 0.001


class Turns:
    """One per application: the queue API work waits in for its slices."""

    def __init__(self, slice_s: float = SLICE_S, budget: CpuBudget | None = None) -> None:
        self.slice_s = slice_s
        self.budget = budget or CpuBudget()
        self._lock = asyncio.Lock()  # FIFO: requests are served in arrival order

    async def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, yielding to the loop whenever a slice's time
        is used up (``items`` may be walked across yields: pass a copy of a live dict)."""
        out: list[R] = []
        clock = time.perf_counter
        async with self._lock:
            await self.budget.turn()
            deadline = clock() + self.slice_s
            for item in items:
                out.append(fn(item))
                if clock() > deadline:
                    await asyncio.sleep(0)
                    await self.budget.turn()
                    deadline = clock() + self.slice_s
        return out

    async def call(self, fn: Callable[[], R]) -> R:
        """``fn()`` as one slice of its own (it should cost about one slice)."""
        async with self._lock:
            await asyncio.sleep(0)  # not in the turn of the slice before it
            await self.budget.turn()
            return fn()

    async def reply_with_list(self, model: BaseModel, field: str, items: Iterable[T],
                              describe: Callable[[T], BaseModel]) -> web.Response:
        """``model`` as JSON with its list ``field`` (its last field, left empty in
        ``model``) holding ``describe(item)`` for each item: the same bytes as encoding the
        whole model in one go, described and encoded a slice at a time."""
        head = json_of(model)
        empty = b'"' + field.encode() + b'":[]}'
        if not head.endswith(empty):
            raise ValueError(f"{field!r} is not the empty last field of {type(model).__name__}")
        parts = await self.map(lambda item: json_of(describe(item)), items)
        body = b"".join((head[:-2], b",".join(parts), b"]}"))
        return web.Response(body=body, content_type="application/json")


def paced_reads_middleware(budget: CpuBudget):  # type: ignore[no-untyped-def]
    """API reads and /metrics start when the CPU budget gives them a turn (their
    handlers' own work before the first slice: request checks, small replies built in one
    go). Health checks, WHIP/WHEP and every write are not held back."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET" and (request.path.startswith("/api/")
                                        or request.path == "/metrics"):
            await budget.turn()
        return await handler(request)

    return middleware
