"""Speech for loss tests: espeak-ng's voice or a recording at 48 kHz, Opus packets with
in-band FEC, seeded packet loss, and PESQ-WB of what came out against what went in
(time-aligned first)."""

from __future__ import annotations

import subprocess
import tempfile
from functools import cache
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import correlate, resample_poly

from gateway.codecs import libopus

RATE = 48000
FRAME = 960
TEXT = ("The quick brown fox jumps over the lazy dog. Speech that survives lossy networks "
        "needs forward error correction and good concealment. Phones on wireless networks "
        "lose a few percent of their packets, and nobody should hear it.")


@cache
def speech(text: str = TEXT) -> np.ndarray:
    """int16 speech at 48 kHz, a whole number of 20 ms frames (needs espeak-ng)."""
    import soundfile

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text],
                       check=True, capture_output=True, timeout=60)
        pcm, rate = soundfile.read(wav, dtype="int16")
    assert rate == 22050, rate
    up = resample_poly(pcm.astype(np.float64), 320, 147) * 0.8  # 22050 -> 48000
    up = np.clip(np.round(up), -32768, 32767).astype(np.int16)
    return up[: len(up) // FRAME * FRAME]


#: A recorded human voice (10.6 s, 16 kHz) from linphone-common, which linphone-cli (in
#: scripts/install-peers) depends on. PESQ-WB of its Opus encoding reaches 4.3; espeak-ng's
#: synthetic voice stops at 3.6, too low for the issue's 4.0 bar with loss.
RECORDED = "/usr/share/sounds/linphone/hello16000.wav"


@cache
def recorded(path: str = RECORDED) -> np.ndarray:
    """A speech recording (any rate, mono or not) as int16 at 48 kHz, whole 20 ms frames."""
    import soundfile

    pcm, rate = soundfile.read(path, dtype="int16")
    if pcm.ndim > 1:
        pcm = pcm.mean(axis=1).astype(np.int16)
    g = gcd(RATE, rate)
    up = resample_poly(pcm.astype(np.float64), RATE // g, rate // g)
    up = np.clip(np.round(up), -32768, 32767).astype(np.int16)
    return up[: len(up) // FRAME * FRAME]


def opus_packets(pcm: np.ndarray, bitrate: int = 32000, fec: bool = True,
                 loss_percent: int = 10) -> list[bytes]:
    """20 ms Opus packets as a WebRTC sender with in-band FEC makes them."""
    enc = libopus.OpusEncoder(bitrate=bitrate, fec=fec, loss_percent=loss_percent)
    return [enc.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]


def drops(count: int, loss: float, seed: int, burst: int = 1) -> set[int]:
    """Indices of dropped packets: ``loss`` of them, in bursts of ``burst``, seeded."""
    rng = np.random.default_rng(seed)
    starts = np.flatnonzero(rng.random(count) < loss / burst)
    lost = {int(s) + k for s in starts for k in range(burst)}
    return {i for i in lost if 10 <= i < count - 10}  # keep the edges for alignment


def align(reference: np.ndarray, decoded: np.ndarray, max_lag: int = RATE // 5) -> np.ndarray:
    """``decoded`` shifted to start where ``reference`` does (cross-correlation), cut to the
    same length (zero-padded if short)."""
    ref = reference.astype(np.float64)
    dec = decoded.astype(np.float64)
    c = correlate(dec, ref, mode="full", method="fft")
    zero = len(ref) - 1
    window = c[zero : zero + max_lag]
    lag = int(np.argmax(window))
    out = dec[lag : lag + len(ref)]
    return np.pad(out, (0, len(ref) - len(out)))


def pesq_wb(reference: np.ndarray, decoded: np.ndarray, max_lag: int = RATE // 5) -> float:
    """PESQ-WB (ITU-T P.862.2, MOS-LQO) of ``decoded`` against ``reference`` (48 kHz),
    ``decoded`` starting up to ``max_lag`` samples later."""
    from pesq import pesq

    aligned = align(reference, decoded, max_lag)
    ref16 = resample_poly(reference.astype(np.float64), 1, 3)
    dec16 = resample_poly(aligned, 1, 3)
    return float(pesq(16000, ref16, dec16, "wb"))


def correlation(reference: np.ndarray, decoded: np.ndarray) -> float:
    aligned = align(reference, decoded)
    return float(np.corrcoef(reference.astype(np.float64), aligned)[0, 1])
