"""RED (RFC 2198) over WebRTC: a Chromium publisher sends it, listeners that offer it
get it (built once per packet by the fan-out), the others plain Opus."""

from __future__ import annotations

import asyncio
import random
import re

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from audio_checks import active, assert_tone
from conftest import need_program
from lossy_webrtc import with_red
from test_browser import CHROMIUM, chromium, text_becomes, wait_until, write_tone_wav
from test_webrtc_fanout import TappedListener, listen, listeners_of, opus_pt, publish, scrape

from gateway.codecs.spec import OPUS
from gateway.codecs.transcode import make_decoder
from gateway.ingress.webrtc import PacketTap, WebRTCIngress
from gateway.rtp.red import RedBlock, parse_red
from gateway.webrtc.client import Listener

pytestmark = [pytest.mark.timeout(90)]


def publisher_of(gw, stream: str) -> WebRTCIngress:
    source = gw.gateway.registry.streams[stream].source
    assert isinstance(source, WebRTCIngress)
    return source


def drop_some_packets(monkeypatch, share: float, seed: int) -> list[int]:
    """Every WHIP publisher's packets, after SRTP, reach the playout with ``share`` of
    them dropped at random (seeded): the sequence numbers of those dropped."""
    rng = random.Random(seed)
    dropped: list[int] = []
    add = PacketTap.add

    def lossy_add(tap, packet):  # type: ignore[no-untyped-def]
        if rng.random() < share:
            dropped.append(packet.sequence_number)
            return False, None
        return add(tap, packet)

    monkeypatch.setattr(PacketTap, "add", lossy_add)
    return dropped


@pytest.mark.peer("chromium")
@pytest.mark.parametrize("red", [True, False])
async def test_chromium_publishes_red_and_the_gateway_recovers_lost_packets(
        gateway_factory, tmp_path, monkeypatch, red):
    """Chromium offers RED after Opus; the gateway answers it first, so Chromium sends
    each packet with a copy of the previous one. With 8 % of its packets dropped, a loss
    whose successor arrived is played from that copy (after the first, which grows the
    buffer by a packet), not concealed. With ``webrtc.red = false`` every loss is."""
    need_program(CHROMIUM)
    gateway = await gateway_factory(webrtc={"red": red})
    dropped = drop_some_packets(monkeypatch, 0.08, seed=2198)
    wav = write_tone_wav(tmp_path / "tone440.wav", 440)
    async with chromium(tmp_path, wav) as page:
        await page.goto(f"{gateway.url}/publish?stream=red-mic")
        await page.click("#start")
        await text_becomes(page, "#status", "publishing")
        pub = publisher_of(gateway, "red-mic")
        listener = Listener(gateway.url, "red-mic")
        await listener.negotiate()
        await listener.connected()
        await asyncio.sleep(8)
        info = pub.info()
        await page.click("#stop")
        await text_becomes(page, "#status", "stopped")
    assert_tone(active(listener.audio()), 440)
    await listener.delete()
    drops = set(dropped)
    assert len(drops) >= 20 and info.packets > 300
    print(f"red={red}: {len(drops)} dropped, {info}")
    assert info.red is red and info.red_malformed == 0 and info.unknown_payload == 0
    if not red:
        assert info.red_recovered == 0 and info.concealed >= info.lost >= len(drops) - 2
        return
    recoverable = {s for s in drops if (s + 1) % 65536 not in drops}
    assert len(recoverable) - 2 <= info.red_recovered <= len(recoverable)
    labels = frozenset({("stream", "red-mic"), ("kind", "webrtc")})
    metrics = await scrape(gateway)
    assert metrics[("gateway_sender_red_recovered_packets_total", labels)] == info.red_recovered
    assert metrics[("gateway_sender_lost_packets_total", labels)] == info.lost
    # concealed: the losses no copy covered, one tick to grow the buffer (the first copy
    # that came too late), and one or two more should a loaded machine's timing need it
    assert info.concealed <= info.lost - info.red_recovered + 3
    # the buffer grows a packet or two for late copies, and gives them back after a
    # calm spell: read at the end of the run it may be back at one packet
    assert info.jitter_target_ms in (20, 40, 60)


# -- egress: RED to listeners that offer it ----------------------------------------------
class RedListener(TappedListener):
    """An aiortc listener whose offer includes RED. aiortc itself knows no RED: its
    transport is told to hand RED packets to the receiver anyway, whose tap keeps them
    (aiortc then drops them as an unknown payload type)."""

    async def negotiate(self, token=None, http=None) -> None:  # type: ignore[no-untyped-def]
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer = with_red(self.pc.localDescription.sdp)
        async with aiohttp.ClientSession() as session, session.post(
                self.url, data=self.offer, headers={"Content-Type": "application/sdp"}) as r:
            body = await r.text()
            assert r.status == 201, body
            self.location = r.headers["Location"]
        self.answer = body
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    async def connected(self, timeout: float = 10.0) -> None:
        await super().connected(timeout)
        receiver = self.pc.getTransceivers()[0].receiver
        router = receiver.transport._rtp_router
        router.payload_type_table.setdefault(63, set()).add(receiver)


