"""WHEP listeners served by one fan-out per shared encoder (gateway/egress/webrtc_fanout.py).

Real aiortc listeners on loopback: what they hear, the RTP and RTCP they get (checked
below aiortc's decoder), and what happens when one vanishes without a DTLS close.
(The Chromium listener is in test_browser.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from audio_checks import active, assert_tone
from prometheus_client.parser import text_string_to_metric_families

from gateway.egress.encoders import EncodedPacket
from gateway.egress.webrtc import WebRTCEgress
from gateway.egress.webrtc_fanout import ListenerPath, WebRTCFanout, mid_extension, send
from gateway.rtp.packet import RtpPacket
from gateway.rtp.rtcp import unix_from_ntp
from gateway.webrtc import aiortc_patches
from gateway.webrtc.client import Listener, Publisher, ToneTrack

ROOT = Path(__file__).resolve().parent.parent


async def publish(gw, stream: str, freq: float) -> Publisher:
    pub = Publisher(gw.url, stream, ToneTrack(freq))
    await pub.negotiate()
    await pub.connected()
    return pub


class TappedListener(Listener):
    """A listener that also keeps the RTP headers and RTCP packets aiortc hands its
    receiver (after SRTP unprotect, before the jitter buffer and decoder)."""

    def __init__(self, base_url: str, stream: str, codecs: list[str] | None = None) -> None:
        super().__init__(base_url, stream, codecs)
        self.rtp: list[tuple[float, object]] = []  # (arrival time, aiortc RtpPacket)
        self.rtcp: list[tuple[float, object]] = []
        receiver = self.pc.getTransceivers()[0].receiver
        handle_rtp, handle_rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def on_rtp(packet, arrival_time_ms):  # type: ignore[no-untyped-def]
            self.rtp.append((time.time(), packet))
            await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

        async def on_rtcp(packet):  # type: ignore[no-untyped-def]
            self.rtcp.append((time.time(), packet))
            await handle_rtcp(packet)

        receiver._handle_rtp_packet = on_rtp
        receiver._handle_rtcp_packet = on_rtcp


async def listen(gw, stream: str, codecs: list[str] | None = None) -> TappedListener:
    lis = TappedListener(gw.url, stream, codecs)
    await lis.negotiate()
    await lis.connected()
    return lis


async def scrape(gw) -> dict[tuple, float]:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as r:
        text = await r.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def listeners_of(gw, stream: str) -> list[WebRTCEgress]:
    return [s for s in gw.gateway.sessions.values()
            if isinstance(s, WebRTCEgress) and s.stream.name == stream]


async def test_listeners_hear_the_tone_from_one_reader_of_the_encoder(gateway):
    """Four listeners, one fan-out: the encoder's ring has one reader, not four, and
    each listener still counts as a subscriber of the encoder."""
    pub = await publish(gateway, "one", 440)
    listeners = await asyncio.gather(*(listen(gateway, "one") for _ in range(4)))
    await asyncio.sleep(3)
    [encoder] = gateway.gateway.registry.get("one").egress.values()
    assert encoder.subscribers == 4
    assert encoder.packets.readers == 1, "listeners must not each read the encoder's ring"
    fanout = WebRTCFanout._by_encoder[encoder]
    assert len(fanout.paths) == 4
    for lis in listeners:
        assert_tone(active(lis.audio()), 440, min_seconds=1.5)
    sessions = listeners_of(gateway, "one")
    assert all(s.info().packets_sent > 100 for s in sessions)
    # what each listener received, payload bytes included, is in the metrics
    def heard() -> int:
        return sum(len(p.payload) for lis in listeners for _, p in lis.rtp)

    before = heard()
    metrics = await scrape(gateway)
    sent = metrics[("gateway_output_bytes_total", frozenset({("stream", "one"),
                                                            ("kind", "webrtc")}))]
    assert before <= sent <= heard() + 4 * 3 * 200  # and a few packets on their way
    for lis in listeners:
        await lis.delete()
    await asyncio.sleep(0.1)
    assert encoder not in WebRTCFanout._by_encoder and not fanout.paths
    assert gateway.gateway.registry.get("one").egress == {}
    await pub.delete()


async def test_opus_and_pcmu_listeners_on_one_stream_both_hear_it(gateway):
    pub = await publish(gateway, "mixed", 440)
    opus = await listen(gateway, "mixed", ["audio/opus"])
    pcmu = await listen(gateway, "mixed", ["audio/PCMU"])
    await asyncio.sleep(3.5)
    assert {s.info().codec for s in listeners_of(gateway, "mixed")} == {"opus", "PCMU"}
    assert len(gateway.gateway.registry.get("mixed").egress) == 2  # one fan-out each
    assert_tone(active(opus.audio()), 440, min_seconds=2)
    assert pcmu.sample_rate == 8000
    assert_tone(active(pcmu.audio(), rate=8000), 440, rate=8000, min_seconds=2)
    # each with its own negotiated payload type
    assert {p.payload_type for _, p in pcmu.rtp} == {0}
    assert {p.payload_type for _, p in opus.rtp} == {opus_pt(opus)}
    for client in (pub, opus, pcmu):
        await client.delete()


def opus_pt(lis: Listener) -> int:
    """Opus's payload type in the gateway's answer."""
    found = re.search(r"a=rtpmap:(\d+) opus/48000", lis.pc.remoteDescription.sdp)
    assert found
    return int(found.group(1))


async def test_rtp_headers_are_the_listeners_own(gateway):
    """The SSRC the answer announced, consecutive sequence numbers from the live head,
    a marker on the first packet only, and the mid extension BUNDLE receivers look for."""
    pub = await publish(gateway, "hdr", 440)
    await asyncio.sleep(0.5)
    a, b = await listen(gateway, "hdr"), await listen(gateway, "hdr")
    await asyncio.sleep(2)
    for lis in (a, b):
        packets = [p for _, p in lis.rtp]
        assert len(packets) > 60
        announced = {int(line.split()[0].split(":")[1])
                     for line in lis.pc.remoteDescription.sdp.splitlines()
                     if line.startswith("a=ssrc:")}
        assert {p.ssrc for p in packets} == announced
        seqs = [p.sequence_number for p in packets]
        assert all((y - x) % 65536 == 1 for x, y in zip(seqs, seqs[1:], strict=False))
        assert [p.marker for p in packets[:3]] == [1, 0, 0] and not any(
            p.marker for p in packets[1:])
        steps = {(y.timestamp - x.timestamp) % (1 << 32)
                 for x, y in zip(packets, packets[1:], strict=False)}
        assert steps == {960}, "20 ms of Opus per packet, no gap"
        assert {p.extensions.mid for p in packets} == {lis.pc.getTransceivers()[0].mid}
    assert a.rtp[0][1].ssrc != b.rtp[0][1].ssrc
    for client in (pub, a, b):
        await client.delete()


async def test_sender_reports_describe_the_packets_sent(gateway):
    """aiortc's RTCP loop still sends an SR about once a second, with the counts and the
    RTP/NTP timestamps of the packets the fan-out sent; receiver reports come back to the
    gateway's RTCRtpSender, so its getStats() has them (with a round-trip time)."""
    pub = await publish(gateway, "sr", 440)
    lis = await listen(gateway, "sr")
    [session] = listeners_of(gateway, "sr")
    sender = session.transceiver.sender
    deadline = time.monotonic() + 8
    remote = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        stats = await sender.getStats()
        remote = next((s for s in stats.values() if s.type == "remote-inbound-rtp"), None)
        if remote is not None and remote.roundTripTime is not None and len(lis.rtcp) >= 3:
            break
    assert remote is not None, "no receiver report reached the gateway's sender"
    assert remote.roundTripTime is not None and 0 <= remote.roundTripTime < 0.5
    assert remote.packetsLost == 0 and remote.packetsReceived > 50
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    # the fan-out brings the sender's counts up to date every 8th packet
    assert 0 <= session.info().packets_sent - outbound.packetsSent < 8

    reports = [(t, p) for t, p in lis.rtcp if type(p).__name__ == "RtcpSrPacket"]
    assert len(reports) >= 3
    ssrc = lis.rtp[0][1].ssrc
    for arrived, sr in reports:
        assert sr.ssrc == ssrc
        info = sr.sender_info
        # the report describes one of the last 8 packets sent before it (and what
        # arrived by then): their count, their bytes, the RTP and NTP time of the last
        sent = [p for t, p in lis.rtp if t <= arrived]
        assert 0 < info.packet_count and 0 <= len(sent) - info.packet_count < 8 + 3
        described = sent[info.packet_count - 1]
        assert info.rtp_timestamp == described.timestamp
        everything = [p for _, p in lis.rtp]
        assert info.octet_count == sum(len(p.payload) for p in everything[: info.packet_count])
        assert -0.01 < arrived - unix_from_ntp(info.ntp_timestamp) < 0.3
    for client in (pub, lis):
        await client.delete()


