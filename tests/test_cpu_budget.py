"""Pacing work that can wait to a container CPU quota (gateway/core/cpu_budget.py), on
fake clocks, and the SIP UDP socket that keeps reading while its handling is paced."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest
from stepping import until as wait_for

from gateway.core.cpu_budget import (
    CALM_S,
    LIMIT,
    MAX_WAIT_S,
    MEDIA_MAX_WAIT_S,
    MEDIA_SLICE_S,
    MEDIA_TURNS,
    NEXT_TURN_S,
    RETRY_S,
    TICK_GUARD_S,
    TURN_S,
    WINDOW_S,
    CpuBudget,
)
from gateway.sip import udp as udp_module
from gateway.sip.udp import BatchedUdp


class Clocks:
    """Wall time and the process's CPU time, moved by the test."""

    def __init__(self) -> None:
        self.t = 100.0
        self.cpu = 5.0

    def run(self, seconds: float, cores: float) -> None:
        """``seconds`` pass with the process using ``cores``, sampled every 10 ms."""
        for _ in range(round(seconds / 0.01)):
            self.t += 0.01
            self.cpu += 0.01 * cores
            yield


def budget_on(clocks: Clocks, cores: float) -> CpuBudget:
    return CpuBudget(now=lambda: clocks.t, cpu=lambda: clocks.cpu, turn_s=None,
                     cores=lambda: cores)


def test_without_a_quota_below_one_core_nothing_waits():
    clocks = Clocks()
    budget = budget_on(clocks, 1.0)
    for _ in clocks.run(0.3, cores=1.0):
        assert budget.wait_s() == 0.0
    assert not budget.paced and budget.waits == 0


def test_slices_run_while_the_last_window_leaves_room_in_the_quota():
    clocks = Clocks()
    budget = budget_on(clocks, 0.5)
    for _ in clocks.run(0.3, cores=0.5 * 0.8):  # the media at 80 % of the quota
        assert budget.wait_s() == 0.0
    assert budget.used_s() == pytest.approx(0.5 * 0.8 * WINDOW_S)


def test_a_slice_waits_once_the_window_reaches_the_limit_and_runs_when_it_falls():
    clocks = Clocks()
    budget = budget_on(clocks, 0.5)
    for _ in clocks.run(0.2, cores=0.5 * 0.8):
        budget.wait_s()
    clocks.t += 0.001
    clocks.cpu += 0.5 * LIMIT * WINDOW_S  # a burst: the window is now over the limit
    assert budget.wait_s() == RETRY_S
    assert budget.waits == 1
    for _ in clocks.run(WINDOW_S + 0.02, cores=0.5 * 0.5):  # the burst leaves the window
        pass
    assert budget.wait_s() == 0.0


def test_a_piece_of_work_that_can_wait_longer_waits_for_the_burst_and_for_room():
    """heap.Keeper's step (a few ms in one piece) waits until paced work stopped waiting
    and, under a quota, until it fits under the limit with the last window's CPU."""
    clocks = Clocks()
    budget = budget_on(clocks, 0.5)
    for _ in clocks.run(0.2, cores=0.5 * 0.6):  # the media at 60 % of the quota
        budget.wait_s()
    room = 0.5 * LIMIT * WINDOW_S - budget.used_s()  # 15 ms
    assert budget.has_room(room - 0.001) and not budget.has_room(room + 0.001)
    clocks.t += 0.001
    clocks.cpu += 0.5 * LIMIT * WINDOW_S  # a burst
    assert budget.wait_s() == RETRY_S
    for _ in clocks.run(WINDOW_S + 0.02, cores=0.5 * 0.6):  # the burst left the window...
        pass
    assert budget.wait_s() == 0.0
    assert not budget.has_room(0.001)  # ... but paced work waited less than CALM_S ago
    for _ in clocks.run(CALM_S, cores=0.5 * 0.6):
        pass
    assert budget.has_room(0.005)
    assert budget_on(Clocks(), 1.0).has_room(1.0)  # no quota below a core: only bursts


def test_paced_work_still_runs_a_slice_every_max_wait_when_the_media_fills_the_quota():
    clocks = Clocks()
    budget = budget_on(clocks, 0.5)
    ran = []
    for _ in clocks.run(1.0, cores=0.5):  # overloaded: no room at all
        if budget.wait_s() == 0.0:
            ran.append(clocks.t)
    gaps = [b - a for a, b in zip(ran, ran[1:], strict=False)]
    assert len(ran) >= 1.0 / MAX_WAIT_S - 2
    assert max(gaps) <= MAX_WAIT_S + 0.011


