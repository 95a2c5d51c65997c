"""Two gateways with one configuration, joined by NATS: what the configuration asks for
happens once in the cluster, not once per node."""

from __future__ import annotations

import asyncio

import pytest
from stepping import RtpSink

from gateway.cluster.server import EmbeddedNats


@pytest.fixture
async def nats_url():
    server = EmbeddedNats()
    await server.start()
    yield server.url
    await server.stop()


async def _until(predicate, timeout: float = 6.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_automatic_recording_runs_on_one_node_and_moves_when_it_stops(
        nats_url, gateway_factory):
    config = {"streams": {"declared": ["rec1"]}, "recording": {"auto": ["rec*"]}}
    a = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "A"}, **config)
    b = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "B"}, **config)
    gateways = [a, b]

    def recording() -> list:
        return [gw for gw in gateways if gw.gateway.recordings.active]

    await _until(lambda: len(recording()) == 1)
    await asyncio.sleep(1.5)  # a beat or more later, still exactly one
    [first] = recording()
    assert len(first.gateway.recordings.active) == 1
    other = b if first is a else a
    gateways.remove(first)
    await first.runner.cleanup()  # that node stops: its lease is released
    await _until(lambda: bool(other.gateway.recordings.active))


async def test_a_declared_rtp_output_is_sent_by_one_node(nats_url, gateway_factory):
    sink = RtpSink()
    output = {"type": "rtp", "stream": "paging", "host": "127.0.0.1", "port": sink.port,
              "codec": "PCMU"}
    config = {"rtp": {"outputs": [output]}}
    await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "A"}, **config)
    await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "B"}, **config)
    await asyncio.sleep(2.0)
    ssrcs = {bytes(p[8:12]) for p in sink.drain()}
    assert len(ssrcs) == 1, f"{len(ssrcs)} senders of one declared output"
    sink.sock.close()


async def test_a_silence_alarm_is_raised_by_one_node(nats_url, gateway_factory):
    config = {"streams": {"declared": ["quiet"]}, "processing": {"silence_after_s": 0.5}}
    a = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "A"}, **config)
    b = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "B"}, **config)
    await asyncio.sleep(2.5)
    alarms = {name: [e for e in gw.gateway.events.recent if e["type"] == "silence"]
              for name, gw in (("A", a), ("B", b))}
    assert len(alarms["A"]) == 1 and alarms["B"] == [], alarms  # "A" sorts first


async def test_a_full_node_redirects_a_listener_to_a_node_with_room(nats_url, gateway_factory):
    from gateway.webrtc.client import Listener, Publisher, ToneTrack

    b = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "B"})
    b_url = b.url
    b.gateway.config.cluster.advertise_url = b_url
    a = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "A"},
                              webrtc={"max_sessions": 1})
    await asyncio.sleep(1.5)  # both have posted their load
    pub = Publisher(a.url, "tone", ToneTrack(440))
    await pub.negotiate()  # A's one session
    await pub.connected()
    lis = Listener(a.url, "tone")
    await lis.negotiate()  # A is full: 307 to B, where the listener is placed
    await lis.connected()
    assert lis.location.endswith(".B") and len(b.gateway.sessions) == 1
    await asyncio.sleep(2.0)
    from audio_checks import active, assert_tone

    assert_tone(active(lis.audio()), 440, min_seconds=1.0)
    assert await lis.delete() == 200  # sent to A, which forwards it to B
    assert b.gateway.sessions == {}
    await pub.delete()


async def test_outputs_and_inputs_are_reached_from_any_node(nats_url, gateway_factory):
    import aiohttp
    from conftest import free_port

    a = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "A"})
    b = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "B"})
    sink = RtpSink()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{a.url}/api/v1/streams/s/outputs",
                             json={"type": "rtp", "host": "127.0.0.1", "port": sink.port}) as r:
            assert r.status == 201
            output = await r.json()
        async with http.post(f"{a.url}/api/v1/streams/s/inputs",
                             json={"type": "rtp", "port": free_port(2), "codec": "PCMU"}) as r:
            assert r.status == 201
            rtp_input = await r.json()
        assert output["id"].endswith(".A") and rtp_input["id"].endswith(".A")
        base = f"{b.url}/api/v1/streams/s"  # all through B, which holds neither
        async with http.get(f"{base}/outputs/{output['id']}") as r:
            assert r.status == 200 and (await r.json())["id"] == output["id"]
        async with http.get(f"{base}/outputs/{output['id']}/sdp") as r:
            assert r.status == 200 and "m=audio" in await r.text()
        async with http.get(f"{base}/inputs/{rtp_input['id']}") as r:
            assert r.status == 200 and (await r.json())["port"] == rtp_input["port"]
        async with http.delete(f"{base}/inputs/{rtp_input['id']}") as r:
            assert r.status == 204
        async with http.delete(f"{base}/outputs/{output['id']}") as r:
            assert r.status == 204
        async with http.get(f"{base}/outputs/{output['id']}") as r:
            assert r.status == 404
    assert a.gateway.rtp_outputs.outputs == {} and a.gateway.rtp_inputs == {}
    sink.sock.close()


async def test_metrics_name_the_node(nats_url, gateway_factory):
    import aiohttp

    a = await gateway_factory(cluster={"nats_url": [nats_url], "node_name": "A"})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{a.url}/metrics") as r:
            text = await r.text()
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert series and all('node="A"' in line for line in series), series[:5]
    assert 'gateway_cluster_connected{node="A"} 1.0' in text
