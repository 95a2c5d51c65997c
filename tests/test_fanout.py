"""The forwarding core on a stepped media clock, heard through plain RTP outputs: every
listener gets its own stream's frames, a late joiner starts at the live head, a stalled
reader costs the others nothing, and a new sender continues the stream for listeners.

(What needs a real WebRTC transport is in test_webrtc_relay.py.)"""

from __future__ import annotations

import struct
from itertools import pairwise

import numpy as np
from audio_checks import assert_tone, band_level, step_tone
from stepping import RtpSink, send_tone
from test_rtp_output import add_output

from gateway.codecs.g711 import ulaw_decode

TONE_A = step_tone([440.0])
TONE_B = step_tone([880.0])


def l16(packets: list[bytes]) -> np.ndarray:
    """The samples of 48 kHz L16 packets (lossless: what the stream had, bit for bit)."""
    return np.concatenate([np.frombuffer(p[12:], ">i2") for p in packets]).astype(np.int16)


def frames(generate, first: int, count: int) -> np.ndarray:
    return np.concatenate([generate(i) for i in range(first, first + count)])


def header(packet: bytes) -> tuple[int, int, int]:
    """(sequence number, timestamp, SSRC)."""
    _, _, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return seq, ts, ssrc


async def l16_listener(gw, stream: str) -> RtpSink:
    sink = RtpSink()
    await add_output(gw, stream, host="127.0.0.1", port=sink.port, codec="L16", rate=48000)
    return sink


async def test_the_tick_that_writes_a_frame_sends_its_packets(stepped_gateway):
    """Encoder and fan-out are driven by the rings' writes: the packet is on the
    listener's socket when the tick's call returns, with no loop turn for a task."""
    gw = stepped_gateway
    send_tone(gw, "a", TONE_A)
    sink = await l16_listener(gw, "a")
    await gw.step(1)
    before = len(sink.drain())
    for n in range(1, 4):
        gw.gateway.registry.tick()  # the clock's own call, no await after it
        assert len(sink.drain()) == before + n
    assert np.array_equal(l16(sink.packets), frames(TONE_A, 0, before + 3))
    sink.close()


async def test_two_streams_reach_their_own_listeners_including_a_late_joiner(stepped_gateway):
    gw = stepped_gateway
    send_tone(gw, "a", TONE_A)
    send_tone(gw, "b", TONE_B)
    early = [await l16_listener(gw, "a"), await l16_listener(gw, "a")]
    on_b = await l16_listener(gw, "b")
    await gw.step(100)
    late = await l16_listener(gw, "a")  # joins the running L16 encoder
    late_pcmu = RtpSink()  # starts an encoder of its own
    await add_output(gw, "a", host="127.0.0.1", port=late_pcmu.port, codec="PCMU")
    await gw.step(200)

    for sink in early:  # every frame of a, from the first tick on
        assert np.array_equal(l16(sink.drain()), frames(TONE_A, 0, 300))
    assert np.array_equal(l16(on_b.drain()), frames(TONE_B, 0, 300))
    # late joiners start at the live head (frame 100), not with a replay of the ring
    assert np.array_equal(l16(late.drain()), frames(TONE_A, 100, 200))
    assert len(late_pcmu.drain()) == 200
    assert_tone(ulaw_decode(b"".join(p[12:] for p in late_pcmu.packets)), 440, rate=8000)
    for sink in [*early, late]:
        audio = l16(sink.packets)
        assert_tone(audio, 440)
        assert band_level(audio, 880) < -40, "stream b leaked into a listener of a"
    assert_tone(l16(on_b.packets), 880)
    assert band_level(l16(on_b.packets), 440) < -40, "stream a leaked into a listener of b"
    for sink in [*early, on_b, late, late_pcmu]:
        sink.close()


async def test_a_stalled_listener_does_not_slow_the_others(stepped_gateway):
    gw = stepped_gateway
    send_tone(gw, "s", 440)
    others = [RtpSink() for _ in range(3)]
    for sink in others:
        await add_output(gw, "s", host="127.0.0.1", port=sink.port, codec="PCMU")
    stream = gw.gateway.registry.get("s")
    [encoder] = stream.egress.values()
    stalled = encoder.subscribe()  # a listener on the same encoder that never reads
    await gw.step(300, stalled=[stalled])
    for sink in others:  # every packet, in order, to every other listener
        seqs = [header(p)[0] for p in sink.drain()]
        assert len(seqs) == 300 and all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
        assert_tone(ulaw_decode(b"".join(p[12:] for p in sink.packets)), 440, rate=8000)
    assert encoder.frames_encoded == 300 and encoder.info().skipped_frames == 0
    # the stalled reader was overrun, not waited for: it resumes at the head, skips counted
    assert stalled.read_nowait() is None and stalled.skipped == 300 and stalled.lag == 0
    encoder.unsubscribe(stalled)
    for sink in others:
        sink.close()


async def test_a_new_sender_continues_the_stream_for_connected_listeners(stepped_gateway):
    gw = stepped_gateway
    first = send_tone(gw, "re", 440)
    sink = RtpSink()
    await add_output(gw, "re", host="127.0.0.1", port=sink.port, codec="PCMU")
    stream = gw.gateway.registry.get("re")
    await gw.step(150)
    stream.detach(first)
    await gw.step(25)  # nobody sends: silence
    send_tone(gw, "re", 660)
    await gw.step(150)

    packets = sink.drain()
    assert len(packets) == 325
    heads = [header(p) for p in packets]
    assert len({ssrc for _, _, ssrc in heads}) == 1  # one RTP stream throughout
    for (seq0, ts0, _), (seq1, ts1, _) in pairwise(heads):  # no restart, no gap
        assert ((seq1 - seq0) & 0xFFFF, (ts1 - ts0) & 0xFFFFFFFF) == (1, 160)
    pcm = ulaw_decode(b"".join(p[12:] for p in packets))
    assert_tone(pcm[: 150 * 160], 440, rate=8000)
    assert not np.any(pcm[151 * 160 : 175 * 160])  # (after the resampler's 2.5 ms tail)
    assert_tone(pcm[175 * 160 :], 660, rate=8000)
    assert stream.senders_total == 2
    sink.close()
