"""The analysers' state of every stream analysed frame by frame, as rows of arrays.

A ``StreamAnalyzer`` keeps its state in its own objects (meter, loudness meter, silence
alarm, voice detector) while its stream is idle; while the stream is analysed frame by
frame the state lives in a row of an ``AnalysisBank`` so that one compiled kernel call
(``kernels.levels`` / ``kernels.decide``) advances every stream at once. ``load`` and
``store`` move a stream's state between the two, exactly; the analyzer stores its row
back before anything reads or changes its objects (snapshot, idle silence).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gateway.core.audio import FRAME_SAMPLES, FRAME_SECONDS
from gateway.processing import kernels as k
from gateway.processing.loudness import _HIST_BINS, SHORT_TERM_FRAMES, gated_loudness
from gateway.processing.vad import flatness_of_windowed

Events = list[dict[str, Any]]
#: A ``StreamAnalyzer`` (analyzer.py builds on this module).
StreamAnalyzer = Any


def _none(value: int | None) -> int:
    return k.NONE if value is None else value


def _opt(value: int) -> int | None:
    return None if value == k.NONE else int(value)


def _off(value: float | None) -> float:
    return np.nan if value is None else value


class AnalysisBank:
    """Rows of analyser state for streams whose analysers are set up as ``template``'s
    (one ``AnalyzerConfig``); grows by doubling, reuses freed rows."""

    F: np.ndarray  # the kernels' matrices (kernels.py says what each holds)
    N: np.ndarray
    R: np.ndarray
    P: np.ndarray
    HC: np.ndarray
    HE: np.ndarray

    def __init__(self, template: StreamAnalyzer) -> None:
        c = np.zeros(k.C_SIZE)
        meter, silence, vad = template.meter, template.silence, template.vad
        c[k.C_FALL] = meter.fall_db_per_s * meter.frame_s
        c[k.C_HOLD_FRAMES] = round(meter.hold_s / meter.frame_s)
        c[k.C_METER_FLOOR] = meter.floor
        c[k.C_SIL_THRESHOLD] = silence.threshold_dbfs
        c[k.C_SIL_AFTER] = silence._after
        c[k.C_SIL_CLEAR] = silence._clear_after
        c[k.C_LOUDNESS] = template.loudness is not None
        c[k.C_VAD] = vad is not None
        if vad is not None:
            c[k.C_MARGIN] = vad.margin_db
            c[k.C_MIN_LEVEL] = vad.min_level_dbfs
            c[k.C_SUB_LEN] = vad._sub_len
            c[k.C_HANGOVER] = vad._hangover
            c[k.C_ONSET] = vad._onset
            c[k.C_ALPHA] = vad._alpha
            c[k.C_FLATNESS_MAX] = _off(vad.flatness_max)
            c[k.C_TONAL_MAX] = _off(vad.tonal_max)
            c[k.C_SPECTRAL] = vad.spectral
        self.settings = c
        self._free: list[int] = []
        self._size = 0
        self._allocate(16)

    def _allocate(self, rows: int) -> None:
        def grown(name: str, columns: int, dtype: Any) -> None:
            new = np.zeros((rows, columns), dtype=dtype)  # untouched pages cost no memory
            old = getattr(self, name, None)
            if old is not None:
                new[: len(old)] = old
            setattr(self, name, new)

        grown("F", k.F_COLUMNS, np.float64)
        grown("N", k.N_COLUMNS, np.int64)
        grown("R", SHORT_TERM_FRAMES, np.float64)
        grown("P", FRAME_SAMPLES, np.float64)
        grown("HC", _HIST_BINS, np.int64)
        grown("HE", _HIST_BINS, np.float64)
        self._blocks = np.empty((rows, 2 * FRAME_SAMPLES))
        self._pending = np.empty(rows, dtype=np.int64)
        self._free.extend(range(rows - 1, self._size - 1, -1))
        self._size = rows

    # -- moving a stream's state in and out ----------------------------------------------
    def load(self, a: StreamAnalyzer) -> int:
        """Give ``a`` a row holding its state (stored back from another bank first)."""
        if a._bank is not None:
            a.release()
        if not self._free:
            self._allocate(2 * self._size)
        r = self._free.pop()
        try:
            self._load(a, r)
        except Exception:
            self._free.append(r)
            raise
        a._bank, a._row = self, r
        return r

    def _load(self, a: StreamAnalyzer, r: int) -> None:
        F, N = self.F[r], self.N[r]
        F[:] = 0.0
        N[:] = 0
        F[k.PEAK_DB], F[k.RMS_DB] = a.peak_dbfs, a.rms_dbfs
        N[k.FRAMES], N[k.LAST_INDEX] = a.frames, _none(a.last_index)
        m = a.meter
        F[k.M_LEVEL], F[k.M_HOLD] = m.level, m.hold
        N[k.M_HOLD_UNTIL], N[k.M_LAST] = m._hold_until, _none(m._last)
        loud = a.loudness
        if loud is not None:
            F[k.KZ:k.KZ + 4] = loud.filter.state
            self.R[r] = loud._ring
            N[k.L_FRAMES], N[k.L_GATED_COUNT] = loud._frames, loud._gated_count
            F[k.L_M_SUM], F[k.L_S_SUM] = loud._m_sum, loud._s_sum
            F[k.L_GATED_ENERGY] = loud._gated_energy
            if not loud._integrated:
                N[k.L_HIST] = -1
            elif loud._hist_count is not None and loud._hist_energy is not None:
                self.HC[r] = loud._hist_count
                self.HE[r] = loud._hist_energy
                N[k.L_HIST] = 1
        s = a.silence
        N[k.S_RAISED], N[k.S_SILENT] = s.raised, s.silent
        N[k.S_QUIET_SINCE], N[k.S_LOUD_SINCE] = _none(s._quiet_since), _none(s._loud_since)
        v = a.vad
        if v is not None:
            subs = v._sub_mins
            F[k.SUB:k.SUB + len(subs)] = subs
            N[k.V_NSUB] = len(subs)
            F[k.V_SUB_MIN], N[k.V_SUB_COUNT] = v._sub_min, v._sub_count
            N[k.V_RUN], N[k.V_LAST_VOICED] = v._run, v._last_voiced
            N[k.V_SECOND], N[k.V_FIRST_LOUD] = v._second, v._first_loud
            N[k.V_ACTIVE] = v.active
            F[k.V_RATIO], F[k.V_FLOOR] = v.ratio, v.noise_floor_dbfs
            F[k.V_FLATNESS] = _off(v.flatness)
            self.P[r] = v._block[:FRAME_SAMPLES]

    def store(self, a: StreamAnalyzer, full: bool = True) -> None:
        """Write ``a``'s row back into its objects (the row stays ``a``'s). Not ``full``:
        only what ``snapshot`` and ``silence.due`` read (the loudness ring, filter state,
        histogram and the voice detector's pending frame stay in the row: the objects are
        read, not advanced, until the row is released with a full store)."""
        r = a._row
        assert a._bank is self and r is not None
        F, N = self.F[r].tolist(), self.N[r].tolist()
        a.peak_dbfs, a.rms_dbfs = F[k.PEAK_DB], F[k.RMS_DB]
        a.frames, a.last_index = N[k.FRAMES], _opt(N[k.LAST_INDEX])
        m = a.meter
        m.level, m.hold = F[k.M_LEVEL], F[k.M_HOLD]
        m._hold_until, m._last = N[k.M_HOLD_UNTIL], _opt(N[k.M_LAST])
        loud = a.loudness
        if loud is not None:
            loud._frames, loud._gated_count = N[k.L_FRAMES], N[k.L_GATED_COUNT]
            loud._m_sum, loud._s_sum = F[k.L_M_SUM], F[k.L_S_SUM]
            loud._gated_energy = F[k.L_GATED_ENERGY]
            if full:
                loud.filter.state = np.array(F[k.KZ:k.KZ + 4])
                loud._ring = self.R[r].tolist()
                if N[k.L_HIST] == 1:
                    loud._hist_count = self.HC[r].copy()
                    loud._hist_energy = self.HE[r].copy()
                    loud._dirty = True
            elif N[k.L_DIRTY]:  # blocks were added: the integrated loudness changed
                loud._cached = gated_loudness(self.HC[r], self.HE[r], N[k.L_GATED_COUNT],
                                              F[k.L_GATED_ENERGY])
                loud._dirty = False
                self.N[r, k.L_DIRTY] = 0
        s = a.silence
        s.raised, s.silent = bool(N[k.S_RAISED]), bool(N[k.S_SILENT])
        s._quiet_since, s._loud_since = _opt(N[k.S_QUIET_SINCE]), _opt(N[k.S_LOUD_SINCE])
        v = a.vad
        if v is not None:
            v.active = bool(N[k.V_ACTIVE])
            v.ratio, v.noise_floor_dbfs = F[k.V_RATIO], F[k.V_FLOOR]
            if full:
                v._sub_mins = F[k.SUB:k.SUB + N[k.V_NSUB]]
                v._sub_min, v._sub_count = F[k.V_SUB_MIN], N[k.V_SUB_COUNT]
                v._run, v._last_voiced = N[k.V_RUN], N[k.V_LAST_VOICED]
                v._second, v._first_loud = bool(N[k.V_SECOND]), bool(N[k.V_FIRST_LOUD])
                flatness = F[k.V_FLATNESS]
                v.flatness = None if flatness != flatness else flatness  # NaN: not measured
                v._block[:FRAME_SAMPLES] = self.P[r]

    def free(self, a: StreamAnalyzer) -> None:
        """Give ``a``'s row back (its objects keep whatever was last stored)."""
        if a._bank is self and a._row is not None:
            self._free.append(a._row)
        a._bank = a._row = None

    # -- one frame of many streams -------------------------------------------------------
    def analyse(self, items: list[tuple[StreamAnalyzer, int, np.ndarray]],
                failed: Callable[[int, Exception], None] | None = None,
                ) -> list[Events | None]:
        """Frame ``index`` of each ``(analyzer, index, frame)``; the events of each, in
        order. Analyzers not in this bank yet are loaded (and stay). With ``failed``, a
        stream whose state cannot be loaded is handed to it and its result is None."""
        out: list[Events | None] = [[] for _ in items]
        rows = [a._row if a._bank is self else -1 for a, _, _ in items]
        keep: Sequence[int] = range(len(items))
        if -1 in rows:  # newcomers: load them (a failure drops that stream only)
            kept = []
            for i, (a, _, _) in enumerate(items):
                if rows[i] < 0:
                    try:
                        rows[i] = self.load(a)
                    except Exception as exc:
                        if failed is None:
                            raise
                        failed(i, exc)
                        out[i] = None
                        continue
                kept.append(i)
            if not kept:
                return out
            if len(kept) < len(items):
                items = [items[i] for i in kept]
                rows = [rows[i] for i in kept]
            keep = kept
        frames = np.array([frame for _, _, frame in items], dtype=np.int16)
        row_array = np.array(rows, dtype=np.int64)
        index = np.array([index for _, index, _ in items], dtype=np.int64)
        c = self.settings
        m = k.levels(frames, row_array, index, c, self.F, self.N, self.R, self.P, self.HC,
                     self.HE, self._blocks, self._pending)
        if m:
            measured = row_array[self._pending[:m]]
            self.F[measured, k.V_FLATNESS] = flatness_of_windowed(self._blocks[:m])
        silence = np.empty(len(items), dtype=np.int8)
        voice = np.empty(len(items), dtype=np.int8)
        k.decide(row_array, index, c, self.F, self.N, silence, voice)
        for j in np.flatnonzero(silence | voice).tolist():
            a, at, _ = items[j]
            events = out[keep[j]]
            assert events is not None
            if silence[j]:
                events.append(a.silence._event("raised" if silence[j] == 1 else "cleared", at))
            if voice[j]:
                events.append(_voice_event(voice[j] == 1, at))
        return out


def _voice_event(active: bool, index: int) -> dict[str, Any]:
    return {"type": "voice", "state": "started" if active else "stopped", "frame": index,
            "at_s": round(index * FRAME_SECONDS, 6)}
