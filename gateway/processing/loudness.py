"""ITU-R BS.1770-4 / EBU R128 loudness of a 48 kHz mono stream, fed 20 ms frames.

K-weighting is the standard's two biquads with its published 48 kHz coefficients, run as
one 4th-order ``lfilter`` whose state is kept across frames (a quarter of ``sosfilt``'s
per-call cost; float64 is ample for these poles, checked against the cascade in tests).
Each frame contributes one mean square; because 20 ms divides the windows exactly,
momentary (400 ms = 20 frames) and short-term (3 s = 150 frames) loudness are running
sums over a ring of those per-frame values, and the integrated loudness's 400 ms gating
blocks with 75 % overlap are taken every 5 frames (100 ms).

Mono: the single channel has weight 1.0, i.e. BS.1770 of a mono signal played on one
loudspeaker (a mono file on two speakers would read about 3 LU louder).

Integrated loudness keeps the whole lifetime in a histogram of block loudness (0.02 LU
bins over -70..+10 LUFS, each bin holding its count and its exact energy sum), so memory
is constant however long the stream runs; only blocks within the bin that straddles the
relative gate are classified approximately. Values are ``None`` until they are defined
(window not yet filled, nothing above the gates) and floored at ``FLOOR_LUFS``, so they
are always finite.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter, sos2tf

from gateway.core.audio import FRAME_SAMPLES

#: BS.1770-4 Tables 1 and 2 (48 kHz): stage 1 high shelf, stage 2 RLB high-pass.
K_WEIGHTING_SOS = np.array(
    [
        [
            1.53512485958697,
            -2.69169618940638,
            1.19839281085285,
            1.0,
            -1.69065929318241,
            0.73248077421585,
        ],
        [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621],
    ]
)
_K_B, _K_A = sos2tf(K_WEIGHTING_SOS)

FLOOR_LUFS = -120.0
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0

MOMENTARY_FRAMES = 20  # 400 ms
SHORT_TERM_FRAMES = 150  # 3 s
BLOCK_FRAMES = 20  # gating block: 400 ms ...
BLOCK_STEP_FRAMES = 5  # ... every 100 ms (75 % overlap)

_HIST_LOW = ABSOLUTE_GATE_LUFS
_HIST_HIGH = 10.0
_HIST_BIN = 0.02
_HIST_BINS = round((_HIST_HIGH - _HIST_LOW) / _HIST_BIN)
#: int16 samples are filtered unscaled; this turns their mean square into full-scale units.
_SCALE = 1.0 / (32768.0 * 32768.0)


def lufs(mean_square: float) -> float:
    """BS.1770 loudness of a K-weighted mean square (full-scale units), floored."""
    if mean_square <= 0.0:
        return FLOOR_LUFS
    return max(-0.691 + 10.0 * math.log10(mean_square), FLOOR_LUFS)


class KWeighting:
    """The K-weighting filter with its state carried from one frame to the next."""

    __slots__ = ("_zi",)

    def __init__(self) -> None:
        self._zi = np.zeros(max(len(_K_A), len(_K_B)) - 1)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Filter the next block of samples (float64 or int16), continuing the state."""
        y, self._zi = lfilter(_K_B, _K_A, samples, zi=self._zi)
        return y

    @property
    def state(self) -> np.ndarray:
        return self._zi

    @state.setter
    def state(self, zi: np.ndarray) -> None:
        self._zi = zi

    def reset(self) -> None:
        self._zi = np.zeros_like(self._zi)

    def settle(self) -> bool:
        """If the filter has rung down (state under 1e-4 of an int16 step), zero its state
        and return True: digital silence in then gives exactly zero out, unfiltered."""
        if max(abs(v) for v in self._zi.tolist()) >= 1e-4:
            return False
        self._zi[:] = 0.0
        return True


def gated_loudness(hist_count: np.ndarray, hist_energy: np.ndarray, gated_count: int,
                   gated_energy: float) -> float | None:
    """Integrated loudness from the histogram of the blocks above the absolute gate:
    the relative gate, then the mean of the blocks above it (``None`` if none)."""
    if not gated_count:
        return None
    relative_gate = lufs(gated_energy / gated_count) + RELATIVE_GATE_LU
    # Bins whose centre is above the gate (a block exactly in that bin may be off).
    first = math.ceil((relative_gate - _HIST_LOW) / _HIST_BIN - 0.5)
    first = min(max(first, 0), _HIST_BINS - 1)
    count = int(hist_count[first:].sum())
    if not count:
        return None
    return lufs(float(hist_energy[first:].sum()) / count)


