"""RTCP receiver reports over WebRTC: a WHIP publisher hears its loss from the gateway, and
WHEP listeners' reports reach the API and their shared encoder's FEC (aiortc peers; the
loss is a seeded drop in the sending client, or on the gateway's way out to one listener)."""

from __future__ import annotations

import asyncio
import random

import numpy as np
from opus_fec import recovery_snr_db, vowel
from stepping import send_tone
from test_metrics import scrape, value
from test_rtp_output import api

from gateway.rtp.packet import is_rtcp
from gateway.webrtc.client import Listener, Publisher, ToneTrack

SIGNAL = vowel(12.0)


def frames(index: int) -> np.ndarray:
    start = (index * 960) % (len(SIGNAL) - 960)
    return SIGNAL[start:start + 960]


async def wait_for(condition, timeout: float = 15.0, step: float = 0.1):
    async with asyncio.timeout(timeout):
        while not (result := await condition()):
            await asyncio.sleep(step)
    return result


def session_of(gw, client) -> object:
    return gw.gateway.sessions[client.location.rsplit("/", 1)[-1]]


async def test_whip_publisher_hears_its_loss_in_receiver_reports(gateway):
    """10 % of the publisher's RTP packets never leave it (seeded): its sender's
    remote-inbound-rtp, filled from the gateway's RRs, says so, and its cumulative loss is
    what the gateway's playout counted at that report."""
    track = ToneTrack(440)
    pub = Publisher(gateway.url, "whip-rr", track)
    rng = random.Random(3)
    dropped = 0
    transport = pub.pc.getSenders()[0].transport
    send = transport._send_rtp

    async def lossy_send(data: bytes) -> None:
        nonlocal dropped
        if not is_rtcp(data) and rng.random() < 0.10:
            dropped += 1
            return
        await send(data)

    transport._send_rtp = lossy_send
    await pub.negotiate()
    await pub.connected()
    assert "useinbandfec=1" in pub.pc.remoteDescription.sdp  # RFC 7587: we can use FEC

    async def remote_inbound():
        stats = await pub.pc.getSenders()[0].getStats()
        found = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
        return found[0] if found and found[0].packetsLost > 5 else None

    report = await wait_for(remote_inbound)
    session = session_of(gateway, pub)
    assert 0 < report.packetsLost <= dropped
    assert report.packetsLost <= session.playout.reception.cumulative_lost
    assert session.playout.reports_sent >= 1
    # the fraction lost of each report's interval: aiortc reports every 0.5-1.5 s, and an
    # interval of 25-75 packets holds anything from 0 to 20 % of a 10 % loss, so average
    # the reports of 5 s
    fractions = {}
    for _ in range(20):
        await asyncio.sleep(0.25)
        report = await remote_inbound()
        fractions[report.timestamp] = report.fractionLost / 256
    assert len(fractions) >= 3, fractions
    assert 0.04 < sum(fractions.values()) / len(fractions) < 0.2, fractions
    _, info = await api(gateway, "GET", "/api/v1/streams/whip-rr")
    assert info["sender"]["receiver_reports"] >= 2
    assert info["sender"]["interarrival_jitter_ms"] is not None
    await pub.delete()


async def test_whep_listeners_reports_reach_the_api_and_the_encoders_fec(gateway):
    """Two listeners on one shared Opus encoder; the gateway drops 10 % of one listener's
    packets on their way out. Its reports show the loss in the API, the other's show none,
    and the encoder's packets then carry in-band FEC (frame n decodes from packet n + 1)."""
    send_tone(gateway, "whep-rr", frames)
    clean, lossy = Listener(gateway.url, "whep-rr"), Listener(gateway.url, "whep-rr")
    for lis in (clean, lossy):
        await lis.negotiate()
        await lis.connected()
    egress = session_of(gateway, lossy)
    await wait_for(lambda: asyncio.sleep(0, egress.path))
    rng = random.Random(5)
    sendto = egress.path.sendto

    def lossy_sendto(data: bytes, address: tuple) -> None:
        if not is_rtcp(data) and rng.random() < 0.10:
            return
        sendto(data, address)

    egress.path.sendto = lossy_sendto

    async def listeners():
        _, body = await api(gateway, "GET", "/api/v1/streams/whep-rr")
        sessions = {s["id"]: s for s in body["sessions"]}
        lossy_info = sessions[egress.id].get("reception")
        clean_info = sessions[session_of(gateway, clean).id].get("reception")
        if lossy_info and clean_info and lossy_info["reports"] >= 3:
            return body, lossy_info, clean_info
        return None

    body, lossy_info, clean_info = await wait_for(listeners)
    assert lossy_info["packets_lost"] > 5 and lossy_info["loss_smoothed"] > 0.02
    assert clean_info["packets_lost"] == 0 and clean_info["loss_smoothed"] == 0
    assert lossy_info["rtt_ms"] is None or lossy_info["rtt_ms"] >= 0
    (encoder,) = body["encoders"]
    assert encoder["expected_loss_percent"] >= 3
    samples = await scrape(gateway)
    labels = {"stream": "whep-rr", "kind": "webrtc"}
    assert value(samples, "gateway_listener_reported_loss_max", **labels) > 0.02
    assert value(samples, "gateway_listeners_reported_loss", le="0.0", **labels) == 1  # clean
    assert value(samples, "gateway_listeners_reported_loss", le="+Inf", **labels) == 2
    assert value(samples, "gateway_encoder_expected_loss_percent", stream="whep-rr",
                 codec="opus", bitrate="64000") == encoder["expected_loss_percent"]

    stream = gateway.gateway.registry.get("whep-rr")
    shared = next(iter(stream.egress.values()))
    reader = shared.subscribe(kind="test")
    packets = [(await reader.read())[1].payload for _ in range(150)]
    shared.unsubscribe(reader)
    assert recovery_snr_db(packets) > 12
    for lis in (clean, lossy):
        await lis.delete()
