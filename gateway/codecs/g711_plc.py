"""Packet loss concealment for G.711 in the style of ITU-T G.711 Appendix I.

G.711 carries no model of the voice, so a lost packet is rebuilt from the audio before
it: the pitch period of the last 20 ms is found by normalised cross-correlation, and the
last period is repeated (the last two, then three after 10 and 20 ms, so a long loss
does not buzz), full level for 10 ms, then 20 % quieter per 10 ms, silent after 60 ms.
The first good packet after a loss is cross-faded with the continued synthesis over
4 ms plus 4 ms per further 10 ms lost (10 ms at most).

Unlike the Appendix's reference code this adds no delay: instead of holding 3.75 ms of
output back to overlap-add the start of a loss, the step between the last real sample
and the synthesis is spread over a quarter period, so it sounds like the waveform's own
period-to-period change. Everything runs at 8 kHz, per packet, in numpy.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

RATE = 8000
PITCH_MIN = 40  # 200 Hz
PITCH_MAX = 120  # 66.7 Hz
CORRELATION = 160  # 20 ms of audio matched against the history
HISTORY = 390  # 48.75 ms: three longest periods, a quarter more, for the longest loss
BLOCK = 80  # 10 ms: the period count and the attenuation change per block
SILENT_AFTER = 6 * BLOCK  # 60 ms


def find_pitch(history: np.ndarray) -> int:
    """Period (samples) that best predicts the last 20 ms from the audio before it."""
    x = history.astype(np.float64)
    target = x[-CORRELATION:]
    # candidates[j] is the 20 ms window PITCH_MAX - j samples before the target
    span = x[-CORRELATION - PITCH_MAX : len(x) - PITCH_MIN]
    windows = sliding_window_view(span, CORRELATION)
    dots = windows @ target
    energy = np.einsum("ij,ij->i", windows, windows)
    score = dots / np.sqrt(energy + 1e-9)
    # multiples of the period match as well as the period: of the peaks that come within
    # 5 % of the best match, take the shortest lag (the last index: lags fall with it)
    padded = np.concatenate(([-np.inf], score, [-np.inf]))
    peak = (score >= padded[:-2]) & (score >= padded[2:])
    best = score.max()
    good = np.flatnonzero(peak & (score >= best - 0.05 * abs(best)))
    return PITCH_MAX - int(good[-1])


class G711Concealer:
    """Feeds on every good packet (``received``), makes audio for lost ones (``conceal``)."""

    def __init__(self) -> None:
        self._history = np.zeros(HISTORY, dtype=np.float64)
        self._source = self._history  # the history as it was when the loss began
        self._erased = 0  # samples concealed in the current loss (0: none running)
        self._pitch = PITCH_MAX
        self._periods = 0
        self._buffer = np.zeros(0)
        self._pos = 0

    def _remember(self, pcm: np.ndarray) -> None:
        n = len(pcm)
        if n >= HISTORY:
            self._history[:] = pcm[-HISTORY:]
        elif n:
            self._history[:-n] = self._history[n:]
            self._history[-n:] = pcm

    def _period_buffer(self, periods: int) -> np.ndarray:
        """The last ``periods`` pitch periods, their end cross-faded into the samples one
        period earlier so that repeating the buffer has no seam."""
        p = self._pitch
        h = self._source
        buf = h[len(h) - periods * p :].copy()
        quarter = max(1, p // 4)
        w = np.arange(1, quarter + 1) / quarter
        earlier = h[len(h) - p - quarter : len(h) - p]
        buf[-quarter:] = buf[-quarter:] * (1 - w) + earlier * w
        return buf

    def _synthesize(self, n: int) -> np.ndarray:
        """``n`` more samples of the running loss's synthesis (attenuated)."""
        out = np.empty(n)
        done = 0
        while done < n:
            t = self._erased + done
            periods = min(3, 1 + t // BLOCK)
            if periods != self._periods:  # one more period: same waveform, new loop length
                if self._periods:
                    self._pos += (periods - self._periods) * self._pitch
                self._periods = periods
                self._buffer = self._period_buffer(periods)
            m = min(n - done, BLOCK - t % BLOCK)
            idx = (self._pos + np.arange(m)) % len(self._buffer)
            self._pos = (self._pos + m) % len(self._buffer)
            ts = t + np.arange(m)
            gain = np.clip(1.0 - 0.2 * (ts - BLOCK) / BLOCK, 0.0, 1.0)
            out[done : done + m] = self._buffer[idx] * gain
            done += m
        return out

    def conceal(self, n: int) -> np.ndarray:
        """``n`` samples standing in for a lost packet."""
        if self._erased == 0:
            self._source = self._history.copy()
            self._pitch = find_pitch(self._source)
            self._periods = 0
            self._pos = 0
        start = self._erased
        if start >= SILENT_AFTER:
            out = np.zeros(n)
        else:
            out = self._synthesize(n)
        if start == 0:  # spread the step from the last real sample over a quarter period
            h = self._history
            step = h[-1] - h[-1 - self._pitch]
            ramp = max(1, self._pitch // 4)
            k = min(ramp, n)
            out[:k] += step * (1 - np.arange(k) / ramp)
        self._erased += n
        self._remember(out)
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    def received(self, pcm: np.ndarray) -> np.ndarray:
        """A good packet; the first after a loss is faded in from the synthesis."""
        if self._erased:
            fade = min(BLOCK, 32 + 32 * max(0, (self._erased - 1) // BLOCK), len(pcm))
            if self._erased < SILENT_AFTER and fade:
                tail = self._synthesize(fade)
            else:
                tail = np.zeros(fade)
            w = np.arange(1, fade + 1) / (fade + 1)
            mixed = pcm.astype(np.float64)
            mixed[:fade] = mixed[:fade] * w + tail * (1 - w)
            pcm = np.clip(np.round(mixed), -32768, 32767).astype(np.int16)
            self._erased = 0
        self._remember(pcm)
        return pcm
