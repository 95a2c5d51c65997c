"""All per-stream analysers behind one call per frame.

``StreamAnalyzer.process`` is what the stream's passive egress reader calls for every
frame; it converts the frame to float64 once and shares the mean square between the level,
silence and voice analysers. It reads no clock: time is the frame index (20 ms each).
``snapshot`` is for the API, metrics and the live meter feed: plain JSON-safe values
(finite floats rounded to 0.01 dB, ``None`` for "not yet defined").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.core.audio import FRAME_SECONDS
from gateway.processing.levels import LevelMeter, mean_square, peak_of, power_db
from gateway.processing.loudness import LoudnessMeter
from gateway.processing.silence import SilenceAlarm
from gateway.processing.vad import VoiceDetector

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

    def process(self, index: int, frame: np.ndarray) -> list[dict[str, Any]]:
        """Analyse frame ``index`` (960 int16 samples); return the events it caused:
        ``silence`` raised/cleared and ``voice`` started/stopped."""
        x = frame.astype(np.float64)
        peak = peak_of(frame) / _FULL_SCALE
        self.peak_dbfs = peak_db = power_db(peak * peak)
        self.rms_dbfs = rms_db = power_db(mean_square(x))
        self.meter.update(index, peak_db)
        if self.loudness is not None:
            self.loudness.process(x)
        events: list[dict[str, Any]] = []
        event = self.silence.update(index, rms_db)
        if event is not None:
            events.append(event)
        vad = self.vad
        if vad is not None:
            was = vad.active
            if vad.update(index, x, rms_db) != was:
                events.append(
                    {
                        "type": "voice",
                        "state": "started" if vad.active else "stopped",
                        "frame": index,
                        "at_s": round(index * FRAME_SECONDS, 6),
                    }
                )
        self.frames += 1
        self.last_index = index
        return events

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