async def test_a_later_ice_nomination_moves_the_listeners_packets(gateway):
    """A controlling peer may nominate another candidate pair after the first (a browser
    switching networks); aioice then sends there, and so must the fan-out."""
    from aioice import Candidate
    from aioice.ice import CandidatePair

    pub = await publish(gateway, "moved", 440)
    lis = await listen(gateway, "moved")
    [session] = listeners_of(gateway, "moved")
    async with asyncio.timeout(5):
        while not lis.rtp:
            await asyncio.sleep(0.02)
    nominated = aiortc_patches.nominated_pairs(session.transceiver.sender.transport)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    try:
        # what aioice does on a USE-CANDIDATE for another succeeded pair
        other = Candidate(foundation="x", component=1, transport="udp", priority=1,
                          host="127.0.0.1", port=sink.getsockname()[1], type="host")
        nominated[1] = CandidatePair(nominated[1].protocol, other)
        await asyncio.sleep(0.5)
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(sink.recv(2048))
        rtp = [d for d in got if 127 < d[0] < 192 and not 191 < d[1] < 224]
        assert len(rtp) >= 15, f"{len(rtp)} packets at the newly nominated pair"
        assert {int.from_bytes(d[8:12], "big") for d in rtp} == {lis.rtp[0][1].ssrc}
    finally:
        sink.close()
    await pub.delete()
    await session.close("test over")
    await lis.pc.close()


