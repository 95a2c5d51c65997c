"""Sans-IO RTCP feedback: when to report (RFC 3550 §6.3, A.7) and what receivers told us.

An ingress sends receiver reports about the packets it got (:class:`SourceReception`
over ``ReceiverStats`` in ``packet.py`` makes the report blocks); an egress reads the
reports its listeners send back and keeps them in a :class:`RemoteReception`: how much
of what it sent they lost, their jitter, the round trip. Nothing here reads a clock:
callers pass the time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .packet import ReceiverStats
from .rtcp import ReportBlock, RtcpPacket, ntp_from_unix, ntp_middle32, report_block

#: RFC 3550 §6.2: the minimum interval between reports, and half of it for the first.
RTCP_MIN_INTERVAL_S = 5.0
#: A.7: the randomised interval is divided by e - 3/2 to compensate for timer reconsideration.
_COMPENSATION = math.e - 1.5


def rtcp_interval(
    members: int,
    senders: int,
    rtcp_bw: float,
    we_sent: bool,
    avg_rtcp_size: float,
    initial: bool,
    rand: Callable[[], float],
    min_interval: float = RTCP_MIN_INTERVAL_S,
) -> float:
    """Seconds to the next RTCP packet, as RFC 3550 Appendix A.7 ``rtcp_interval``.

    ``rtcp_bw`` is the session's RTCP bandwidth in octets per second (5 % of the session
    bandwidth), ``avg_rtcp_size`` the average compound packet size in octets (with UDP
    and IP headers), ``rand()`` uniform in [0, 1). A two-party audio session always gets
    the minimum: 5 s (2.5 s before the first report), randomised by 0.5-1.5 and
    divided by e - 3/2.
    """
    if initial:
        min_interval /= 2
    n = members
    if senders <= members * 0.25:  # senders get a quarter of the RTCP bandwidth
        if we_sent:
            rtcp_bw *= 0.25
            n = senders
        else:
            rtcp_bw *= 0.75
            n = members - senders
    interval = avg_rtcp_size * n / rtcp_bw if rtcp_bw > 0 else min_interval
    interval = max(interval, min_interval)
    return interval * (rand() + 0.5) / _COMPENSATION


@dataclass(slots=True)
class RemoteReception:
    """What one receiver of our RTP reported in its RTCP report blocks (RFC 3550 §6.4.1).

    ``loss_smoothed`` follows the reported fraction lost (0-1) with a short moving
    average, so one report of a burst does not swing an encoder's FEC setting alone.
    Times are on the caller's clock (``at`` monotonic; ``wall`` Unix time for the RTT).
    """

    reports: int = 0
    fraction_lost: float = 0.0  # the last report's, 0-1
    loss_smoothed: float = 0.0  # exponential moving average of fraction_lost
    cumulative_lost: int = 0
    highest_seq: int = 0
    jitter: int = 0  # in RTP timestamp units
    last_report: float | None = None  # monotonic arrival of the last report
    rtt: float | None = None  # seconds, from LSR/DLSR when the report echoes our SR

    #: Weight of a new report in ``loss_smoothed``: about the last three reports count.
    SMOOTHING = 0.3

    def update(self, block: ReportBlock, at: float, wall: float | None = None) -> None:
        """One report block about our stream, arrived at ``at`` (and ``wall`` Unix time:
        with it, and an LSR in the block, the round trip is measured, RFC 3550 §6.4.1)."""
        fraction = block.fraction_lost / 256
        if self.reports == 0:
            self.loss_smoothed = fraction
        else:
            self.loss_smoothed += (fraction - self.loss_smoothed) * self.SMOOTHING
        self.reports += 1
        self.fraction_lost = fraction
        self.cumulative_lost = block.cumulative_lost
        self.highest_seq = block.highest_seq
        self.jitter = block.jitter
        self.last_report = at
        if wall is not None and block.lsr:
            self.rtt = round_trip(block, wall)

    def age(self, now: float) -> float | None:
        return None if self.last_report is None else max(0.0, now - self.last_report)


def round_trip(block: ReportBlock, wall: float) -> float | None:
    """Round trip from a report block that echoes our SR: A - LSR - DLSR (§6.4.1 fig. 2),
    in seconds; None when it makes no sense (no SR echoed, clocks out of step)."""
    if not block.lsr:
        return None
    arrival = ntp_middle32(ntp_from_unix(wall))
    rtt = (arrival - block.lsr - block.dlsr) & 0xFFFFFFFF
    if rtt >= 1 << 31:  # negative: the report is older than its own delay says
        return None
    return rtt / 65536


def blocks_about(packets: Iterable[RtcpPacket], ssrc: int) -> list[ReportBlock]:
    """The report blocks about ``ssrc`` in a parsed compound (SRs' and RRs' alike)."""
    found = []
    for packet in packets:
        for block in getattr(packet, "reports", ()):
            if block.ssrc == ssrc:
                found.append(block)
    return found


class SourceReception:
    """Reception statistics of whatever source sends to us now (RFC 3550 A.1, A.3, A.8).

    A new SSRC starts new statistics (a restarted sender, a re-INVITE). An SR that came
    before the source's first RTP packet (RTCP is often first) is kept for it, so the
    first report already echoes it (LSR/DLSR: the sender measures its round trip).
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.stats: ReceiverStats | None = None
        self.reports = 0  # report blocks made
        self._early_sr: tuple[int, int, float] | None = None

    def packet(self, ssrc: int, sequence: int, timestamp: int, arrival: float) -> None:
        stats = self.stats
        if stats is None or stats.ssrc != ssrc:
            stats = self.stats = ReceiverStats(self.clock_rate, ssrc)
            early = self._early_sr
            if early is not None and early[0] == ssrc:
                stats.on_sender_report(early[1], early[2])
        stats.update(ssrc, sequence, timestamp, arrival)

    def sender_report(self, ssrc: int, ntp_timestamp: int, arrival: float) -> None:
        if self.stats is not None and self.stats.ssrc == ssrc:
            self.stats.on_sender_report(ntp_timestamp, arrival)
        else:
            self._early_sr = (ssrc, ntp_timestamp, arrival)

    def for_ssrc(self, ssrc: int) -> ReceiverStats | None:
        stats = self.stats
        return stats if stats is not None and stats.ssrc == ssrc else None

    def report_blocks(self, now: float) -> list[ReportBlock]:
        """The block for the next report (a new fraction-lost interval starts); none
        before the first packet."""
        stats = self.stats
        if stats is None or not stats.started:
            return []
        self.reports += 1
        return [report_block(stats, now)]
