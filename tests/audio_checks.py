"""Assertions about audio content: what came out is what went in."""

from __future__ import annotations

import numpy as np

RATE = 48000


def dominant_frequency(samples: np.ndarray, rate: int = RATE) -> float:
    """Peak of the windowed spectrum, refined by parabolic interpolation."""
    x = samples.astype(np.float64)
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return k * rate / len(x)


def rms_dbfs(samples: np.ndarray) -> float:
    x = samples.astype(np.float64) / 32768.0
    return 10 * np.log10(np.mean(x * x) + 1e-20)


def assert_tone(samples: np.ndarray, freq: float, rate: int = RATE, tolerance: float = 0.02,
                min_seconds: float = 3.0) -> None:
    seconds = len(samples) / rate
    assert seconds >= min_seconds, f"only {seconds:.2f} s of audio received"
    level = rms_dbfs(samples)
    assert level > -40, f"audio is (near) silent: {level:.1f} dBFS"
    found = dominant_frequency(samples, rate)
    assert abs(found - freq) <= freq * tolerance, f"dominant {found:.1f} Hz, expected {freq} Hz"


def active(samples: np.ndarray, threshold_dbfs: float = -40, rate: int = RATE) -> np.ndarray:
    """The part of ``samples`` after the first 20 ms block louder than the threshold."""
    block = rate // 50
    for i in range(0, len(samples) - block, block):
        if rms_dbfs(samples[i : i + block]) > threshold_dbfs:
            return samples[i:]
    return samples[:0]
