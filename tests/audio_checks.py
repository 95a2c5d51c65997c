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


def band_level(samples: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Spectral magnitude around ``freq`` relative to the spectrum's peak, in dB."""
    spec = np.abs(np.fft.rfft(samples.astype(float) * np.hanning(len(samples))))
    k = int(round(freq * len(samples) / rate))
    return 20 * np.log10(spec[k - 3 : k + 4].max() / spec.max())


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


def step_tone(steps: list[float], step_frames: int = 50, amplitude: float = 0.3):
    """A ToneTrack generator: frequency steps[k] during frames [k*step_frames, ...)."""
    frame = 960

    def generate(index: int) -> np.ndarray:
        freq = steps[(index // step_frames) % len(steps)]
        n = np.arange(index * frame, (index + 1) * frame)
        return (np.sin(2 * np.pi * freq * n / RATE) * amplitude * 32767).astype(np.int16)

    return generate


def tone_track(samples: np.ndarray, rate: int, window_s: float = 0.02) -> np.ndarray:
    """Dominant frequency of each ``window_s`` block (0 for silent blocks)."""
    size = int(rate * window_s)
    out = []
    for i in range(0, len(samples) - size + 1, size):
        block = samples[i : i + size]
        out.append(dominant_frequency(block, rate) if rms_dbfs(block) > -40 else 0.0)
    return np.array(out)


def step_times(samples: np.ndarray, rate: int, steps: list[float],
               window_s: float = 0.01) -> list[tuple[float, float]]:
    """(time in s, new frequency) of each change between the known step frequencies."""
    freqs = tone_track(samples, rate, window_s)
    nearest = [min(steps, key=lambda s: abs(s - f)) if f else None for f in freqs]
    changes = []
    for i in range(1, len(nearest)):
        if nearest[i] is not None and nearest[i - 1] is not None and nearest[i] != nearest[i - 1]:
            # the window holding the change is mixed: count the change at its middle
            changes.append(((i + 0.5) * window_s, float(nearest[i])))
    merged: list[tuple[float, float]] = []
    for t, f in changes:  # a mixed window can flicker: keep the first of close changes
        if not merged or t - merged[-1][0] > 0.2:
            merged.append((t, f))
    return merged


def write_wav(path, pcm: np.ndarray, rate: int = 48000):  # type: ignore[no-untyped-def]
    """``pcm`` (int16) as a mono 16-bit WAV: test inputs for peers that play files."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path
