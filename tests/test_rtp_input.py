"""Plain RTP in: GStreamer and a hostile sender feed a stream that a WHEP listener hears."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import numpy as np
import pytest
from audio_checks import active, assert_tone
from conftest import free_port, need_program
from stepping import until
from test_fanout import l16, l16_listener
from test_rtp_output import api

from gateway.codecs.g711 import ulaw_encode
from gateway.core.audio import FRAME_SECONDS
from gateway.ingress import playout
from gateway.ingress.rtp import _bind_pair
from gateway.webrtc.client import Listener


async def listen(gw, stream: str) -> Listener:
    lis = Listener(gw.url, stream)
    await lis.negotiate()
    await lis.connected()
    return lis


async def add_input(gw, stream: str, **body) -> dict:
    status, data = await api(gw, "POST", f"/api/v1/streams/{stream}/inputs", body)
    assert status == 201, data
    return data


async def test_gstreamer_rtp_source_is_heard_by_a_webrtc_listener(gateway):
    need_program("gst-launch-1.0")
    port = free_port(socket.SOCK_DGRAM)
    await add_input(gateway, "gst-in", type="rtp", port=port, codec="PCMU")
    lis = await listen(gateway, "gst-in")
    proc = await asyncio.create_subprocess_exec(
        "gst-launch-1.0", "-q", "audiotestsrc", "freq=660", "is-live=true", "num-buffers=250",
        "samplesperbuffer=160", "!", "audio/x-raw,rate=8000,channels=1", "!", "mulawenc", "!",
        "rtppcmupay", "pt=0", "!", "udpsink", "host=127.0.0.1", f"port={port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    await asyncio.sleep(0.3)
    assert_tone(active(lis.audio()), 660)
    _, info = await api(gateway, "GET", "/api/v1/streams/gst-in/inputs")
    assert info["inputs"][0]["packets"] >= 240 and info["inputs"][0]["malformed"] == 0
    await lis.delete()


def pcmu_tone(freq: float, seconds: float) -> list[bytes]:
    n = np.arange(int(8000 * seconds))
    pcm = (np.sin(2 * np.pi * freq * n / 8000) * 12000).astype(np.int16)
    return [ulaw_encode(pcm[i : i + 160]) for i in range(0, len(pcm) - 159, 160)]


#: The sender's 20 ms are this far out of step with the gateway's ticks, so its 0-15 ms of
#: jitter moves packets across a tick (as it does in real time, whatever the phase).
PHASE = 0.010


def hostile_schedule(payloads: list[bytes], seed: int = 7) -> tuple[list, dict]:
    """(seconds from the start, datagram) of each packet: 5 % loss, reordering, 0-15 ms
    jitter, duplicates and some garbage datagrams; and what was done to them."""
    rng = random.Random(seed)
    schedule = []
    stats = {"lost": 0, "reordered": 0, "garbage": 0}
    for i, payload in enumerate(payloads):
        header = struct.pack("!BBHII", 0x80, 0, (40000 + i) & 0xFFFF, 1234 + i * 160, 0xCAFE)
        if rng.random() < 0.05:
            stats["lost"] += 1
            continue
        when = i * 0.020 + PHASE + rng.uniform(0, 0.015)
        if rng.random() < 0.03:
            when += 0.025  # arrives after its successor
            stats["reordered"] += 1
        schedule.append((when, header + payload))
        if rng.random() < 0.02:
            schedule.append((when + 0.001, header + payload))  # duplicate
        if rng.random() < 0.01:
            schedule.append((when + 0.002, bytes([0x12, 0x34, 0x56])))  # not RTP
            stats["garbage"] += 1
    schedule.sort(key=lambda item: item[0])
    return schedule, stats


async def send_by_tick(gw, input_id: str, port: int, schedule: list, ticks: int) -> None:
    """Step the clock ``ticks`` times; before each tick, send what the schedule has for the
    20 ms before it, and wait until the input has read it (an RTP packet or a malformed
    one): arrival times are the schedule's, quantized to ticks, on any machine."""
    rtp_input = gw.gateway.rtp_inputs[input_id]

    def read() -> int:
        return rtp_input.playout.jitter.stats.received + rtp_input.malformed

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for tick in range(ticks):
        for when, data in schedule:
            if tick * 0.020 <= when < (tick + 1) * 0.020:
                sock.sendto(data, ("127.0.0.1", port))
                sent += 1
        await until(lambda n=sent: read() == n)
        await gw.step(1)
    sock.close()


