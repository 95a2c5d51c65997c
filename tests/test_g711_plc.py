"""G.711 loss concealment (Appendix I style): the voice goes on through a lost packet in
its own pitch, fades out over a long loss, and comes back without a click."""

from __future__ import annotations

import numpy as np
from scipy.signal import resample_poly
from test_libopus import voiced

from gateway.codecs.g711_plc import PITCH_MAX, PITCH_MIN, G711Concealer, find_pitch
from gateway.ingress.concealment import Concealer

PACKET = 160  # 20 ms at 8 kHz


def voice_8k(seconds: float, f0: float = 140.0) -> np.ndarray:
    x = resample_poly(voiced(seconds, f0).astype(np.float64), 1, 6)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def test_pitch_of_a_periodic_signal():
    t = np.arange(400)
    for period in (PITCH_MIN, 57, 80, PITCH_MAX):
        x = 8000 * np.sin(2 * np.pi * t / period) + 3000 * np.sin(6 * np.pi * t / period + 1)
        assert find_pitch(x.astype(np.int16)) == period


def run(pcm: np.ndarray, lost: set[int], fade: bool) -> np.ndarray:
    plc, fader = G711Concealer(), Concealer()
    out = []
    for i in range(len(pcm) // PACKET):
        packet = pcm[i * PACKET : (i + 1) * PACKET]
        if i in lost:
            out.append(fader.conceal() if fade else plc.conceal(PACKET))
        else:
            fader.remember(packet)
            out.append(packet if fade else plc.received(packet))
    return np.concatenate(out)


def segment_snr(reference: np.ndarray, test: np.ndarray, packets: set[int]) -> float:
    idx = np.concatenate([np.arange(i * PACKET, (i + 1) * PACKET) for i in sorted(packets)])
    ref = reference[idx].astype(np.float64)
    noise = test[idx].astype(np.float64) - ref
    return float(10 * np.log10(np.sum(ref**2) / np.sum(noise**2)))


def test_lost_voice_is_continued_in_pitch_better_than_fade_repeat():
    pcm = voice_8k(4.0)
    lost = set(range(5, 200, 9))
    plc = segment_snr(pcm, run(pcm, lost, fade=False), lost)
    fade = segment_snr(pcm, run(pcm, lost, fade=True), lost)
    # fade-repeat's copy is out of phase: worse than silence (0 dB); pitch repetition
    # follows the waveform
    assert plc > 1.5 and plc > fade + 3, (plc, fade)


def test_long_loss_fades_to_silence_within_60_ms_and_returns_without_a_click():
    pcm = voice_8k(1.0)
    plc = G711Concealer()
    for i in range(10):
        plc.received(pcm[i * PACKET : (i + 1) * PACKET])
    concealed = np.concatenate([plc.conceal(PACKET) for _ in range(5)])  # 100 ms
    first_10ms = np.abs(concealed[:80].astype(float)).mean()
    assert first_10ms > 0.5 * np.abs(pcm[1520:1600].astype(float)).mean()  # full level
    assert not concealed[480:].any()  # silent after 60 ms
    level = [np.abs(concealed[k : k + 80].astype(float)).mean() for k in range(80, 480, 80)]
    assert all(a > b for a, b in zip(level, level[1:], strict=False))  # falling
    back = plc.received(pcm[3200:3360])
    # faded in from silence over 10 ms: no step from 0 to full level
    assert abs(int(back[0])) < 0.1 * np.abs(pcm[3200:3360]).max()
    assert np.array_equal(back[80:], pcm[3280:3360])


def test_concealment_starts_without_a_step():
    """The first concealed sample follows the last real one no more steeply than the
    waveform itself moves (no click at the start of the loss)."""
    pcm = voice_8k(2.0)
    worst = 0.0
    for start in range(20, 90, 7):
        plc = G711Concealer()
        for i in range(start):
            plc.received(pcm[i * PACKET : (i + 1) * PACKET])
        first = plc.conceal(PACKET)
        step = abs(int(first[0]) - int(pcm[start * PACKET - 1]))
        natural = np.abs(np.diff(pcm[(start - 1) * PACKET : start * PACKET].astype(int))).max()
        worst = max(worst, step / natural)
    assert worst <= 1.0, worst
    assert PITCH_MAX * 3 < 390
