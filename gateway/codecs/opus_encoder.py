"""The shared Opus encoder: libopus (``libopus.OpusEncoder``) cut to the packet time, with
in-band FEC that follows listeners' reported loss.

Set up as the PyAV encoder was (application audio, constrained VBR, complexity 10, full
band); FEC is off until a listener reports loss (``set_expected_loss``).
"""

from __future__ import annotations

import numpy as np

from .libopus import APPLICATION_AUDIO, RATE, OpusEncoder


class LibOpusEncoder:
    """Mono 48 kHz Opus, one packet per ``frame_ms`` of samples; FEC switchable live."""

    def __init__(self, bitrate: int = 64000, frame_ms: int = 20) -> None:
        # constrained VBR: on a steady tone free VBR runs 30 % over the bit rate;
        # listeners' links and the cluster's budget need the rate asked for
        self._encoder = OpusEncoder(bitrate, fec=False, loss_percent=0,
                                    application=APPLICATION_AUDIO, complexity=10,
                                    constrained_vbr=True)
        self.frame_samples = RATE * frame_ms // 1000
        self.fec = False
        self.loss_percent = 0
        self._pending = np.zeros(0, dtype=np.int16)

    def set_expected_loss(self, percent: int) -> None:
        """Protect the next packets against ``percent`` loss (0: in-band FEC off).

        libopus adds LBRR (a low-rate copy of the previous frame, RFC 6716 §2.1.7) in
        SILK and hybrid modes, and leans towards them when FEC is on and loss is expected.
        """
        percent = max(0, min(100, int(percent)))
        if percent == self.loss_percent:
            return
        self._encoder.set_loss_percent(percent)
        fec = percent > 0
        if fec != self.fec:
            self._encoder.set_fec(fec)
            self.fec = fec
        self.loss_percent = percent

    def encode_packets(self, pcm: np.ndarray) -> list[bytes]:
        """Packets for every whole frame of the samples so far (a 20 ms frame at 40 ms
        packets makes one every other call; at 10 ms, two per call)."""
        if len(self._pending):
            pcm = np.concatenate((self._pending, pcm))
        size = self.frame_samples
        packets = []
        start = 0
        while len(pcm) - start >= size:
            packets.append(self._encoder.encode(pcm[start:start + size]))
            start += size
        self._pending = pcm[start:].copy() if start < len(pcm) else pcm[:0]
        return packets
