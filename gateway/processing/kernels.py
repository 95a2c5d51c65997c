"""The analysers' per-frame arithmetic and state machines for many streams at once,
compiled (numba): what ``LevelMeter``, ``LoudnessMeter``, ``SilenceAlarm`` and
``VoiceDetector`` do for one frame, step for step, on the rows of an ``AnalysisBank``.

Why compiled: per stream and frame, scipy's K-weighting ``lfilter`` costs ~6 µs and the
state machines in Python ~6 µs; here the filter runs time-major across streams (one SIMD
lane per stream) and the state machines cost tens of nanoseconds. The signatures are
explicit (``gateway.compiled``) so the kernels compile, or load from numba's cache, at
import, never on the first analysed frame.

State lives in three matrices, one row per stream: ``F`` (float64 columns), ``N`` (int64
columns, booleans as 0/1, ``NONE`` for "not yet"), the loudness ring ``R`` (one
K-weighted mean square per frame), the first frame of the voice detector's pair ``P``
and the integrated-loudness histogram ``HC``/``HE``. ``C`` holds the bank's settings.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from gateway.compiled import compiled
from gateway.processing.levels import _FLOOR_POWER, _FULL_SCALE_SQ, FLOOR_DBFS
from gateway.processing.loudness import (
    _HIST_BIN,
    _HIST_BINS,
    _HIST_LOW,
    _K_A,
    _K_B,
    _SCALE,
    ABSOLUTE_GATE_LUFS,
    BLOCK_FRAMES,
    BLOCK_STEP_FRAMES,
    MOMENTARY_FRAMES,
    SHORT_TERM_FRAMES,
)
from gateway.processing.vad import _SUB_WINDOWS
from gateway.processing.vad import _WINDOW as WINDOW

NONE = np.iinfo(np.int64).min

# F columns
PEAK_DB, RMS_DB, M_LEVEL, M_HOLD, L_M_SUM, L_S_SUM, L_GATED_ENERGY = range(7)
V_SUB_MIN, V_RATIO, V_FLOOR, V_FLATNESS, KZ, SUB = 7, 8, 9, 10, 11, 15  # KZ: 4, SUB: 3
F_COLUMNS = 18
# N columns
(FRAMES, LAST_INDEX, M_HOLD_UNTIL, M_LAST, L_FRAMES, L_GATED_COUNT, L_DIRTY, L_HIST,
 S_RAISED, S_SILENT, S_QUIET_SINCE, S_LOUD_SINCE, V_SUB_COUNT, V_NSUB, V_RUN,
 V_LAST_VOICED, V_SECOND, V_FIRST_LOUD, V_ACTIVE) = range(19)
N_COLUMNS = 19
# C entries (the bank's settings; NaN thresholds are "off")
(C_FALL, C_HOLD_FRAMES, C_METER_FLOOR, C_SIL_THRESHOLD, C_SIL_AFTER, C_SIL_CLEAR,
 C_MARGIN, C_MIN_LEVEL, C_SUB_LEN, C_HANGOVER, C_ONSET, C_ALPHA, C_FLATNESS_MAX,
 C_TONAL_MAX, C_LOUDNESS, C_INTEGRATED, C_VAD, C_SPECTRAL) = range(18)
C_SIZE = 18

TIME_BLOCK = 16  # divides FRAME_SAMPLES
_B = np.ascontiguousarray(_K_B, dtype=np.float64)
_A = np.ascontiguousarray(_K_A, dtype=np.float64)


@compiled(nb.float64(nb.float64))
def power_db(mean_square: float) -> float:  # levels.power_db
    if mean_square <= _FLOOR_POWER:
        return FLOOR_DBFS
    return 10.0 * math.log10(mean_square)


@compiled(nb.void(nb.int16[:, ::1], nb.int64[::1], nb.float64[:, ::1], nb.float64[::1],
                 nb.float64[::1], nb.float64[::1]))
def measure(x, rows, F, peaks, squares, kweighted):  # pragma: no cover (compiled)
    """Peak, sum of squares and K-weighted sum of squares of each frame, the filter's
    state carried in ``F[row, KZ:KZ+4]`` (transposed direct form II, as ``lfilter``).
    Time-major: each step of the filter runs across all streams (SIMD lanes), over
    ``TIME_BLOCK`` samples at a time transposed into a buffer that stays in cache."""
    n, T = x.shape
    b0, b1, b2, b3, b4 = _B[0], _B[1], _B[2], _B[3], _B[4]
    a1, a2, a3, a4 = _A[1], _A[2], _A[3], _A[4]
    buf = np.empty((TIME_BLOCK, n))
    z0 = np.empty(n)
    z1 = np.empty(n)
    z2 = np.empty(n)
    z3 = np.empty(n)
    for i in range(n):
        r = rows[i]
        z0[i], z1[i], z2[i], z3[i] = F[r, KZ], F[r, KZ + 1], F[r, KZ + 2], F[r, KZ + 3]
        kweighted[i] = 0.0
        peaks[i] = 0.0
        squares[i] = 0.0
    for t0 in range(0, T, TIME_BLOCK):
        for i in range(n):
            xi = x[i]
            peak = peaks[i]
            acc = 0.0
            for j in range(TIME_BLOCK):
                f = float(xi[t0 + j])
                peak = max(peak, abs(f))
                acc += f * f
                buf[j, i] = f
            peaks[i] = peak
            squares[i] += acc
        for j in range(TIME_BLOCK):
            xr = buf[j]
            for i in range(n):
                v = xr[i]
                y = b0 * v + z0[i]
                z0[i] = b1 * v + z1[i] - a1 * y
                z1[i] = b2 * v + z2[i] - a2 * y
                z2[i] = b3 * v + z3[i] - a3 * y
                z3[i] = b4 * v - a4 * y
                kweighted[i] += y * y
    for i in range(n):
        r = rows[i]
        F[r, KZ], F[r, KZ + 1], F[r, KZ + 2], F[r, KZ + 3] = z0[i], z1[i], z2[i], z3[i]


@compiled(nb.void(nb.int64, nb.float64, nb.float64[:, ::1], nb.int64[:, ::1],
                 nb.float64[:, ::1], nb.int64[:, ::1], nb.float64[:, ::1]))
def _loudness_add(r, ms, F, N, R, HC, HE):  # pragma: no cover (compiled)
    """LoudnessMeter.add."""
    n = N[r, L_FRAMES]
    slot = n % SHORT_TERM_FRAMES
    if slot == 0 and n:
        s = 0.0
        for k in range(SHORT_TERM_FRAMES):
            s += R[r, k]
        m = 0.0
        for k in range(SHORT_TERM_FRAMES - MOMENTARY_FRAMES, SHORT_TERM_FRAMES):
            m += R[r, k]
        F[r, L_S_SUM] = s
        F[r, L_M_SUM] = m
    F[r, L_S_SUM] += ms - R[r, slot]
    F[r, L_M_SUM] += ms
    if n >= MOMENTARY_FRAMES:
        F[r, L_M_SUM] -= R[r, (n - MOMENTARY_FRAMES) % SHORT_TERM_FRAMES]
    R[r, slot] = ms
    n += 1
    N[r, L_FRAMES] = n
    if N[r, L_HIST] >= 0 and n >= BLOCK_FRAMES and (n - BLOCK_FRAMES) % BLOCK_STEP_FRAMES == 0:
        block = max(F[r, L_M_SUM], 0.0) / MOMENTARY_FRAMES
        if block <= 0.0:
            return
        loudness = -0.691 + 10.0 * math.log10(block)
        if loudness < ABSOLUTE_GATE_LUFS:
            return
        if N[r, L_HIST] == 0:  # first gated block: a clean histogram
            HC[r, :] = 0
            HE[r, :] = 0.0
            N[r, L_HIST] = 1
        b = min(int((loudness - _HIST_LOW) / _HIST_BIN), _HIST_BINS - 1)
        HC[r, b] += 1
        HE[r, b] += block
        N[r, L_GATED_COUNT] += 1
        F[r, L_GATED_ENERGY] += block
        N[r, L_DIRTY] = 1


@compiled(nb.int64(nb.int16[:, ::1], nb.int64[::1], nb.int64[::1], nb.float64[::1],
                  nb.float64[:, ::1], nb.int64[:, ::1], nb.float64[:, ::1],
                  nb.float64[:, ::1], nb.int64[:, ::1], nb.float64[:, ::1],
                  nb.float64[:, ::1], nb.int64[::1]))
def levels(x, rows, index, C, F, N, R, P, HC, HE, blocks, pending):  # pragma: no cover
    """First half of a frame: levels, meter, loudness and the voice detector's pair.
    Fills ``blocks[:m]`` with the frame pairs whose flatness must be measured (their
    item positions in ``pending[:m]``) and returns ``m``."""
    n = x.shape[0]
    peaks = np.empty(n)
    squares = np.empty(n)
    kweighted = np.empty(n)
    measure(x, rows, F, peaks, squares, kweighted)
    T = x.shape[1]
    k_scale = _SCALE / T
    fall = C[C_FALL]
    floor = C[C_METER_FLOOR]
    hold_frames = np.int64(C[C_HOLD_FRAMES])
    min_level = C[C_MIN_LEVEL]
    m = 0
    for i in range(n):
        r = rows[i]
        idx = index[i]
        peak = peaks[i] / 32768.0
        peak_db = power_db(peak * peak)
        rms_db = power_db(squares[i] / (T * _FULL_SCALE_SQ))
        F[r, PEAK_DB] = peak_db
        F[r, RMS_DB] = rms_db
        # LevelMeter.update
        last = N[r, M_LAST]
        frames = 1 if last == NONE else max(idx - last, 0)
        N[r, M_LAST] = idx
        F[r, M_LEVEL] = max(peak_db, F[r, M_LEVEL] - fall * frames, floor)
        if peak_db >= F[r, M_HOLD]:
            F[r, M_HOLD] = peak_db
            N[r, M_HOLD_UNTIL] = idx + hold_frames
        elif idx > N[r, M_HOLD_UNTIL]:
            falling = min(frames, idx - N[r, M_HOLD_UNTIL])
            F[r, M_HOLD] = max(peak_db, F[r, M_HOLD] - fall * falling, floor)
        if C[C_LOUDNESS] != 0.0:
            _loudness_add(r, kweighted[i] * k_scale, F, N, R, HC, HE)
        # VoiceDetector.pair
        if C[C_VAD] != 0.0 and C[C_SPECTRAL] != 0.0:
            loud = rms_db >= min_level
            if N[r, V_SECOND] == 0:
                for t in range(T):
                    P[r, t] = x[i, t]
                N[r, V_FIRST_LOUD] = 1 if loud else 0
                N[r, V_SECOND] = 1
            else:
                N[r, V_SECOND] = 0
                if loud or N[r, V_FIRST_LOUD]:
                    for t in range(T):  # Hann-windowed, as spectral_flatness does
                        blocks[m, t] = P[r, t] * WINDOW[t]
                        blocks[m, T + t] = x[i, t] * WINDOW[T + t]
                    pending[m] = i
                    m += 1
                else:
                    F[r, V_FLATNESS] = np.nan
    return m


@compiled(nb.float64(nb.int64, nb.float64, nb.float64[::1], nb.float64[:, ::1],
                    nb.int64[:, ::1]))
def _track_floor(r, level, C, F, N):  # pragma: no cover (compiled)
    """VoiceDetector._track_floor (and _next_sub_window)."""
    if level < F[r, V_SUB_MIN]:
        F[r, V_SUB_MIN] = level
    floor = F[r, V_SUB_MIN]
    for k in range(N[r, V_NSUB]):
        floor = min(floor, F[r, SUB + k])
    N[r, V_SUB_COUNT] += 1
    if N[r, V_SUB_COUNT] >= np.int64(C[C_SUB_LEN]):
        k = N[r, V_NSUB]
        if k + 1 >= _SUB_WINDOWS:  # append, then drop the oldest
            for j in range(k - 1):
                F[r, SUB + j] = F[r, SUB + j + 1]
            F[r, SUB + k - 1] = F[r, V_SUB_MIN]
        else:
            F[r, SUB + k] = F[r, V_SUB_MIN]
            N[r, V_NSUB] = k + 1
        F[r, V_SUB_MIN] = np.inf
        N[r, V_SUB_COUNT] = 0
    F[r, V_FLOOR] = floor
    return floor


@compiled(nb.void(nb.int64[::1], nb.int64[::1], nb.float64[::1], nb.float64[:, ::1],
                 nb.int64[:, ::1], nb.int8[::1], nb.int8[::1]))
def decide(rows, index, C, F, N, silence, voice):  # pragma: no cover (compiled)
    """Second half: the silence alarm and the voice decision of each frame (flatness
    measured in between). ``silence``: 1 raised, 2 cleared; ``voice``: 1 started,
    2 stopped; 0 no change."""
    threshold = C[C_SIL_THRESHOLD]
    after = np.int64(C[C_SIL_AFTER])
    clear_after = np.int64(C[C_SIL_CLEAR])
    vad_on = C[C_VAD] != 0.0
    margin = C[C_MARGIN]
    min_level = C[C_MIN_LEVEL]
    tonal_max = C[C_TONAL_MAX]
    flatness_max = C[C_FLATNESS_MAX]
    onset = np.int64(C[C_ONSET])
    hangover = np.int64(C[C_HANGOVER])
    alpha = C[C_ALPHA]
    for i in range(rows.shape[0]):
        r = rows[i]
        idx = index[i]
        rms_db = F[r, RMS_DB]
        # SilenceAlarm.update
        silence[i] = 0
        if rms_db < threshold:
            N[r, S_SILENT] = 1
            N[r, S_LOUD_SINCE] = NONE
            if N[r, S_QUIET_SINCE] == NONE:
                N[r, S_QUIET_SINCE] = idx
            if N[r, S_RAISED] == 0 and idx - N[r, S_QUIET_SINCE] + 1 >= after:
                N[r, S_RAISED] = 1
                silence[i] = 1
        else:
            N[r, S_SILENT] = 0
            N[r, S_QUIET_SINCE] = NONE
            if N[r, S_LOUD_SINCE] == NONE:
                N[r, S_LOUD_SINCE] = idx
            if N[r, S_RAISED] == 1 and idx - N[r, S_LOUD_SINCE] + 1 >= clear_after:
                N[r, S_RAISED] = 0
                silence[i] = 2
        # VoiceDetector.decide
        voice[i] = 0
        if vad_on:
            was = N[r, V_ACTIVE]
            loud = rms_db >= min_level
            floor = _track_floor(r, rms_db, C, F, N)
            voiced = False
            if loud:
                voiced = rms_db >= floor + margin
                flatness = F[r, V_FLATNESS]
                if not np.isnan(flatness):
                    if not np.isnan(tonal_max) and flatness <= tonal_max:
                        voiced = True
                    if not np.isnan(flatness_max) and flatness > flatness_max:
                        voiced = False
            if voiced:
                N[r, V_RUN] += 1
                if N[r, V_ACTIVE] or N[r, V_RUN] >= onset:
                    N[r, V_ACTIVE] = 1
                    N[r, V_LAST_VOICED] = idx
            else:
                N[r, V_RUN] = 0
                if N[r, V_ACTIVE] and idx - N[r, V_LAST_VOICED] > hangover:
                    N[r, V_ACTIVE] = 0
            F[r, V_RATIO] += alpha * (float(N[r, V_ACTIVE]) - F[r, V_RATIO])
            if N[r, V_ACTIVE] != was:
                voice[i] = 1 if N[r, V_ACTIVE] else 2
        N[r, FRAMES] += 1
        N[r, LAST_INDEX] = idx