class MediaTime:
    """The playout's ``time`` module, reading media time: it measures delays in ticks."""

    def __init__(self, clock) -> None:  # type: ignore[no-untyped-def]
        self.clock = clock

    def monotonic(self) -> float:
        return self.clock.ticks * FRAME_SECONDS


def longest_gap_ms(audio: np.ndarray, rate: int = 48000) -> float:
    """Longest run of 5 ms blocks that are near-silent, in ms."""
    block = rate // 200
    blocks = audio[: len(audio) // block * block].reshape(-1, block).astype(float)
    quiet = np.sqrt((blocks**2).mean(axis=1)) < 300
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * 5.0


async def test_lossy_jittery_reordering_source_stays_continuous(stepped_gateway, monkeypatch):
    gw = stepped_gateway
    monkeypatch.setattr(playout, "time", MediaTime(gw.clock))
    port = free_port(socket.SOCK_DGRAM)
    created = await add_input(gw, "rough", type="rtp", port=port, codec="PCMU")
    sink = await l16_listener(gw, "rough")
    schedule, stats = hostile_schedule(pcmu_tone(440, 6.0))
    await send_by_tick(gw, created["id"], port, schedule, 310)
    audio = active(l16(sink.drain()))
    tone = audio[: int(5.5 * 48000)]
    assert_tone(tone, 440)
    gap = longest_gap_ms(tone[48000 // 2 :])
    assert gap <= 20, f"a {gap:.0f} ms gap in concealed audio"
    _, info = await api(gw, "GET", f"/api/v1/streams/rough/inputs/{created['id']}")
    assert info["malformed"] == stats["garbage"] > 0
    assert info["delay_ms_max"] <= 100, info  # arrival to play: 5 ticks at most
    assert stats["lost"] * 0.5 <= info["lost"] <= stats["lost"], info  # duplicates: no less
    sink.close()


async def test_a_sender_that_sends_a_quarter_second_at_once_loses_nothing(stepped_gateway,
                                                                        monkeypatch):
    """``ffmpeg -re`` reads its input in 256 ms chunks and sends each chunk's packets at
    once: 13 packets of 20 ms every 260 ms here. They are early, never late: the input
    holds them (before, it held 10 and dropped the rest, then ran dry: 89-93 of 407
    packets late from the real ffmpeg)."""
    gw = stepped_gateway
    monkeypatch.setattr(playout, "time", MediaTime(gw.clock))
    port = free_port(socket.SOCK_DGRAM)
    created = await add_input(gw, "bursty", type="rtp", port=port, codec="PCMU")
    sink = await l16_listener(gw, "bursty")
    schedule = [(i // 13 * 0.260 + PHASE,
                 struct.pack("!BBHII", 0x80, 0, i, i * 160, 0xF00) + payload)
                for i, payload in enumerate(pcmu_tone(440, 6.0))]
    await send_by_tick(gw, created["id"], port, schedule, 310)
    tone = active(l16(sink.drain()))[: int(5.5 * 48000)]
    assert_tone(tone, 440)
    assert longest_gap_ms(tone) == 0
    _, info = await api(gw, "GET", f"/api/v1/streams/bursty/inputs/{created['id']}")
    assert (info["late"], info["lost"]) == (0, 0), info
    assert info["concealed"] <= 5, info  # only after the end, before it counts as paused
    sink.close()


def test_the_burst_allowance_is_bounded_whatever_the_packets():
    """300 ms of packets, counted as at least 10 ms each: one 1-sample packet (anyone who
    reaches the port can send one) must not let the buffer hold minutes."""
    from gateway.codecs.spec import L16_48K
    from gateway.ingress.rtp import BURST_S

    p = playout.Playout({L16_48K.payload_type: L16_48K}, max_depth=5, burst_s=BURST_S)
    assert p.jitter.capacity == 15  # 300 ms of 20 ms packets
    p.push(0, L16_48K.payload_type, b"\x00\x01", 1)
    p.pull()
    assert p.jitter.capacity == 30  # 300 ms of 10 ms: the most it holds
    p.push(1, L16_48K.payload_type, bytes(2 * 960 * 9), 1)  # 180 ms packets
    for _ in range(10):
        p.pull()
    assert p.jitter.capacity == 10  # twice the maximum depth: 1.8 s of them, as before
    assert playout.Playout({}, max_depth=5).jitter.capacity == 10  # no allowance: as before


async def test_retransmitted_packets_are_not_negative_loss(stepped_gateway):
    """Nothing is dropped, but every 10th packet comes again 100 ms later (after it was
    played): the input reports 0 lost and 0 late, never -1 per copy."""
    gw = stepped_gateway
    port = free_port(socket.SOCK_DGRAM)
    created = await add_input(gw, "copies", type="rtp", port=port, codec="PCMU")
    sink = await l16_listener(gw, "copies")
    schedule = []
    for i, payload in enumerate(pcmu_tone(440, 2.0)):
        seq = (65500 + i) & 0xFFFF  # wraps
        packet = struct.pack("!BBHII", 0x80, 0, seq, i * 160, 0xBEEF) + payload
        schedule.append((i * 0.020 + 0.001, packet))
        if i % 10 == 5:
            schedule.append((i * 0.020 + 0.101, packet))
    await send_by_tick(gw, created["id"], port, sorted(schedule, key=lambda x: x[0]), 110)
    _, info = await api(gw, "GET", f"/api/v1/streams/copies/inputs/{created['id']}")
    assert info["packets"] == len(schedule) and (info["lost"], info["late"]) == (0, 0), info
    assert_tone(active(l16(sink.drain()))[: int(1.8 * 48000)], 440, min_seconds=1.5)
    sink.close()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"type": "rtp", "port": 5006, "codec": "GSM"}, 400),
        ({"type": "rtp", "port": 70000, "codec": "PCMU"}, 400),
        ({"type": "rtp", "codec": "PCMU"}, 400),
        ({"type": "rtp", "port": 5006, "codec": "PCMU", "payload_type": 300}, 400),
    ],
)
async def test_bad_input_requests(gateway, body, status):
    code, data = await api(gateway, "POST", "/api/v1/streams/x/inputs", body)
    assert code == status, data


