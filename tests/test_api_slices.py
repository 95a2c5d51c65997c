"""Long session listings yield to the event loop, so the media clock keeps its ticks."""

from __future__ import annotations

import asyncio

from gateway.web import api


async def test_a_long_session_listing_lets_other_callbacks_run(monkeypatch):
    described: list[int] = []
    monkeypatch.setattr(api, "session_info", lambda request, n: described.append(n) or n)
    seen_between: list[int] = []

    async def tick() -> None:  # stands for the media clock's callback
        while len(described) < 100:
            seen_between.append(len(described))
            await asyncio.sleep(0)

    ticking = asyncio.create_task(tick())
    infos = await api.session_infos(None, list(range(100)))  # type: ignore[arg-type]
    await ticking
    assert infos == list(range(100))
    inside = [n for n in seen_between if 0 < n < 100]
    steps = [b - a for a, b in zip([0, *inside], [*inside, 100], strict=True)]
    assert inside and max(steps) <= api.SESSIONS_PER_SLICE, steps
