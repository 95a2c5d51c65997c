"""From arriving RTP payloads to one canonical frame per media clock tick.

Shared by every ingress that receives RTP (WebRTC, plain RTP, SIP): the jitter buffer
orders and bounds, decoders turn payloads into 48 kHz samples, a small sample queue
re-cuts any packet time to 20 ms frames, and losses are concealed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..codecs.spec import CodecSpec
from ..codecs.transcode import Decoder, make_decoder
from ..core.audio import FRAME_SAMPLES
from ..rtp.jitter import JitterBuffer, Pop
from .concealment import Concealer


class Playout:
    def __init__(self, codecs: dict[int, CodecSpec], min_depth: int = 1, max_depth: int = 3):
        self.codecs = dict(codecs)  # payload type -> codec
        self.jitter = JitterBuffer(min_depth=min_depth, max_depth=max_depth)
        self.last_packet: float | None = None  # monotonic time of the last packet
        self.unknown_payload = 0
        self.frames = 0
        self.delay_ms_max = 0.0
        self.delay_ms_avg = 0.0
        self._decoders: dict[int, Decoder] = {}
        self._fifo = np.zeros(0, dtype=np.int16)
        self._conceal = Concealer()

    def push(self, seq: int, payload_type: int, payload: bytes, ssrc: int) -> None:
        """One arrived packet (called per packet on the event loop)."""
        if payload_type not in self.codecs:
            self.unknown_payload += 1
            return
        now = time.monotonic()
        self.last_packet = now
        self.jitter.push(seq, (payload_type, payload, now), ssrc)

    def pull(self) -> np.ndarray | None:
        """This tick's frame, or None if nothing is there to play."""
        while len(self._fifo) < FRAME_SAMPLES:
            got = self.jitter.pop()
            if got is Pop.EMPTY:
                return None
            if got is Pop.LOST:
                pcm = self._conceal.conceal()
            else:
                pt, payload, arrived = got
                pcm = self._decoder(pt).decode(payload)
                self._conceal.remember(pcm)
                self._note_delay(time.monotonic() - arrived)
            self._fifo = pcm if not len(self._fifo) else np.concatenate((self._fifo, pcm))
        frame, self._fifo = self._fifo[:FRAME_SAMPLES], self._fifo[FRAME_SAMPLES:]
        self.frames += 1
        return frame

    def _decoder(self, pt: int) -> Decoder:
        decoder = self._decoders.get(pt)
        if decoder is None:
            decoder = self._decoders[pt] = make_decoder(self.codecs[pt])
        return decoder

    def _note_delay(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self.delay_ms_max = max(self.delay_ms_max, ms)
        self.delay_ms_avg += (ms - self.delay_ms_avg) / 16.0

    def info(self) -> dict[str, Any]:
        stats = self.jitter.stats
        return {
            "frames": self.frames,
            "packets": stats.received,
            "lost": stats.lost,
            "late": stats.late,
            "concealed": stats.concealed,
            "underruns": stats.underruns,
            "unknown_payload": self.unknown_payload,
            "jitter_target_ms": self.jitter.target * 20,
            "delay_ms_avg": round(self.delay_ms_avg, 1),
            "delay_ms_max": round(self.delay_ms_max, 1),
        }