async def test_port_in_use_is_a_conflict(gateway):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    code, data = await api(gateway, "POST", "/api/v1/streams/x/inputs",
                           {"type": "rtp", "port": port, "codec": "PCMU"})
    taken.close()
    assert code == 409 and "in use" in data["detail"]


async def test_malformed_packets_are_counted_and_dropped(gateway):
    port = free_port(socket.SOCK_DGRAM)
    created = await add_input(gateway, "junk", type="rtp", port=port, codec="PCMU")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk = [
        b"",  # empty datagram
        b"\x00",  # too short
        b"\x40" + bytes(20),  # RTP version 1
        b"\x8f" + bytes(11),  # 15 CSRCs announced, none present
        b"\xa0\x00" + bytes(10) + b"\xff",  # padding longer than the packet
    ]
    for data in junk:
        sock.sendto(data, ("127.0.0.1", port))
    sock.close()
    await asyncio.sleep(0.2)
    _, info = await api(gateway, "GET", f"/api/v1/streams/junk/inputs/{created['id']}")
    assert info["malformed"] == len(junk)
    assert gateway.gateway.registry.get("junk").source is not None


async def test_input_described_by_the_senders_sdp(gateway):
    import aiohttp

    port = free_port(socket.SOCK_DGRAM)
    sdp = f"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
    async with aiohttp.ClientSession() as http:
        url = f"{gateway.url}/api/v1/streams/fromsdp/inputs"
        headers = {"Content-Type": "application/sdp"}
        async with http.post(url, data=sdp, headers=headers) as r:
            body = await r.json()
            assert r.status == 201, body
        async with http.post(url, data="v=0\r\n", headers=headers) as r:
            assert r.status == 400 and "no audio section" in (await r.json())["detail"]
    assert body["port"] == port and body["codecs"] == {"8": "PCMA"}


def test_any_port_pair_puts_rtp_on_the_even_port():
    """Port 0 with RTCP: a free pair, RTP even and RTCP the odd port above (RFC 3550 §11)."""
    for _ in range(10):
        rtp, rtcp = _bind_pair("127.0.0.1", 0, with_rtcp=True)
        port = rtp.getsockname()[1]
        assert port % 2 == 0 and rtcp is not None and rtcp.getsockname()[1] == port + 1
        rtp.close()
        rtcp.close()
