"""All per-stream analysers behind one call per frame.

A ``StreamAnalyzer`` holds the state of one stream's level meter, loudness meter, silence
alarm and voice detector. Many streams' frames are analysed at once by an
``AnalysisBank`` (their state in rows of arrays, advanced by compiled kernels) while
those streams have senders; an idle stream's state stays in its objects, where its
silence is added at once (``add_silence``). ``process`` is the one-stream convenience.
Time is the frame index (20 ms each): nothing here reads a clock. ``snapshot`` is for
the API, metrics and the live meter feed: plain JSON-safe values (finite floats rounded
to 0.01 dB, ``None`` for "not yet defined").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.processing.bank import AnalysisBank, _voice_event
from gateway.processing.levels import FLOOR_DBFS, LevelMeter, power_db
from gateway.processing.loudness import LoudnessMeter
from gateway.processing.silence import SilenceAlarm
from gateway.processing.vad import VoiceDetector


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
        #: Where the state lives while the stream is analysed frame by frame (None: in
        #: the objects above).
        self._bank: AnalysisBank | None = None
        self._row: int | None = None

    def process(self, index: int, frame: np.ndarray) -> list[dict[str, Any]]:
        """Analyse frame ``index`` (960 int16 samples); return the events it caused:
        ``silence`` raised/cleared and ``voice`` started/stopped."""
        events = analyse_batch([(self, index, frame)])[0]
        assert events is not None  # without ``failed``, a failure raises
        return events

    def sync(self) -> None:
        """Bring what ``snapshot`` and ``silence.due`` read up to date with the bank row
        the state lives in, if any (the rest follows when the row is released)."""
        if self._bank is not None:
            self._bank.store(self, full=False)

    def release(self) -> None:
        """Move the state out of its bank row into the objects, and give the row back."""
        if self._bank is not None:
            self._bank.store(self)
            self._bank.free(self)

    def discard(self) -> None:
        """Give the bank row back without reading it (the analyser is being dropped)."""
        if self._bank is not None:
            self._bank.free(self)

    def add_silence(self, first: int, last: int) -> list[dict[str, Any]]:
        """Frames ``first``..``last`` of digital silence at once, for an idle stream (one
        that has had nothing but silence for ``SETTLE_FRAMES`` before ``first``): the
        state and events, at their exact frames, of that many ``process`` calls."""
        frames = last - first + 1
        if frames <= 0:
            return []
        self.release()
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
        self.sync()
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


_banks: dict[AnalyzerConfig, AnalysisBank] = {}


def bank_for(config: AnalyzerConfig) -> AnalysisBank:
    """A new bank for analyzers of ``config``."""
    return AnalysisBank(StreamAnalyzer(config))


def analyse_batch(items: list[tuple[StreamAnalyzer, int, np.ndarray]],
                  failed: Callable[[int, Exception], None] | None = None,
                  ) -> list[list[dict[str, Any]] | None]:
    """One frame of each of many streams: ``(analyzer, index, frame)``; the events of
    each, in order, with every state back in its analyzer's objects afterwards (a
    convenience: a long-lived ``AnalysisBank`` keeps the state in its rows between
    frames, which is what makes a tick cheap)."""
    out: list[list[dict[str, Any]] | None] = [None] * len(items)
    by_config: dict[AnalyzerConfig, list[int]] = {}
    for i, (analyzer, _, _) in enumerate(items):
        by_config.setdefault(analyzer.config, []).append(i)
    for config, positions in by_config.items():
        bank = _banks.get(config)
        if bank is None:
            bank = _banks[config] = bank_for(config)
        chosen = [items[i] for i in positions]

        def lost(j: int, exc: Exception, positions: list[int] = positions) -> None:
            assert failed is not None
            failed(positions[j], exc)

        try:
            results = bank.analyse(chosen, lost if failed else None)
        finally:
            for analyzer, _, _ in chosen:
                if analyzer._bank is bank:
                    analyzer.release()
        for i, events in zip(positions, results, strict=True):
            out[i] = events
    return out