def test_a_long_quiet_gap_is_averaged_not_mistaken_for_a_burst():
    clocks = Clocks()
    budget = budget_on(clocks, 0.5)
    budget.wait_s()
    clocks.t += 5.0
    clocks.cpu += 5.0 * 0.1  # 0.1 core over 5 s: no sample in between
    assert budget.used_s() == pytest.approx(0.1 * WINDOW_S)
    assert budget.wait_s() == 0.0


async def test_paced_work_of_all_kinds_shares_a_millisecond_per_turn_of_the_loop():
    """Twenty call set-ups, a SIP slice and an API slice that arrive in the same turn
    must not all run before the tick due next: those that would start more than TURN_S
    after the turn's first paced slice wait for a later turn."""
    clocks = Clocks()
    budget = CpuBudget(now=lambda: clocks.t, cpu=lambda: clocks.cpu)
    assert budget.wait_s() == 0.0  # the first slice of this turn
    clocks.t += TURN_S * 0.9
    assert budget.wait_s() == 0.0  # another kind, still within the turn's share
    clocks.t += TURN_S * 0.2
    assert budget.wait_s() == NEXT_TURN_S  # the rest: a later turn
    await asyncio.sleep(0)
    assert budget.wait_s() == 0.0  # a new turn
    assert budget.waits == 0  # no quota: these are turns, not waits for the quota


class Refusing(CpuBudget):
    """A budget with no room until the test opens it."""

    def __init__(self) -> None:
        super().__init__(turn_s=None, cores=lambda: 0.5)
        self.open = False

    def wait_s(self) -> float:
        if self.open:
            return 0.0
        self.waits += 1
        return 0.01


async def test_udp_keeps_reading_while_paced_and_drops_only_past_its_backlog(monkeypatch):
    """While the quota paces request handling, datagrams are still read (so the kernel's
    small buffer does not overflow) and handled in order once there is room; what
    arrives beyond MAX_BACKLOG is dropped and counted."""
    monkeypatch.setattr(udp_module, "MAX_BACKLOG", 150)
    handled: list[bytes] = []
    budget = Refusing()
    udp = await BatchedUdp.open("127.0.0.1", 0, False,
                                lambda data, *_: handled.append(data), budget)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for i in range(200):
            client.sendto(b"%d" % i, udp.sockname)
            if i % 50 == 49:
                await asyncio.sleep(0.02)  # the loop reads between the groups
        await asyncio.sleep(0.05)
        assert handled == [] and udp.backlog == 150 and udp.dropped == 50
        budget.open = True
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(handled) == 150:
                break
    udp.close()
    assert handled == [b"%d" % i for i in range(150)]
    assert budget.waits > 0


async def test_waiters_queue_and_only_the_first_one_looks_at_the_budget():
    """Many waiting coroutines (call set-ups, API reads) must not each poll the budget
    every half millisecond: they wait in line, in order, and one polls."""
    budget = CpuBudget()
    asks = 0
    real = budget.wait_s

    def counted() -> float:
        nonlocal asks
        asks += 1
        return real()

    budget.wait_s = counted  # type: ignore[method-assign]
    order: list[int] = []

    async def unit(i: int) -> None:
        await budget.turn()
        order.append(i)
        end = time.perf_counter() + 0.0006  # a slice's work
        while time.perf_counter() < end:
            pass

    await asyncio.gather(*(unit(i) for i in range(20)))
    assert order == list(range(20))
    assert asks <= 40, asks  # each waiter asks about once or twice; polling: 110 here


async def test_api_reads_wait_for_a_turn_and_health_checks_and_writes_do_not():
    """GET /api/... and /metrics start when the budget gives them a turn; a health check,
    a WHIP/WHEP POST or any write must not queue behind a flood of paced work."""
    from aiohttp import ClientSession, web
    from aiohttp.test_utils import TestServer

    from gateway.web.turns import paced_reads_middleware

    class Held(CpuBudget):
        def __init__(self) -> None:
            super().__init__(turn_s=None, cores=lambda: 0.5)
            self.open = False

        def wait_s(self) -> float:
            return 0.0 if self.open else 0.01

    budget = Held()
    app = web.Application(middlewares=[paced_reads_middleware(budget)])
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    for path in ("/api/v1/stats", "/metrics", "/healthz"):
        app.router.add_get(path, ok)
    app.router.add_post("/whep/x", ok)
    async with TestServer(app) as server, ClientSession() as http:
        async def status(method: str, path: str) -> int:
            async with http.request(method, server.make_url(path)) as response:
                return response.status

        assert await status("GET", "/healthz") == 200
        assert await status("POST", "/whep/x") == 200
        held = [asyncio.ensure_future(status("GET", p)) for p in ("/api/v1/stats", "/metrics")]
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in held)  # waiting for a turn
        budget.open = True
        assert await asyncio.gather(*held) == [200, 200]


