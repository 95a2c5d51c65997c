"""Packet-loss concealment for decoded audio: fade the last good packet out.

Repeating the last packet at falling gain hides a single loss without a click;
after a few consecutive losses it reaches silence instead of buzzing.
"""

from __future__ import annotations

import numpy as np

from ..core.audio import FRAME_SAMPLES

GAINS = (0.7, 0.4, 0.15)


class Concealer:
    def __init__(self) -> None:
        self._last = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._run = 0
        self.concealed = 0

    def remember(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._last = pcm
        self._run = 0

    def conceal(self) -> np.ndarray:
        """One packet's worth of replacement audio."""
        self.concealed += 1
        gain = GAINS[self._run] if self._run < len(GAINS) else 0.0
        self._run += 1
        if gain == 0.0:
            return np.zeros(len(self._last), dtype=np.int16)
        return (self._last * gain).astype(np.int16)
