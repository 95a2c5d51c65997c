"""Lost packets on the way in: decoded from the next packet's in-band FEC, else concealed
by the codec (libopus PLC, G.711 Appendix I), and the speech that comes out is measurably
closer to what was sent than fade-repeat's (PESQ-WB, measured both ways in the test)."""

from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
import pytest
from conftest import free_port, need_program
from lossy_webrtc import LossyPublisher, aiortc_opus
from speech import FRAME, RECORDED, drops, opus_packets, pesq_wb, recorded, speech
from stepping import until
from test_fanout import l16, l16_listener
from test_libopus import voiced
from test_metrics import scrape, value
from test_rtp_input import add_input
from test_rtp_output import api

from gateway.codecs import libopus
from gateway.codecs.spec import G722, OPUS, PCMU
from gateway.codecs.transcode import make_encoder
from gateway.ingress.playout import Concealment, Playout

SSRC = 0x5EED


def rtp(seq: int, payload: bytes, pt: int = OPUS.payload_type) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * FRAME, SSRC) + payload


def play_offline(packets: list[bytes], lost: set[int], concealment: Concealment,
                 spec=OPUS, extra_ticks: int = 0) -> tuple[np.ndarray, Playout]:
    """What a playout makes of ``packets`` when packet i arrives just before tick i (the
    gateway's RTP input below gets them on the same schedule)."""
    playout = Playout({spec.payload_type: spec}, min_depth=1, max_depth=5,
                      concealment=concealment)
    out = []
    for tick in range(len(packets) + extra_ticks):
        if tick < len(packets) and tick not in lost:
            playout.push(tick, spec.payload_type, packets[tick], SSRC)
        frame = playout.pull()
        out.append(frame if frame is not None else np.zeros(FRAME, np.int16))
    return np.concatenate(out), playout


def fec_available(packets: list[bytes], lost: set[int]) -> int:
    """Lost packets whose successor arrived and carries FEC: what FEC can recover, once
    the sender was seen adding FEC (before that the buffer does not wait for it)."""
    with_fec = [i for i, p in enumerate(packets) if i not in lost and libopus.has_lbrr(p)]
    first = with_fec[0] if with_fec else len(packets)
    return sum(1 for i in lost if first < i and i + 1 not in lost and i + 1 < len(packets)
               and libopus.has_lbrr(packets[i + 1]))


# -- the playout, offline --------------------------------------------------------------
def test_isolated_losses_are_recovered_by_fec_and_a_burst_starts_with_plc():
    pcm = voiced(3.0)
    packets = opus_packets(pcm, loss_percent=10)
    lost = {30, 31, 60, 90, 120}  # a burst of two, then single losses
    _, playout = play_offline(packets, lost, Concealment.FEC)
    info = playout.info()
    assert info.lost == 5
    # not 30 (its successor is lost too), nor a loss whose successor has no FEC (silence)
    assert info.fec_recovered == fec_available(packets, lost) >= 3
    # PLC: packet 30, the one tick the buffer waited for 30's successor, and a loss whose
    # successor carried no FEC
    assert playout.jitter.stats.successor_waits == 1
    assert info.plc_concealed == info.lost - info.fec_recovered + 1
    assert info.red_recovered == 0


def test_without_fec_in_the_stream_the_buffer_does_not_wait_and_plc_conceals():
    pcm = voiced(3.0)
    packets = opus_packets(pcm, fec=False)
    _, playout = play_offline(packets, {40, 80}, Concealment.FEC)
    info = playout.info()
    assert (info.fec_recovered, info.plc_concealed) == (0, 2)
    assert playout.jitter.stats.successor_waits == 0  # no delay for a sender without FEC