class LoudnessMeter:
    """Momentary, short-term and (optionally) integrated loudness, frame by frame."""

    def __init__(self, integrated: bool = True) -> None:
        self._filter = KWeighting()
        self._ring = [0.0] * SHORT_TERM_FRAMES  # per-frame K-weighted mean squares
        self._frames = 0
        self._m_sum = 0.0  # sum of the last MOMENTARY_FRAMES entries
        self._s_sum = 0.0  # sum of the whole ring
        self._integrated = integrated
        self._hist_count: np.ndarray | None = None  # allocated at the first gated block
        self._hist_energy: np.ndarray | None = None
        self._gated_count = 0
        self._gated_energy = 0.0
        self._cached: float | None = None
        self._dirty = False

    @property
    def frames(self) -> int:
        return self._frames

    def process(self, samples: np.ndarray) -> float:
        """Add one frame (int16 values, int16 or float64 dtype); return its K-weighted mean
        square in full-scale units."""
        if not samples.any() and self._filter.settle():
            ms = 0.0  # idle streams (digital silence) skip the filter: ~3x cheaper
        else:
            y = self._filter(samples)
            ms = float(np.dot(y, y)) * _SCALE / (y.size or FRAME_SAMPLES)
        self.add(ms)
        return ms

    @property
    def filter(self) -> KWeighting:
        """The K-weighting filter (a batch of streams filters many at once)."""
        return self._filter

    def add(self, ms: float) -> None:
        """Add one frame's K-weighted mean square (full-scale units), filtered elsewhere."""
        n = self._frames
        ring = self._ring
        slot = n % SHORT_TERM_FRAMES
        if slot == 0 and n:
            # Once per ring turn, drop the rounding drift of the running sums.
            self._s_sum = math.fsum(ring)
            self._m_sum = math.fsum(ring[-MOMENTARY_FRAMES:])
        self._s_sum += ms - ring[slot]
        self._m_sum += ms
        if n >= MOMENTARY_FRAMES:
            self._m_sum -= ring[(n - MOMENTARY_FRAMES) % SHORT_TERM_FRAMES]
        ring[slot] = ms
        self._frames = n = n + 1
        if self._integrated and n >= BLOCK_FRAMES and (n - BLOCK_FRAMES) % BLOCK_STEP_FRAMES == 0:
            self._add_block(max(self._m_sum, 0.0) / MOMENTARY_FRAMES)

    def add_silence(self, frames: int) -> None:
        """``frames`` frames of digital silence at once, for a stream that has had none but
        silence for at least a momentary window and the filter's ring-down (its gating
        blocks are then all empty): what many ``process(silence)`` calls would leave."""
        if frames <= 0:
            return
        self._filter.reset()
        n = self._frames
        ring = self._ring
        for i in range(n, n + min(frames, SHORT_TERM_FRAMES)):
            ring[i % SHORT_TERM_FRAMES] = 0.0
        self._frames = n = n + frames
        self._s_sum = math.fsum(ring)
        self._m_sum = math.fsum(ring[(n - 1 - i) % SHORT_TERM_FRAMES]
                                for i in range(min(n, MOMENTARY_FRAMES)))

    @property
    def momentary(self) -> float | None:
        """Loudness of the last 400 ms in LUFS (``None`` before 400 ms of audio)."""
        if self._frames < MOMENTARY_FRAMES:
            return None
        return lufs(self._m_sum / MOMENTARY_FRAMES)

    @property
    def short_term(self) -> float | None:
        """Loudness of the last 3 s in LUFS (``None`` before 3 s of audio)."""
        if self._frames < SHORT_TERM_FRAMES:
            return None
        return lufs(self._s_sum / SHORT_TERM_FRAMES)

    # -- integrated ------------------------------------------------------------------
    def _add_block(self, block_ms: float) -> None:
        if block_ms <= 0.0:
            return
        loudness = -0.691 + 10.0 * math.log10(block_ms)
        if loudness < ABSOLUTE_GATE_LUFS:
            return
        if self._hist_count is None:
            self._hist_count = np.zeros(_HIST_BINS, dtype=np.int64)
            self._hist_energy = np.zeros(_HIST_BINS)
        assert self._hist_energy is not None
        i = min(int((loudness - _HIST_LOW) / _HIST_BIN), _HIST_BINS - 1)
        self._hist_count[i] += 1
        self._hist_energy[i] += block_ms
        self._gated_count += 1
        self._gated_energy += block_ms
        self._dirty = True

    @property
    def integrated(self) -> float | None:
        """Gated loudness over the stream's lifetime in LUFS (``None`` until a 400 ms block
        above -70 LUFS has been seen, or when integration is off)."""
        if self._dirty:
            self._cached = self._compute_integrated()
            self._dirty = False
        return self._cached

    def _compute_integrated(self) -> float | None:
        if self._hist_count is None or self._hist_energy is None:
            return None
        return gated_loudness(self._hist_count, self._hist_energy, self._gated_count,
                              self._gated_energy)

    def reset_integrated(self) -> None:
        """Start integrating afresh (e.g. at the start of a programme)."""
        self._hist_count = self._hist_energy = None
        self._gated_count = 0
        self._gated_energy = 0.0
        self._cached = None
        self._dirty = False
