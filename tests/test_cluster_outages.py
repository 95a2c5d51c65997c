"""Two clustered gateways on loopback and one nats-server that goes away and comes back:
local streams play on, remote ones go silent (and say so), then resume by themselves."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np
import pytest
from audio_checks import assert_tone, rms_dbfs
from conftest import free_port
from peers.agent import gap_free_tone

from gateway.cluster.server import EmbeddedNats, find_binary
from gateway.webrtc.client import Listener, Publisher, ToneTrack


@pytest.fixture
async def nats_server():
    server = EmbeddedNats(port=free_port())
    await server.start()
    yield server
    await server.stop()


async def _node(gateway_factory, server: EmbeddedNats, name: str):
    return await gateway_factory(cluster={"nats_url": [server.url], "node_name": name})


async def _get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(url) as r:
            return r.status, await r.text()


def _frames(lis: Listener) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(lis.pts)
    return (np.array(lis.arrivals[:n]), np.array(lis.pts[:n]),
            np.concatenate(lis.chunks[:n]))


def _tone_back_at(lis: Listener, since: float, hold_s: float = 1.0) -> float | None:
    """When the listener's frames after ``since`` became tone and stayed so for
    ``hold_s`` (time.monotonic()), or None."""
    arrivals, _, audio = _frames(lis)
    loud = [rms_dbfs(audio[i * 960:(i + 1) * 960]) > -30 for i in range(len(arrivals))]
    need, run = int(hold_s * 50), 0
    for i, t in enumerate(arrivals):
        if t < since:
            continue
        run = run + 1 if loud[i] else 0
        if run >= need:
            return float(arrivals[i - need + 1])
    return None


def _filled_in(gw, name: str) -> int:
    """Frames the stream on ``gw`` had to fill in: silence, or concealment of its
    sender's late packets."""
    stream = gw.gateway.registry.streams[name]
    return stream.frames_silence + stream.source.playout.info().concealed


async def test_a_clustered_gateway_lists_an_empty_directory(nats_server, gateway_factory):
    """No stream anywhere in the cluster yet: the listing is empty, not a 500."""
    gw = await _node(gateway_factory, nats_server, "a")
    status, body = await _get(f"{gw.url}/api/v1/streams")
    assert status == 200 and json.loads(body) == {"streams": []}, body


async def test_a_gateway_that_starts_with_its_nats_cluster_waits_for_jetstream(
        gateway_factory, tmp_path):
    """Machines booting together: the gateway is up before its NATS cluster has a
    JetStream leader (one of three servers up: no meta group yet). It waits for one and
    starts, instead of refusing to start ("no usable JetStream")."""
    ports = [free_port() for _ in range(6)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in ports[3:])

    async def server(i: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            find_binary(), "-a", "127.0.0.1", "-p", str(ports[i]), "-n", f"s{i}",
            "--cluster_name", "c", "--cluster", f"nats://127.0.0.1:{ports[3 + i]}",
            "--routes", routes, "-js", "-sd", str(tmp_path / str(i)),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    servers = [await server(0)]
    try:
        starting = asyncio.create_task(gateway_factory(
            cluster={"nats_url": [f"nats://127.0.0.1:{ports[0]}"], "node_name": "a"}))
        await asyncio.sleep(2.0)
        assert not starting.done(), starting
        servers += [await server(1), await server(2)]  # the cluster forms
        gw = await asyncio.wait_for(starting, 20)
        assert gw.gateway.cluster.info()["connected"]
        status, _ = await _get(f"{gw.url}/api/v1/streams")
        assert status == 200
    finally:
        for proc in servers:
            proc.terminate()
            await proc.wait()


async def test_nats_restart_local_streams_play_on_remote_ones_resume(nats_server,
                                                                      gateway_factory):
    a = await _node(gateway_factory, nats_server, "a")
    b = await _node(gateway_factory, nats_server, "b")
    pub = Publisher(a.url, "live", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()
    here, there = Listener(a.url, "live"), Listener(b.url, "live")
    for lis in (here, there):
        await lis.negotiate()
        await lis.connected()
    await asyncio.sleep(2.0)
    assert_tone(np.concatenate(there.chunks[-50:]), 440, min_seconds=1.0)

    filled = _filled_in(a, "live")
    await asyncio.sleep(1.0)
    await nats_server.stop()
    stopped = time.monotonic()
    await asyncio.sleep(2.5)
    # During the outage: the API and /metrics answer at once, and say B's feed went silent.
    t0 = time.monotonic()
    status, body = await _get(f"{b.url}/api/v1/streams/live")
    assert status == 200 and time.monotonic() - t0 < 1.5, (status, body)
    assert json.loads(body)["sender"]["silences"] == 1, body
    status, metrics = await _get(f"{b.url}/metrics")
    assert status == 200
    assert 'gateway_cluster_feed_silences_total{node="b",stream="live"} 1.0' in metrics, \
        [line for line in metrics.splitlines() if "cluster" in line]
    status, _ = await _get(f"{a.url}/api/v1/streams")
    assert status == 200
    silent = [rms_dbfs(c) for c, t in zip(there.chunks, there.arrivals, strict=False)
              if stopped + 1.0 < t < stopped + 2.5]
    assert silent and max(silent) < -60, "B's listener should hear silence while NATS is down"

    await nats_server.start()
    restarted = time.monotonic()
    await asyncio.sleep(6.0)
    back = _tone_back_at(there, restarted)
    assert back is not None and back - restarted < 5.0, \
        f"B's listener heard the tone again {None if back is None else back - restarted} s " \
        "after NATS came back"
    print(f"B's listener heard the tone {back - restarted:.2f} s after NATS came back")
    # Full delivery: all but the frames A had to fill in itself (its publisher, in this
    # process, late on a busy test host) are the tone, in order and in time.
    why = gap_free_tone(*_frames(here), stopped - 1.0, time.monotonic() - 0.5, 440,
                        max_gap_s=0.5, origin_silence=_filled_in(a, "live") - filled)
    assert not why, f"the listener on the publisher's node, across the NATS restart: {why}"

    # The restarted server lost the directory (memory buckets): A re-created its lease.
    status, body = await _get(f"{b.url}/api/v1/streams")
    [live] = [s for s in json.loads(body)["streams"] if s["name"] == "live"]
    assert live["cluster"]["owner"] == "a", live
    second = Publisher(b.url, "live", ToneTrack(880))
    with pytest.raises(RuntimeError, match="409"):
        await second.negotiate()
    await second.pc.close()
    for lis in (here, there):
        await lis.delete()
    await pub.delete()