async def test_a_listener_that_offers_red_gets_red_and_one_that_does_not_plain_opus(gateway):
    """Both from one encoder and one fan-out: the RED listener's packets carry the Opus
    packet the plain listener gets as their primary and the one before it as the
    redundant block (timestamp offset 960); both decode to the 440 Hz tone."""
    pub = await publish(gateway, "red-out", 440)
    red_lis = RedListener(gateway.url, "red-out")
    await red_lis.negotiate()
    await red_lis.connected()
    plain = await listen(gateway, "red-out")
    await asyncio.sleep(3)
    assert "a=rtpmap:63 red/48000/2" in red_lis.answer
    assert re.search(r"m=audio \d+ \S+ 63 ", red_lis.answer), "RED is answered first"
    assert re.search(r"a=fmtp:63 (\d+)/\1\r\n", red_lis.answer)
    sessions = {s.path.payload_type: s for s in listeners_of(gateway, "red-out")}
    assert {pt: s.info().red for pt, s in sessions.items()} == {63: True, opus_pt(plain): False}
    [encoder] = gateway.gateway.registry.get("red-out").egress.values()
    assert encoder.packets.readers == 1 and encoder.subscribers == 2

    red_packets = [p for _, p in red_lis.rtp]
    assert len(red_packets) > 100 and {p.payload_type for p in red_packets} == {63}
    parsed = [parse_red(p.payload) for p in red_packets]
    opus = opus_pt(red_lis)
    assert {r.payload_type for r in parsed} == {opus}
    primaries = [r.primary for r in parsed]
    for (p0, before), (p1, red) in zip(
            zip(red_packets, parsed, strict=True), zip(red_packets[1:], parsed[1:], strict=True),
            strict=False):
        # the previous packet, as far back as its timestamp is: 960 unless the media
        # clock jumped ahead on a loaded machine; none past the 14-bit offset's reach
        offset = (p1.timestamp - p0.timestamp) % (1 << 32)
        assert red.redundant == ([RedBlock(offset, opus, before.primary)]
                                 if offset < 1 << 14 else []), offset
    gaps = sum((b.timestamp - a.timestamp) % (1 << 32) != 960
               for a, b in zip(red_packets, red_packets[1:], strict=False))
    assert gaps <= 3, f"{gaps} of {len(red_packets)} packets are not 20 ms after the last"
    # the plain listener got the same Opus packets (it joined later: a later stretch)
    plain_payloads = [p.payload for _, p in plain.rtp]
    assert plain_payloads and set(plain_payloads) <= set(primaries) | set(
        p.payload for p in red_packets[-5:])
    start = primaries.index(plain_payloads[0])
    assert primaries[start : start + 50] == plain_payloads[:50]
    # the primaries, and the redundancy alone, decode to the tone
    for stream in (primaries, [r.redundant[0].data for r in parsed[1:] if r.redundant]):
        decoder = make_decoder(OPUS)
        audio = np.concatenate([decoder.decode(p) for p in stream])
        assert_tone(active(audio), 440, min_seconds=2)
    assert_tone(active(plain.audio()), 440, min_seconds=2)
    sent = sessions[63].info().packets_sent
    assert sent >= len(red_packets) and sessions[63].counters().bytes > sum(
        len(p) for p in primaries)
    for client in (pub, red_lis, plain):
        await client.delete()


async def test_no_red_for_listeners_when_it_is_off(gateway_factory):
    gateway = await gateway_factory(webrtc={"red": False})
    pub = await publish(gateway, "no-red", 440)
    lis = RedListener(gateway.url, "no-red")
    await lis.negotiate()
    await lis.connected()
    await asyncio.sleep(1)
    assert "red/48000" not in lis.answer
    assert {p.payload_type for _, p in lis.rtp} == {opus_pt(lis)}
    [session] = listeners_of(gateway, "no-red")
    assert session.info().red is False
    for client in (pub, lis):
        await client.delete()


#: The listen page's inbound audio stream and its codec, from getStats().
INBOUND_JS = """async () => {
  const stats = await pc.getStats();
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      const codec = stats.get(s.codecId);
      return JSON.parse(JSON.stringify({...s, mimeType: codec && codec.mimeType}));
    }
  }
  return null;
}"""


@pytest.mark.peer("chromium")
@pytest.mark.parametrize("red", [True, False])
async def test_chromium_listener_gets_red_and_conceals_less_of_a_lossy_path(
        gateway_factory, tmp_path, red):
    """Chromium's listen page offers RED (after Opus), and the gateway sends it. 8 % of
    the packets to it are dropped: with RED Chromium's NetEq plays most of them from
    the next packet's copy (concealing little, discarding the copies of packets it got);
    with ``webrtc.red = false`` it conceals nearly every loss."""
    need_program(CHROMIUM)
    gateway = await gateway_factory(webrtc={"red": red})
    pub = await publish(gateway, "red-chromium", 440)
    async with chromium(tmp_path) as page:
        await page.goto(f"{gateway.url}/listen?stream=red-chromium")
        await page.click("#play")
        await text_becomes(page, "#status", "playing")
        [session] = listeners_of(gateway, "red-chromium")
        await wait_until(lambda: session.path is not None, 5, "the listener to send")
        rng = random.Random(2198)
        protect = session.path.protect

        def lossy_protect(packet: bytes) -> bytes:
            if rng.random() < 0.08:
                raise BlockingIOError  # the fan-out counts it as a drop and moves on
            return protect(packet)

        session.path.protect = lossy_protect
        await asyncio.sleep(8)
        inbound = await page.evaluate(INBOUND_JS)
        await page.wait_for_function("document.getElementById('level').value > 0.05")
        peak = await page.text_content("#peak")
    drops = session.path.drops
    print(f"red={red}: drops {drops}, {inbound}")
    assert abs(float(peak.split("~")[1].split()[0]) - 440) < 30, peak
    assert session.info().red is red
    assert drops >= 20 and drops - 2 <= inbound["packetsLost"] <= drops, inbound
    lost_samples = drops * 960
    if red:
        assert inbound["concealedSamples"] < 0.3 * lost_samples, inbound
        assert inbound["packetsDiscarded"] > 0.5 * inbound["packetsReceived"], inbound
    else:
        assert inbound["concealedSamples"] > 0.6 * lost_samples, inbound
    await pub.delete()