LISTENER_SCRIPT = """
import asyncio, sys
from gateway.webrtc.aiortc_patches import set_host_addresses
from gateway.webrtc.client import Listener

async def main():
    set_host_addresses(["127.0.0.1"])
    lis = Listener(sys.argv[1], sys.argv[2])
    await lis.negotiate()
    await lis.connected()
    print("connected", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.fixture
def short_consent():
    aiortc_patches.set_consent_timing(0.2, 3)
    yield
    aiortc_patches.set_consent_timing(*aiortc_patches.CONSENT_DEFAULTS)


async def test_a_listener_that_vanishes_is_dropped_when_ice_consent_expires(
        gateway, short_consent, caplog):
    """A listener process killed outright (no DTLS close_notify, no DELETE) stops
    answering consent checks: its session ends, its fan-out slot goes, the others play on."""
    pub = await publish(gateway, "gone", 440)
    stay = await listen(gateway, "gone")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LISTENER_SCRIPT, gateway.url, "gone",
        stdout=asyncio.subprocess.PIPE, env=env)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"connected"
        await asyncio.sleep(0.5)
        assert len(listeners_of(gateway, "gone")) == 2
        [encoder] = gateway.gateway.registry.get("gone").egress.values()
        fanout = WebRTCFanout._by_encoder[encoder]
        assert len(fanout.paths) == 2
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await proc.wait()
        while len(listeners_of(gateway, "gone")) > 1:
            assert time.monotonic() - killed < 10, "vanished listener still there after 10 s"
            await asyncio.sleep(0.1)
        gone_after = time.monotonic() - killed
        assert gone_after > 0.5, "dropped before consent could have expired"
        assert len(fanout.paths) == 1 and encoder.subscribers == 1
        heard = len(stay.audio())
        await asyncio.sleep(1.5)
        assert len(stay.audio()) - heard > 48000, "the remaining listener must play on"
        assert_tone(active(stay.audio()), 440)
        complaints = [r.getMessage() for r in caplog.records
                      if r.levelno >= logging.WARNING and r.name.startswith("gateway.egress")]
        assert not complaints, "the closed ICE socket is an expected end, not a failure"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for client in (pub, stay):
        await client.delete()


def test_mid_extension_is_a_one_byte_header_extension():
    block = mid_extension(4, "0")
    assert block == b"\xbe\xde\x00\x01" + bytes([0x40]) + b"0\x00\x00"
    packet = RtpPacket.parse(b"\x90\x6f\x00\x01" + bytes(8) + block + b"payload")
    assert packet.extension == (0xBEDE, bytes([0x40]) + b"0\x00\x00")
    assert packet.payload == b"payload"
    assert mid_extension(None, "0") == b"" and mid_extension(4, None) == b""
    with pytest.raises(ValueError):
        mid_extension(15, "0")


def test_one_listeners_failed_send_costs_nobody_else_a_packet(caplog):
    """The per-packet path with stand-in listeners: a full socket buffer drops that
    listener's packet, a closed socket or an unexpected error counts as its error (the
    unexpected one logged once), and the listeners after it still get every packet."""
    sent: dict[int, list[tuple[bytes, tuple]]] = {}

    def sender(ssrc: int, error: Exception | None = None):  # type: ignore[no-untyped-def]
        def sendto(data: bytes, address: tuple) -> None:
            if error is not None:
                raise error
            sent.setdefault(ssrc, []).append((data, address))
        return sendto

    reports: list[tuple] = []
    failures = {1: BlockingIOError(), 2: OSError(errno.EBADF, "closed"),
                3: PermissionError(errno.EPERM, "firewall")}
    paths = [ListenerPath(111 if ssrc != 5 else 0, ssrc, mid_extension(1, "0") if ssrc != 5
                          else b"", lambda d: d + b"TAG", sender(ssrc, failures.get(ssrc)),
                          ("127.0.0.1", 1000 + ssrc),
                          lambda *counts: reports.append(counts))
             for ssrc in range(1, 6)]
    for k in range(16):
        send(paths, EncodedPacket(timestamp=960 * k, payload=b"opus" * 20))
    by_ssrc = {p.ssrc: p for p in paths}
    assert (by_ssrc[1].drops, by_ssrc[1].errors, by_ssrc[1].packets) == (16, 0, 0)
    assert (by_ssrc[2].errors, by_ssrc[3].errors) == (16, 16)
    assert set(sent) == {4, 5}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "00000003" in warnings[0] and "firewall" in warnings[0]
    for ssrc in (4, 5):
        path, datagrams = by_ssrc[ssrc], sent[ssrc]
        assert path.packets == 16 and path.octets == 16 * 80
        packets = [RtpPacket.parse(d[:-3]) for d, _ in datagrams]
        assert {a for _, a in datagrams} == {("127.0.0.1", 1000 + ssrc)}
        assert all(d.endswith(b"TAG") for d, _ in datagrams)  # every one went through SRTP
        assert [p.marker for p in packets] == [True] + [False] * 15
        assert {p.payload_type for p in packets} == {111 if ssrc == 4 else 0}
        assert [(p.timestamp - path.ts_offset) % (1 << 32) for p in packets] == \
            [960 * k for k in range(16)]
        assert all(p.ssrc == ssrc and p.payload == b"opus" * 20 for p in packets)
        assert (packets[0].extension is None) == (ssrc == 5)
    # the sender-report counts, every 8th packet of each listener that sent
    assert [(octets, count) for _, _, octets, count in reports] == \
        [(8 * 80, 8), (8 * 80, 8), (16 * 80, 16), (16 * 80, 16)]


def test_a_listener_whose_ice_closed_gets_no_more_packets(caplog):
    """Consent expired: aioice forgets the nominated pair. On the shared UDP port the
    socket stays open for the other sessions, so the fan-out itself stops sending to the
    listener (RFC 7675), quietly, before DTLS closes the session."""
    sent: list[bytes] = []
    pairs = {1: object()}
    path = ListenerPath(111, 7, b"", lambda d: d, lambda d, a: sent.append(d),
                        ("127.0.0.1", 9), lambda *counts: None, pairs)
    for k in range(8):
        send([path], EncodedPacket(timestamp=960 * k, payload=b"opus"))
    assert len(sent) == 8
    pairs.clear()  # noticed by the refresh every 8th packet: within 160 ms
    for k in range(8, 32):
        send([path], EncodedPacket(timestamp=960 * k, payload=b"opus"))
    assert len(sent) == 16 and path.errors == 16
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