async def test_paced_work_waits_for_the_ticks_own_work_and_not_just_before_a_tick():
    """At 80 % load a 20 ms period has ~4 ms to spare: paced work run while a tick's work
    (recorders, cluster links) is queued, or across the next tick, delays every listener's
    packet. So it waits MEDIA_TURNS turns of the loop after a tick, and does not start
    within TICK_GUARD_S of the next one."""
    until = [0.010]
    budget = CpuBudget(turn_s=None, until_tick=lambda: until[0])
    assert budget.wait_s() == 0.0
    until[0] = TICK_GUARD_S / 2
    assert budget.wait_s() == pytest.approx(TICK_GUARD_S / 2 + NEXT_TURN_S)  # past the tick
    until[0] = 0.019
    budget.ticked()
    for _ in range(MEDIA_TURNS):
        assert budget.wait_s() == NEXT_TURN_S  # the tick's work is queued
        await asyncio.sleep(0)
    assert budget.wait_s() == 0.0
    assert budget.waits == 0  # nothing waited for the quota
    assert budget.has_room(0.004)  # heap.Keeper's step: room before the next tick ...
    until[0] = 0.006
    assert not budget.has_room(0.004)  # ... or not


async def test_a_sip_flood_is_handled_in_the_media_clocks_spare_time():
    """A flood stops before the datagram that would start just before the next tick,
    even within one turn of the budget, and goes on after the tick's work."""
    until = [math.inf]
    handled: list[bytes] = []

    def on_datagram(data: bytes, *_: object) -> None:
        handled.append(data)
        if len(handled) == 3:
            until[0] = TICK_GUARD_S / 2  # the next tick is due soon

    budget = CpuBudget(turn_s=None, until_tick=lambda: until[0])
    udp = await BatchedUdp.open("127.0.0.1", 0, False, on_datagram, budget)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for i in range(6):
            client.sendto(b"%d" % i, udp.sockname)
        await wait_for(lambda: udp.backlog == 3)
        await asyncio.sleep(0.02)
        assert handled == [b"0", b"1", b"2"] and udp.backlog == 3
        until[0] = 0.019
        budget.ticked()
        await wait_for(lambda: len(handled) == 6)
    udp.close()
    assert handled == [b"%d" % i for i in range(6)]


def test_when_the_media_leave_no_spare_time_paced_work_still_gets_a_slice():
    """An overloaded gateway whose ticks' work always ends just before the next tick: SIP
    and the API still progress, a MEDIA_SLICE_S slice every MEDIA_MAX_WAIT_S."""
    clocks = Clocks()
    budget = CpuBudget(now=lambda: clocks.t, turn_s=None, until_tick=lambda: 0.001)
    assert budget.wait_s() > 0
    clocks.t += MEDIA_MAX_WAIT_S * 0.9
    assert budget.wait_s() > 0
    clocks.t += MEDIA_MAX_WAIT_S * 0.11
    assert budget.wait_s() == 0.0  # waited long enough: a slice
    clocks.t += MEDIA_SLICE_S * 0.9
    assert budget.media_wait_s() == 0.0  # still within it
    clocks.t += MEDIA_SLICE_S * 0.2
    assert budget.media_wait_s() > 0  # then it waits again, from now
    clocks.t += MEDIA_MAX_WAIT_S * 0.9
    assert budget.media_wait_s() > 0


def test_an_overload_slice_ends_when_a_tick_falls_due():
    """A slice forced by overload stops when a tick falls due (running on would delay it
    by the rest of the slice); the next one comes after another MEDIA_MAX_WAIT_S, due
    tick or not: a loop a period behind always has one due."""
    clocks = Clocks()
    until = [0.001]  # the tick's work is done; the next one is near
    budget = CpuBudget(now=lambda: clocks.t, turn_s=None, until_tick=lambda: until[0])
    assert budget.wait_s() > 0
    clocks.t += MEDIA_MAX_WAIT_S * 1.1
    assert budget.wait_s() == 0.0  # starved: a slice
    until[0] = -0.001
    assert budget.media_wait_s() > 0  # a tick is due: the slice ends
    clocks.t += MEDIA_MAX_WAIT_S * 0.9
    assert budget.media_wait_s() > 0
    clocks.t += MEDIA_MAX_WAIT_S * 0.2
    assert budget.media_wait_s() == 0.0  # starved again, the tick still due: run anyway
