"""API work takes turns with the media clock: one slice of it per turn of the event loop,
across all requests, and the reply is the same bytes as encoding it in one go."""

from __future__ import annotations

import asyncio
import json

from loop_turns import LoopTurns
from pydantic import BaseModel

from gateway.web.reply import json_of
from gateway.web.turns import Turns


class Item(BaseModel):
    n: int
    name: str | None = None


class Listing(BaseModel):
    title: str
    items: list[Item]


async def test_a_sliced_list_reply_is_the_same_bytes_as_one_encoding():
    items = [Item(n=n, name=None if n % 3 else f"x{n}") for n in range(50)]
    turns = Turns(slice_s=0.0)  # a slice per item: the most splicing there can be
    for some in (items, items[:1], []):
        sliced = await turns.reply_with_list(Listing(title='a "b"', items=[]), "items",
                                             some, lambda i: i)
        assert sliced.body == json_of(Listing(title='a "b"', items=some))
        assert json.loads(sliced.body)["items"] == [i.model_dump() for i in some]


async def test_a_list_field_that_is_not_the_empty_last_one_is_refused():
    class Wrong(BaseModel):
        items: list[Item]
        title: str

    try:
        await Turns().reply_with_list(Wrong(items=[], title="t"), "items", [], lambda i: i)
    except ValueError as exc:
        assert "items" in str(exc)
    else:
        raise AssertionError("accepted a list field that is not last")


async def test_concurrent_requests_never_share_a_turn_and_timers_run_between_slices():
    loop = LoopTurns()
    turns = Turns(slice_s=0.0)
    slices: list[tuple[str, int]] = []
    await asyncio.gather(*(turns.map(lambda n, r=r: slices.append((r, loop.turn)) or n,
                                     range(8))
                           for r in "abc"))
    loop.stop()
    by_turn: dict[int, set[str]] = {}
    for request, t in slices:
        by_turn.setdefault(t, set()).add(request)
    assert all(len(requests) == 1 for requests in by_turn.values()), by_turn
    assert [r for r, _ in slices] == ["a"] * 8 + ["b"] * 8 + ["c"] * 8  # first come first
    # the clock's timer ran between slices: never two slices without a tick in between
    loop.assert_timer_ran_between(list(by_turn))
