"""Giving back a packet of excess delay (the trim) drops a pause, not speech; audio that
never pauses is trimmed with its seam cross-faded."""

from __future__ import annotations

import numpy as np

from gateway.codecs.spec import L16_48K
from gateway.ingress.playout import SEAM_SAMPLES, TRIM_PATIENCE, Playout

FRAME = 960
PT = L16_48K.payload_type


def tone(packets: int, start: int = 0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(start * FRAME, (start + packets) * FRAME) / 48000
    return np.round(10000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def play_one_packet_early(pcm: np.ndarray) -> tuple[np.ndarray, Playout]:
    """Packet 0 and 1 arrive before the first tick, then one before each tick: one packet
    more depth than the target for the whole run, which the buffer gives back."""
    packets = [pcm[i : i + FRAME].astype(">i2").tobytes() for i in range(0, len(pcm), FRAME)]
    playout = Playout({PT: L16_48K})
    playout.push(0, PT, packets[0], 1)
    out = []
    for tick in range(len(packets) - 1):
        playout.push(tick + 1, PT, packets[tick + 1], 1)
        frame = playout.pull()
        assert frame is not None
        out.append(frame)
    return np.concatenate(out), playout


def test_the_trim_drops_a_quiet_packet_not_speech():
    # 3 s of tone (the trim falls due after 2 s), a pause of 5 packets, 2 s of tone
    pcm = np.concatenate((tone(150), np.zeros(5 * FRAME, np.int16), tone(100, 155)))
    out, playout = play_one_packet_early(pcm)
    assert playout.jitter.stats.trimmed == 1 and playout.info().lost == 0
    # every sample of tone came out, in order: only one packet of the pause is missing
    expected = np.concatenate((pcm[: 150 * FRAME], pcm[151 * FRAME :]))
    assert np.array_equal(out, expected[: len(out)])


def test_audio_without_pauses_is_trimmed_after_a_while_with_a_smooth_seam():
    pcm = tone(TRIM_PATIENCE + 200)  # 440 Hz: 8.8 periods per packet, a seam jumps phase
    out, playout = play_one_packet_early(pcm)
    assert playout.jitter.stats.trimmed == 1
    gap = np.flatnonzero(out[: len(pcm) - FRAME] != pcm[: len(out)][: len(pcm) - FRAME])
    seam = int(gap[0]) // FRAME * FRAME  # the trimmed packet's start (the fade starts at 0)
    assert gap[0] - seam <= 1 and seam // FRAME > 100 + TRIM_PATIENCE - 5
    # after the seam's cross-fade the output is the input one packet on
    after = seam + SEAM_SAMPLES
    assert np.array_equal(out[after:], pcm[after + FRAME :][: len(out) - after])
    # and the seam is as smooth as the tone itself (a hard cut jumps by up to 20000)
    steepest = np.abs(np.diff(pcm.astype(float))).max()
    assert np.abs(np.diff(out[seam - 2 : after + 2].astype(float))).max() < 1.5 * steepest


def test_the_jitter_target_is_reported_in_time_for_packets_of_any_length():
    """The depth is counted in packets: 180 ms packets (ffmpeg's default for PCM) at a
    depth of one are 180 ms of delay, not 20."""
    pcm = tone(45)
    size = 9 * FRAME  # 180 ms
    playout = Playout({PT: L16_48K})
    assert playout.info().jitter_target_ms == 20  # before any packet: one 20 ms packet
    for seq, i in enumerate(range(0, len(pcm), size)):
        playout.push(seq, PT, pcm[i : i + size].astype(">i2").tobytes(), 1)
    out = [playout.pull() for _ in range(18)]
    assert np.array_equal(np.concatenate(out), pcm[: 18 * FRAME])
    assert playout.jitter.kept_depth >= 1
    assert playout.info().jitter_target_ms == playout.jitter.kept_depth * 180
    assert playout.stats().jitter_target_s == playout.jitter.kept_depth * 0.18
