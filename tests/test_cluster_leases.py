"""Leases and the node board against a real nats-server (the embedded one)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from gateway.cluster.leases import Leases, NodeBoard
from gateway.cluster.server import EmbeddedNats


@pytest.fixture
async def nats_server():
    server = EmbeddedNats()
    await server.start()
    yield server
    await server.stop()


async def _js(server):
    nc = await nats.connect(server.url)
    return nc, nc.jetstream()


async def test_one_holder_per_key_and_release_frees_it(nats_server):
    nc_a, js_a = await _js(nats_server)
    nc_b, js_b = await _js(nats_server)
    a, b = Leases(js_a, "t_streams", ttl=3.0), Leases(js_b, "t_streams", ttl=3.0)
    assert await a.acquire("studio~1", {"node": "A"}) is None
    assert await b.acquire("studio~1", {"node": "B"}) == {"node": "A"}
    assert await a.acquire("studio~1", {"node": "A", "kind": "whip"}) is None  # re-entrant
    assert await b.read_all() == {"studio~1": {"node": "A"}}
    await a.release("studio~1")
    assert await b.acquire("studio~1", {"node": "B"}) is None
    assert await a.read("studio~1") == {"node": "B"}
    await nc_a.close()
    await nc_b.close()


async def test_a_holder_that_stops_renewing_loses_the_key_within_ttl(nats_server):
    nc_a, js_a = await _js(nats_server)
    nc_b, js_b = await _js(nats_server)
    a, b = Leases(js_a, "t_lapse", ttl=2.0), Leases(js_b, "t_lapse", ttl=2.0)
    assert await a.acquire("s", {"node": "A"}) is None
    for _ in range(4):  # renewed for 4 s: still A's
        await asyncio.sleep(1.0)
        assert await a.renew() == []
    assert await b.acquire("s", {"node": "B"}) == {"node": "A"}
    await nc_a.close()  # A dies
    start = time.monotonic()
    while await b.acquire("s", {"node": "B"}) is not None:
        await asyncio.sleep(0.1)
    assert time.monotonic() - start < 3.0
    await nc_b.close()


async def test_a_holder_whose_lease_was_taken_is_told(nats_server):
    nc_a, js_a = await _js(nats_server)
    nc_b, js_b = await _js(nats_server)
    lost = []
    a, b = Leases(js_a, "t_lost", ttl=1.0), Leases(js_b, "t_lost", ttl=1.0)
    assert await a.acquire("s", {"node": "A"}, on_lost=lambda n, v: lost.append((n, v))) is None
    await asyncio.sleep(2.5)  # A was cut off longer than the ttl; B took it
    assert await b.acquire("s", {"node": "B"}) is None
    assert await a.renew() == ["s"]
    assert lost == [("s", {"node": "B"})] and "s" not in [k for k in a.held]
    await nc_a.close()
    await nc_b.close()


async def test_leases_come_back_after_nats_loses_the_bucket(nats_server):
    nc, js = await _js(nats_server)
    a = Leases(js, "t_restart", ttl=3.0)
    assert await a.acquire("s", {"node": "A"}) is None
    await js.delete_key_value("t_restart")  # what a NATS restart without storage does
    assert await a.renew() == []
    assert await a.read("s") == {"node": "A"}
    await nc.close()


async def test_node_board_lists_live_nodes(nats_server):
    nc, js = await _js(nats_server)
    board = NodeBoard(js, "t_nodes", ttl=1.0)
    await board.open()
    await board.post("n1", {"listeners": 3})
    await board.post("n2", {"listeners": 5})
    assert await board.nodes() == {"n1": {"listeners": 3}, "n2": {"listeners": 5}}
    await asyncio.sleep(0.6)
    await board.post("n2", {"listeners": 6})
    await asyncio.sleep(0.7)  # n1 stopped posting
    assert await board.nodes() == {"n2": {"listeners": 6}}
    await nc.close()
