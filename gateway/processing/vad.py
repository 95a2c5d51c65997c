"""A small energy-and-spectrum voice activity detector (not a neural VAD).

What it is. A frame is *voiced* when its RMS level is at least ``min_level_dbfs`` and

* it stands ``margin_db`` above an adaptive noise floor, or it is clearly tonal
  (spectral flatness ≤ ``tonal_max``: voiced speech, a tone, music), and
* it is not noise-like (flatness ≤ ``flatness_max``; white and pink noise read ≈0.45-0.57).

The noise floor is a minimum-statistics estimate: the lowest frame level over roughly the
last ``floor_window_s`` (the minima of four sub-windows, O(1) per frame), so steady noise
becomes "floor" within that window while speech, whose pauses keep pulling the minimum
down, stays above it. Flatness (Wiener entropy) is measured over 300-3400 Hz, the band
every source carries (telephone calls included), on consecutive 40 ms frame pairs; it is
skipped when both frames are below ``min_level_dbfs``, so silent streams cost almost
nothing. Activity starts after ``onset_s`` of voiced frames (a lone click does not count)
and a hangover keeps it ``hangover_s`` after the last one, bridging the gaps between
syllables.

What it is not. It does not recognise speech: tones, music and mains hum with in-band
harmonics count as activity, and so does a change in background noise until the floor has
caught up (up to ``floor_window_s``). Long unvoiced sounds (a sustained "sss", whispering)
are noise-like and vetoed. Use it for "is anyone talking / is there programme on this
stream" (meters, talk ratio, events), not for speech recognition endpointing.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from gateway.core.audio import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE

_WINDOW = np.hanning(2 * FRAME_SAMPLES)
_BIN_HZ = SAMPLE_RATE / (2 * FRAME_SAMPLES)  # 25 Hz
_BAND = slice(round(300 / _BIN_HZ), round(3400 / _BIN_HZ) + 1)
_SUB_WINDOWS = 4
_SILENT_FRAME = np.zeros(FRAME_SAMPLES)


def spectral_flatness(block: np.ndarray) -> float:
    """Geometric / arithmetic mean of the power spectrum over 300-3400 Hz of a Hann-windowed
    two-frame (40 ms, 25 Hz bins) block of int16-valued samples: ≈0.56 for white noise,
    → 0 for tones and voiced speech."""
    return float(flatness_of_windowed((block * _WINDOW)[np.newaxis])[0])


def flatness_of_windowed(windowed: np.ndarray) -> np.ndarray:
    """``spectral_flatness`` of each row of ``windowed``: many streams' frame pairs,
    already multiplied by the Hann window (the analysis bank's kernel does it as it
    copies them); ``windowed`` may be overwritten."""
    spectrum = scipy.fft.rfft(windowed, axis=1, overwrite_x=True)[:, _BAND]
    power = spectrum.real * spectrum.real
    power += spectrum.imag * spectrum.imag
    power += 1.0
    return np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)


class VoiceDetector:
    """Per-frame voice activity with hangover and a smoothed voice ratio (sans-IO)."""

    def __init__(
        self,
        margin_db: float = 10.0,
        min_level_dbfs: float = -55.0,
        floor_window_s: float = 2.0,
        hangover_s: float = 0.2,
        onset_s: float = 0.04,
        flatness_max: float | None = 0.35,
        tonal_max: float | None = 0.1,
        ratio_tau_s: float = 1.0,
        frame_s: float = FRAME_SECONDS,
    ) -> None:
        self.margin_db = margin_db
        self.min_level_dbfs = min_level_dbfs
        self.flatness_max = flatness_max
        self.tonal_max = tonal_max
        #: Measures flatness (a batch computes it for the frames ``pair`` returns).
        self.spectral = flatness_max is not None or tonal_max is not None
        self._sub_len = max(1, round(floor_window_s / frame_s / _SUB_WINDOWS))
        self._sub_mins: list[float] = []
        self._sub_min = math.inf
        self._sub_count = 0
        self._hangover = round(hangover_s / frame_s)
        self._onset = max(1, round(onset_s / frame_s))
        self._alpha = 1.0 - math.exp(-frame_s / ratio_tau_s)
        self._run = 0  # consecutive voiced frames
        self._last_voiced = 0
        self._block = np.zeros(2 * FRAME_SAMPLES)  # the frame pair for the flatness FFT
        self._second = False  # the next frame completes a pair
        self._first_loud = False
        #: True while voice is detected (hangover included).
        self.active = False
        #: Exponentially smoothed share of active frames (time constant ``ratio_tau_s``).
        self.ratio = 0.0
        self.noise_floor_dbfs = math.inf
        #: Flatness of the last measured frame pair (None if not measured: too quiet).
        self.flatness: float | None = None

    def update(self, index: int, samples: np.ndarray, level_dbfs: float) -> bool:
        """Feed frame ``index`` (960 int16-valued samples and their RMS level in dBFS);
        return whether voice is active."""
        if self.spectral:
            block = self.pair(samples, level_dbfs >= self.min_level_dbfs)
            if block is not None:
                self.flatness = spectral_flatness(block)
        return self.decide(index, level_dbfs)

    def pair(self, samples: np.ndarray, loud: bool) -> np.ndarray | None:
        """Keep the frame for the flatness of its pair: the two-frame block to measure
        when this frame completes a pair worth measuring (a batch of streams measures
        many at once and sets ``flatness``), else None. Flatness is over consecutive
        non-overlapping pairs (one FFT per 40 ms, half the cost of a sliding window)."""
        if not self._second:
            self._block[:FRAME_SAMPLES] = samples
            self._first_loud = loud
            self._second = True
            return None
        self._second = False
        if loud or self._first_loud:
            self._block[FRAME_SAMPLES:] = samples
            return self._block
        self.flatness = None  # nothing measured: stale values must not decide later
        return None

    def decide(self, index: int, level_dbfs: float) -> bool:
        """The frame's verdict from its level and the flatness measured so far."""
        loud = level_dbfs >= self.min_level_dbfs
        floor = self._track_floor(level_dbfs)
        voiced = False
        if loud:
            voiced = level_dbfs >= floor + self.margin_db
            flatness = self.flatness
            if flatness is not None:
                if self.tonal_max is not None and flatness <= self.tonal_max:
                    voiced = True
                if self.flatness_max is not None and flatness > self.flatness_max:
                    voiced = False
        if voiced:
            self._run += 1
            if self.active or self._run >= self._onset:
                self.active = True
                self._last_voiced = index
        else:
            self._run = 0
            if self.active and index - self._last_voiced > self._hangover:
                self.active = False
        self.ratio += self._alpha * (float(self.active) - self.ratio)
        return self.active

    def add_silence(self, first: int, last: int, level_dbfs: float) -> int | None:
        """Frames ``first``..``last`` all at ``level_dbfs`` (digital silence: the level
        floor) at once: the state as many ``update`` calls would leave it. Returns the
        frame at which voice stopped, if it did."""
        frames = last - first + 1
        if frames <= 0:
            return None
        if level_dbfs >= self.min_level_dbfs:  # not quiet: no shortcut
            was = self.active
            for index in range(first, last + 1):
                self.update(index, _SILENT_FRAME, level_dbfs)
                if was and not self.active:
                    return index
            return None
        if self.spectral:  # after two quiet frames, more pairs only flip the pair phase
            for _ in range(frames if frames <= 2 else 2 + frames % 2):
                self.pair(_SILENT_FRAME, False)
        self._skip_floor(frames, level_dbfs)
        self._run = 0
        active_until = last  # the last frame of the run still active (hangover)
        stopped = None
        if self.active:
            stop = self._last_voiced + self._hangover + 1
            if stop <= last:
                stopped = max(stop, first)
                active_until = stopped - 1
                self.active = False
        else:
            active_until = first - 1
        on = min(max(active_until - first + 1, 0), frames)
        keep = 1.0 - self._alpha
        self.ratio = 1.0 - (1.0 - self.ratio) * keep**on
        self.ratio *= keep ** (frames - on)
        return stopped

    def _skip_floor(self, frames: int, level_dbfs: float) -> None:
        """``_track_floor`` over ``frames`` frames at one level, a sub-window at a time;
        once every sub-window holds that level, whole sub-windows change nothing."""
        while frames > 0:
            take = min(frames, self._sub_len - self._sub_count)
            self._sub_min = min(self._sub_min, level_dbfs)
            self.noise_floor_dbfs = min([self._sub_min, *self._sub_mins])
            self._sub_count += take
            frames -= take
            if self._sub_count >= self._sub_len:
                self._next_sub_window()
                if frames > self._sub_len and all(m == level_dbfs for m in self._sub_mins) \
                        and len(self._sub_mins) == _SUB_WINDOWS - 1:
                    frames %= self._sub_len  # a steady state: skip whole sub-windows

    def _track_floor(self, level_dbfs: float) -> float:
        """Minimum statistics: the lowest level over the current and last sub-windows."""
        if level_dbfs < self._sub_min:
            self._sub_min = level_dbfs
        floor = min(self._sub_min, *self._sub_mins) if self._sub_mins else self._sub_min
        self._sub_count += 1
        if self._sub_count >= self._sub_len:
            self._next_sub_window()
        self.noise_floor_dbfs = floor
        return floor

    def _next_sub_window(self) -> None:
        self._sub_mins.append(self._sub_min)
        if len(self._sub_mins) >= _SUB_WINDOWS:
            del self._sub_mins[0]
        self._sub_min = math.inf
        self._sub_count = 0
