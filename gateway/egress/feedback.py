"""A listener's receiver reports: kept for the API, and passed to its shared encoder.

WHEP listeners (through aiortc's sender), SIP phones and RTP receivers that send RTCP
report how much of the stream they lost. Each listener keeps the latest in a
:class:`RemoteReception`, and its shared encoder hears the smoothed loss, so an Opus
encoder's in-band FEC follows the worst of its listeners (``codecs/fec_policy.py``).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable

from ..models.info import ReceptionInfo
from ..rtp.feedback import RemoteReception
from ..rtp.rtcp import ReportBlock
from .encoders import SharedEncoder


class ListenerFeedback:
    """One listener's reports about one of our RTP streams (``clock_rate`` for jitter)."""

    def __init__(self, key: Hashable, clock_rate: int) -> None:
        self.key = key
        self.clock_rate = clock_rate
        self.reception = RemoteReception()
        self.encoder: SharedEncoder | None = None

    def attach(self, encoder: SharedEncoder | None) -> None:
        """The encoder this listener hears now (None: none); the old one forgets it."""
        if self.encoder is not None and self.encoder is not encoder:
            self.encoder.forget_loss(self.key)
        self.encoder = encoder

    def detach(self) -> None:
        self.attach(None)

    def reports(self, blocks: Iterable[ReportBlock], rtt: float | None = None,
                wall: float | None = None) -> None:
        """Report blocks about our stream, just arrived. ``rtt`` when the caller knows it
        (aiortc measures it for WebRTC); else ``wall`` (Unix time) to measure it here."""
        now = time.monotonic()
        reception = self.reception
        for block in blocks:
            reception.update(block, now, wall)
        if rtt is not None:
            reception.rtt = rtt
        if reception.reports and self.encoder is not None:
            self.encoder.report_loss(self.key, reception.loss_smoothed, now)

    def info(self) -> ReceptionInfo | None:
        reception = self.reception
        if not reception.reports:
            return None
        return ReceptionInfo(
            reports=reception.reports,
            fraction_lost=round(reception.fraction_lost, 4),
            loss_smoothed=round(reception.loss_smoothed, 4),
            packets_lost=reception.cumulative_lost,
            jitter_ms=round(reception.jitter / self.clock_rate * 1000, 2),
            rtt_ms=round(reception.rtt * 1000, 1) if reception.rtt is not None else None,
            last_report_age_s=round(reception.age(time.monotonic()) or 0.0, 2),
        )
