"""Two cluster nodes in one process, one real nats-server: a stream published on node A is
heard through node B's ring, and only while B has a reader for it."""

from __future__ import annotations

import asyncio

import pytest
from audio_checks import assert_tone, step_tone
from stepping import GeneratedSender

from gateway.cluster.node import ClusterError, ClusterNode
from gateway.cluster.server import EmbeddedNats
from gateway.config import ClusterConfig
from gateway.core.registry import StreamRegistry

_RUNNING: list[tuple[StreamRegistry, ClusterNode]] = []


@pytest.fixture
async def nats_server():
    server = EmbeddedNats()
    await server.start()
    yield server
    while _RUNNING:  # a failed test leaves its nodes: stop them before the loop closes
        registry, node = _RUNNING.pop()
        await node.stop()
        await registry.stop()
    await server.stop()


async def _node(server: EmbeddedNats, name: str) -> tuple[StreamRegistry, ClusterNode]:
    registry = StreamRegistry()
    node = ClusterNode(ClusterConfig(nats_url=[server.url], lease_ttl_s=2.0), registry,
                       64000, name)
    registry.start()
    await node.start()
    _RUNNING.append((registry, node))
    return registry, node


async def _stop(*pairs):
    for pair in pairs:
        registry, node = pair
        _RUNNING.remove(pair)
        await node.stop()
        await registry.stop()


async def test_a_stream_owned_by_a_reaches_a_reader_on_b(nats_server):
    a = await _node(nats_server, "A")
    b = await _node(nats_server, "B")
    stream_a = a[0].get_or_create("studio")
    sender = GeneratedSender(step_tone([440]))
    assert await a[1].claim(stream_a, sender) is None
    stream_a.attach(sender)  # type: ignore[arg-type]

    stream_b = b[0].get_or_create("studio")
    await asyncio.sleep(0.5)
    assert stream_b.source is None and not a[1].publications  # no reader on B: nothing sent
    reader = stream_b.ring.reader()
    await asyncio.sleep(0.3)
    assert stream_b.source is not None and stream_b.source.kind == "cluster"
    frames = []
    while len(frames) < 150:  # 3 s
        _, frame = await reader.read()
        frames.append(frame)
    import numpy as np

    audio = np.concatenate(frames[25:])
    assert_tone(audio, 440, min_seconds=2.0)
    info = stream_b.source.info()
    assert info.lost == 0 and info.packets >= 125, info
    assert a[1].publications["studio"].info()["nodes"] == ["B"]

    reader.close()  # B's last reader leaves: B unsubscribes, A stops publishing
    await asyncio.sleep(0.2)
    assert stream_b.source is None
    await asyncio.sleep(3.5)
    await a[1]._beat_once()
    assert not a[1].publications
    await _stop(a, b)


async def test_one_publisher_per_stream_across_nodes(nats_server):
    a = await _node(nats_server, "A")
    b = await _node(nats_server, "B")
    sa, sb = a[0].get_or_create("x"), b[0].get_or_create("x")
    assert await a[1].claim(sa, GeneratedSender(step_tone([440]), "pub-a")) is None
    holder = await b[1].claim(sb, GeneratedSender(step_tone([440]), "pub-b"))
    assert holder is not None and holder["node"] == "A" and holder["session"] == "pub-a"
    await a[1].release(sa)
    assert await b[1].claim(sb, GeneratedSender(step_tone([440]), "pub-b")) is None
    await _stop(a, b)


async def test_a_dead_nodes_streams_lapse_within_the_lease(nats_server):
    a = await _node(nats_server, "A")
    b = await _node(nats_server, "B")
    sa, sb = a[0].get_or_create("x"), b[0].get_or_create("x")
    assert await a[1].claim(sa, GeneratedSender(step_tone([440]))) is None
    await asyncio.sleep(3.0)  # A renews: still A's
    assert (await b[1].claim(sb, GeneratedSender(step_tone([440]))))["node"] == "A"
    a[1]._beat.cancel()  # A stops renewing (as if killed)
    await a[1].nc.close()
    loop = asyncio.get_running_loop()
    start = loop.time()
    while await b[1].claim(sb, GeneratedSender(step_tone([440]))) is not None:
        await asyncio.sleep(0.1)
    assert loop.time() - start < 3.0
    await _stop(b)
    await a[0].stop()


async def test_refused_credentials_say_why(nats_server):
    registry = StreamRegistry()
    bad = ClusterNode(ClusterConfig(nats_url=["nats://127.0.0.1:1"]), registry, 64000, "X")
    with pytest.raises(ClusterError, match="cannot join the cluster"):
        await bad.start()


async def test_a_once_per_cluster_job_runs_on_one_node_and_moves_when_it_dies(nats_server):
    a = await _node(nats_server, "A")
    b = await _node(nats_server, "B")
    runs: list[str] = []

    def job(node: str):
        async def start():
            runs.append(f"start {node}")

        async def stop():
            runs.append(f"stop {node}")

        return start, stop

    a[1].once("record.x", *job("A"))
    await asyncio.sleep(0.3)
    b[1].once("record.x", *job("B"))
    await asyncio.sleep(1.5)
    assert runs == ["start A"]
    a[1]._beat.cancel()  # A dies
    await a[1].nc.close()
    for _ in range(50):
        if runs[-1] == "start B":
            break
        await asyncio.sleep(0.1)
    assert runs == ["start A", "start B"]
    await _stop(b)
    await a[0].stop()
