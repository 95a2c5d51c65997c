"""Sample levels in dBFS and the ballistics of a UI level meter.

Full scale is 32768 (the magnitude of int16's most negative sample), so a full-scale
square wave has an RMS of 0 dBFS and a full-scale sine -3.01 dBFS (the AES17 convention
without its +3 dB sine correction). Digital silence reads ``FLOOR_DBFS`` instead of
-inf, so every value is a finite float that JSON and Prometheus accept.
"""

from __future__ import annotations

import math

import numpy as np

from gateway.core.audio import FRAME_SECONDS

FULL_SCALE = 32768.0
#: Reported for digital silence (and anything quieter): no log(0), no -inf in JSON.
FLOOR_DBFS = -120.0
_FLOOR_POWER = 10.0 ** (FLOOR_DBFS / 10.0)
_FULL_SCALE_SQ = FULL_SCALE * FULL_SCALE


def power_db(mean_square: float) -> float:
    """10·log10 of a mean square relative to full scale, floored at ``FLOOR_DBFS``."""
    if mean_square <= _FLOOR_POWER:
        return FLOOR_DBFS
    return 10.0 * math.log10(mean_square)


def mean_square(samples: np.ndarray) -> float:
    """Mean square of int16-scaled samples relative to full scale (1.0 = full-scale square).

    Accepts int16 or float64 holding int16 values; the sum runs in float64 because an int16
    dot product would overflow.
    """
    x = samples if samples.dtype == np.float64 else samples.astype(np.float64)
    return float(np.dot(x, x)) / (x.size * _FULL_SCALE_SQ) if x.size else 0.0


def peak_of(samples: np.ndarray) -> int:
    """Largest sample magnitude (32768 for a -32768 sample; no int16 abs overflow)."""
    if not samples.size:
        return 0
    return max(int(samples.max()), -int(samples.min()))


def peak_dbfs(frame: np.ndarray) -> float:
    """Sample peak of a frame in dBFS (0.0 for ±32768, ``FLOOR_DBFS`` for silence)."""
    peak = peak_of(frame)
    return power_db((peak / FULL_SCALE) ** 2)


def rms_dbfs(frame: np.ndarray) -> float:
    """RMS level of a frame in dBFS (full-scale sine = -3.01 dBFS)."""
    return power_db(mean_square(frame))


class LevelMeter:
    """Ballistics for a UI level meter fed one peak value per frame.

    * ``level``: the bar. Instant attack, then a linear fall in dB at ``fall_db_per_s``
      (20 dB/s by default, a typical digital peak-meter return). A UI polling every
      100-250 ms therefore still sees every peak that happened between two polls.
    * ``hold``: the peak-hold marker. It jumps to any higher peak, stays ``hold_s`` (1 s),
      then falls at the same rate until a new peak catches it.

    Time comes from the frame index (sans-IO): frames skipped by a lagging reader still
    count as elapsed time.
    """

    __slots__ = (
        "hold_s",
        "fall_db_per_s",
        "floor",
        "frame_s",
        "level",
        "hold",
        "_hold_until",
        "_last",
    )

    def __init__(
        self,
        hold_s: float = 1.0,
        fall_db_per_s: float = 20.0,
        floor_dbfs: float = FLOOR_DBFS,
        frame_s: float = FRAME_SECONDS,
    ) -> None:
        self.hold_s = hold_s
        self.fall_db_per_s = fall_db_per_s
        self.floor = floor_dbfs
        self.frame_s = frame_s
        self.level = floor_dbfs
        self.hold = floor_dbfs
        self._hold_until = -1  # last frame index at which the held peak stays put
        self._last: int | None = None

    def update(self, index: int, peak_dbfs: float) -> tuple[float, float]:
        """Feed the frame ``index``'s peak; return ``(level, hold)``."""
        frames = 1 if self._last is None else max(index - self._last, 0)
        self._last = index
        fall = self.fall_db_per_s * self.frame_s
        self.level = max(peak_dbfs, self.level - fall * frames, self.floor)
        if peak_dbfs >= self.hold:
            self.hold = peak_dbfs
            self._hold_until = index + round(self.hold_s / self.frame_s)
        elif index > self._hold_until:
            falling = min(frames, index - self._hold_until)
            self.hold = max(peak_dbfs, self.hold - fall * falling, self.floor)
        return self.level, self.hold
