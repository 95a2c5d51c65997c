"""All per-stream analysers behind one call per frame.

``StreamAnalyzer.process`` is what the stream's passive egress reader calls for every
frame; it converts the frame to float64 once and shares the mean square between the level,
silence and voice analysers. It reads no clock: time is the frame index (20 ms each).
``snapshot`` is for the API, metrics and the live meter feed: plain JSON-safe values
(finite floats rounded to 0.01 dB, ``None`` for "not yet defined").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.core.audio import FRAME_SECONDS
from gateway.processing.levels import FLOOR_DBFS, LevelMeter, power_db
from gateway.processing.loudness import LoudnessMeter, k_weighted_mean_squares
from gateway.processing.silence import SilenceAlarm
from gateway.processing.vad import VoiceDetector, spectral_flatness_rows

_FULL_SCALE = 32768.0


@dataclass(frozen=True, slots=True)
class AnalyzerConfig:
    """What to run and with which thresholds (all optional; defaults suit speech)."""

    silence_threshold_dbfs: float = -60.0
    silence_after_s: float = 5.0
    silence_clear_after_s: float = 0.0
    loudness: bool = True  # momentary / short-term
    integrated: bool = True  # lifetime gated loudness (needs loudness)
    vad: bool = True
    vad_spectral: bool = True  # flatness checks (tone kept, white/pink noise rejected)
    meter_hold_s: float = 1.0
    meter_fall_db_per_s: float = 20.0


#: Frames of silence after its last sender frame for which a stream is still analysed
#: frame by frame: the momentary window and the filter's ring-down (20 + a few frames)
#: and the voice hangover (10); after that, ``add_silence`` is exact and free.
SETTLE_FRAMES = 25


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _voice_event(active: bool, index: int) -> dict[str, Any]:
    return {"type": "voice", "state": "started" if active else "stopped", "frame": index,
            "at_s": round(index * FRAME_SECONDS, 6)}


class StreamAnalyzer:
    """Levels, meter ballistics, loudness, voice activity and the silence alarm of one
    stream, fed frame by frame."""

    def __init__(self, config: AnalyzerConfig | None = None) -> None:
        self.config = config = config or AnalyzerConfig()
        self.meter = LevelMeter(config.meter_hold_s, config.meter_fall_db_per_s)
        self.loudness = LoudnessMeter(config.integrated) if config.loudness else None
        self.silence = SilenceAlarm(
            config.silence_threshold_dbfs, config.silence_after_s, config.silence_clear_after_s
        )
        self.vad: VoiceDetector | None = None
        if config.vad:
            if config.vad_spectral:
                self.vad = VoiceDetector()
            else:
                self.vad = VoiceDetector(flatness_max=None, tonal_max=None)
        self.frames = 0
        self.last_index: int | None = None
        self.peak_dbfs = power_db(0.0)
        self.rms_dbfs = power_db(0.0)

    def process(self, index: int, frame: np.ndarray) -> list[dict[str, Any]]:
        """Analyse frame ``index`` (960 int16 samples); return the events it caused:
        ``silence`` raised/cleared and ``voice`` started/stopped."""
        events = analyse_batch([(self, index, frame)])[0]
        assert events is not None  # without ``failed``, a failure raises
        return events

    def _levels(self, index: int, peak: float, ms: float, kms: float | None) -> float:
        """The frame's level, meter, loudness and silence state from its measurements
        (peak in full-scale units, mean squares); returns its RMS level."""
        self.peak_dbfs = peak_db = power_db(peak * peak)
        self.rms_dbfs = rms_db = power_db(ms)
        self.meter.update(index, peak_db)
        if kms is not None and self.loudness is not None:
            self.loudness.add(kms)
        return rms_db

    def _decide(self, index: int, rms_db: float, events: list[dict[str, Any]]) -> None:
        event = self.silence.update(index, rms_db)
        if event is not None:
            events.append(event)
        vad = self.vad
        if vad is not None:
            was = vad.active
            if vad.decide(index, rms_db) != was:
                events.append(_voice_event(vad.active, index))
        self.frames += 1
        self.last_index = index

    def add_silence(self, first: int, last: int) -> list[dict[str, Any]]:
        """Frames ``first``..``last`` of digital silence at once, for an idle stream (one
        that has had nothing but silence for ``SETTLE_FRAMES`` before ``first``): the
        state and events, at their exact frames, of that many ``process`` calls."""
        frames = last - first + 1
        if frames <= 0:
            return []
        self.peak_dbfs = self.rms_dbfs = FLOOR_DBFS
        self.meter.update(last, FLOOR_DBFS)
        if self.loudness is not None:
            self.loudness.add_silence(frames)
        events = []
        event = self.silence.update_run(first, last, FLOOR_DBFS)
        if event is not None:
            events.append(event)
        if self.vad is not None:
            stopped = self.vad.add_silence(first, last, FLOOR_DBFS)
            if stopped is not None:
                events.append(_voice_event(False, stopped))
        self.frames += frames
        self.last_index = last
        return sorted(events, key=lambda e: e["frame"])

    def snapshot(self) -> dict[str, Any]:
        """Current values for the API / metrics / live meters."""
        loud = self.loudness
        vad = self.vad
        return {
            "frames": self.frames,
            "peak_dbfs": round(self.peak_dbfs, 2),
            "rms_dbfs": round(self.rms_dbfs, 2),
            "meter_dbfs": round(self.meter.level, 2),
            "peak_hold_dbfs": round(self.meter.hold, 2),
            "momentary_lufs": _r(loud.momentary) if loud else None,
            "short_term_lufs": _r(loud.short_term) if loud else None,
            "integrated_lufs": _r(loud.integrated) if loud else None,
            "voice": vad.active if vad else None,
            "voice_ratio": round(vad.ratio, 3) if vad else None,
            "silent": self.silence.silent,
            "silence_alarm": self.silence.raised,
        }


def analyse_batch(items: list[tuple[StreamAnalyzer, int, np.ndarray]],
                  failed: Callable[[int, Exception], None] | None = None,
                  ) -> list[list[dict[str, Any]] | None]:
    """One frame of each of many streams: ``(analyzer, index, frame)``; the events of
    each, in order. The arithmetic runs once over all the frames (peaks, mean squares,
    K-weighting with each stream's filter state, the voice detector's spectra), so its
    per-call cost is paid once per tick, not once per stream; the state machines that
    follow are each stream's own.

    With ``failed``, an exception in one stream's state machines is handed to it (with
    the item's position) and that stream's result is None; the others go on, each frame
    analysed once. Without it, the exception propagates."""
    if not items:
        return []
    x = np.array([frame for _, _, frame in items], dtype=np.float64)  # (n, 960)
    peaks = (np.abs(x).max(axis=1) / _FULL_SCALE).tolist()
    ms = (np.einsum("ij,ij->i", x, x) / (x.shape[1] * _FULL_SCALE * _FULL_SCALE)).tolist()
    loud = [i for i, (a, _, _) in enumerate(items) if a.loudness is not None]
    kms: list[float | None] = [None] * len(items)
    if loud:
        filters = [items[i][0].loudness.filter for i in loud]  # type: ignore[union-attr]
        rows = x if len(loud) == len(items) else x[loud]
        for i, value in zip(loud, k_weighted_mean_squares(rows, filters), strict=True):
            kms[i] = value
    out: list[list[dict[str, Any]] | None] = [[] for _ in items]
    levels = [0.0] * len(items)
    measured: list[tuple[VoiceDetector, np.ndarray]] = []
    for i, (analyzer, index, _) in enumerate(items):
        try:
            levels[i] = rms_db = analyzer._levels(index, peaks[i], ms[i], kms[i])
            vad = analyzer.vad
            if vad is not None and vad.spectral:
                block = vad.pair(x[i], rms_db >= vad.min_level_dbfs)
                if block is not None:
                    measured.append((vad, block))
        except Exception as exc:
            if failed is None:
                raise
            failed(i, exc)
            out[i] = None
    if measured:
        flatness = spectral_flatness_rows(np.array([b for _, b in measured])).tolist()
        for (vad, _), value in zip(measured, flatness, strict=True):
            vad.flatness = value
    for i, (analyzer, index, _) in enumerate(items):
        events = out[i]
        if events is None:
            continue
        try:
            analyzer._decide(index, levels[i], events)
        except Exception as exc:
            if failed is None:
                raise
            failed(i, exc)
            out[i] = None
    return out