@pytest.mark.parametrize(("spec", "plc"), [(PCMU, 1), (G722, 0)])
def test_g711_is_concealed_by_its_plc_and_g722_by_fade_repeat(spec, plc):
    pcm = voiced(2.0)
    enc = make_encoder(spec)
    packets = [enc.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    audio, playout = play_offline(packets, {50}, Concealment.FEC, spec=spec)
    assert playout.info().plc_concealed == plc and playout.info().lost == 1
    assert np.abs(audio[50 * FRAME : 51 * FRAME]).max() > 1000  # not a silent hole


def test_fec_beats_plc_beats_fade_on_the_same_losses():
    """Correlation with the decoded-without-loss audio, on a voice-like signal (no
    external program needed): the order the benchmark shows on speech."""
    pcm = voiced(6.0)
    packets = opus_packets(pcm, loss_percent=10)
    lost = drops(len(packets), 0.08, seed=3)
    clean, _ = play_offline(packets, set(), Concealment.FEC, extra_ticks=2)
    scores = {}
    for mode in Concealment:
        audio, _ = play_offline(packets, lost, mode, extra_ticks=2)
        # the FEC playout waits one tick at its first loss: compare each half second at
        # lag 0 or 1 frame, whichever matches
        window = 24000
        scores[mode] = np.mean([
            max(np.corrcoef(clean[i : i + window], audio[i + k : i + k + window])[0, 1]
                for k in (0, FRAME))
            for i in range(0, len(pcm) - window, window)])
    assert scores[Concealment.FEC] > scores[Concealment.PLC] + 0.03, scores
    assert scores[Concealment.PLC] > scores[Concealment.FADE], scores


# -- the gateway: speech over a lossy uplink into an RTP input ---------------------------
async def send_lossy(gw, input_id: str, port: int, packets: list[bytes], lost: set[int],
                     extra_ticks: int = 5) -> None:
    """Packet i is sent before tick i unless it is lost; the test waits until the input
    has read it, then steps the media clock (the same schedule as play_offline)."""
    rtp_input = gw.gateway.rtp_inputs[input_id]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for tick in range(len(packets) + extra_ticks):
        if tick < len(packets) and tick not in lost:
            sock.sendto(rtp(tick, packets[tick]), ("127.0.0.1", port))
            sent += 1
        await until(lambda n=sent: rtp_input.playout.jitter.stats.received == n)
        await gw.step(1)
    sock.close()


CASES = {
    # loss, burst length, seed, margin over fade-repeat in PESQ-WB (measured on this
    # speech at 32 kbit/s: +0.48, +0.95, +0.40; FEC can only recover the second packet
    # of a burst of two)
    "3%-random": (0.03, 1, 11, 0.35),
    "10%-random": (0.10, 1, 12, 0.6),
    "6%-bursts-of-2": (0.06, 2, 13, 0.25),
}


@pytest.mark.parametrize("case", CASES)
async def test_lossy_uplink_speech_is_recovered_far_better_than_fade_repeat(
        stepped_gateway, case):
    need_program("espeak-ng")
    loss, burst, seed, margin = CASES[case]
    gw = stepped_gateway
    reference = speech()
    packets = opus_packets(reference, bitrate=32000, loss_percent=10)
    lost = drops(len(packets), loss, seed, burst)
    port = free_port(socket.SOCK_DGRAM)
    created = await add_input(gw, "lossy", type="rtp", port=port, codec="opus")
    sink = await l16_listener(gw, "lossy")
    await send_lossy(gw, created["id"], port, packets, lost, extra_ticks=0)
    heard = l16(sink.drain())
    faded, _ = play_offline(packets, lost, Concealment.FADE)
    clean, _ = play_offline(packets, set(), Concealment.FADE)
    gateway_score = pesq_wb(reference, heard)
    fade_score = pesq_wb(reference, faded)
    clean_score = pesq_wb(reference, clean)
    print(f"{case}: {len(lost)} of {len(packets)} lost; PESQ-WB no loss {clean_score:.2f}, "
          f"gateway {gateway_score:.2f}, fade-repeat {fade_score:.2f}")
    assert gateway_score > fade_score + margin, (gateway_score, fade_score)
    # the counters say what happened: FEC for every loss it could recover
    _, info = await api(gw, "GET", f"/api/v1/streams/lossy/inputs/{created['id']}")
    assert info["lost"] == len(lost), info
    assert info["fec_recovered"] == fec_available(packets, lost), info
    waits = gw.gateway.rtp_inputs[created["id"]].playout.jitter.stats.successor_waits
    assert waits == 1  # one packet of delay added, once, at the first loss
    assert info["plc_concealed"] == len(lost) - info["fec_recovered"] + waits, info
    assert info["red_recovered"] == 0
    m = await scrape(gw)
    labels = {"stream": "lossy", "kind": "rtp"}
    assert value(m, "gateway_sender_fec_recovered_packets_total", **labels) == \
        info["fec_recovered"]
    assert value(m, "gateway_sender_plc_concealed_packets_total", **labels) == \
        info["plc_concealed"]
    assert value(m, "gateway_sender_red_recovered_packets_total", **labels) == 0
    sink.close()


def test_g711_voice_is_concealed_in_pitch_through_the_playout():
    """PCMU through the playout: the lost packets' audio follows the voice (Appendix I
    style) better than fade-repeat's copy."""
    pcm = voiced(4.0)
    enc = make_encoder(PCMU)
    packets = [enc.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    lost = set(range(10, 190, 11))
    clean, _ = play_offline(packets, set(), Concealment.FEC, spec=PCMU)
    idx = np.concatenate([np.arange(i * FRAME, (i + 1) * FRAME) for i in sorted(lost)])

    def snr(mode: Concealment) -> float:
        audio, _ = play_offline(packets, lost, mode, spec=PCMU)
        ref = clean[idx].astype(float)
        return float(10 * np.log10(np.sum(ref**2) / np.sum((audio[idx] - ref) ** 2)))

    assert snr(Concealment.PLC) > snr(Concealment.FADE) + 3


# -- a WebRTC publisher whose encoder adds FEC, over a lossy uplink (real time) ----------
def timing_upset(stats) -> bool:  # type: ignore[no-untyped-def]
    """Whether packets came late or stopped for a while (the process stalled on a loaded
    machine: the test's own sender, not the network, was late)."""
    return bool(stats.late or stats.underruns or stats.trimmed or stats.resets)


async def test_aiortc_publisher_with_fec_over_a_lossy_uplink(gateway):
    """aiortc's Opus encoder (FFmpeg's libopus, aiortc's 96 kbit/s) with in-band FEC on,
    as a browser turns it on when its receiver reports tell it about loss; 3 % of its RTP
    packets dropped on the way (seeded). Recorded speech (the issue's bar, PESQ-WB 4.0,
    is above what espeak-ng's voice scores even without loss). The gateway counts the FEC
    recoveries, and what a listener gets scores at least 4.0 and beats what fade-repeat
    makes of the same packets. A run whose timing the loaded machine upset (late packets:
    the publisher in this process stalled) is run again, twice at most."""
    need_program(RECORDED)
    reference = recorded()
    drop = drops(len(reference) // FRAME + 100, 0.03, seed=15)
    for attempt in range(3):
        stream = f"uplink-{attempt}"
        sink = await l16_listener(gateway, stream)
        with aiortc_opus(fec=True):  # aiortc makes its encoder once connected
            pub = LossyPublisher(gateway.url, stream, reference, drop)
            await pub.negotiate()
            await pub.connected()
            await asyncio.sleep(len(reference) / 48000 + 1.0)
        source = gateway.gateway.registry.get(stream).source
        info, stats = source.info(), source.playout.jitter.stats
        await pub.delete()
        heard = l16(sink.drain())
        sink.close()
        print(f"attempt {attempt}: {stats}")
        if not timing_upset(stats):
            break
    payloads, lost = pub.payloads, pub.lost
    faded, _ = play_offline(payloads, lost, Concealment.FADE)
    gateway_score, fade_score = pesq_wb(reference, heard), pesq_wb(reference, faded)
    print(f"aiortc publisher, {len(lost)} of {len(payloads)} dropped: {info.lost} lost, "
          f"{info.late} late, {info.fec_recovered} FEC, {info.plc_concealed} PLC; PESQ-WB "
          f"gateway {gateway_score:.2f}, fade-repeat {fade_score:.2f}")
    assert info.lost + info.late >= len(lost) - 2  # the last ones may not be played yet
    assert info.fec_recovered >= 0.6 * fec_available(payloads, lost), info
    assert gateway_score >= 4.0, (gateway_score, fade_score)
    assert gateway_score > fade_score + 0.25, (gateway_score, fade_score)
