"""Sans-IO RTCP feedback: the report interval (RFC 3550 A.7), interarrival jitter (A.8)
against a hand computation and against aiortc's receiver, what listeners report, and the
shared encoder's FEC policy."""

from __future__ import annotations

import math

import pytest
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket as AiortcPacket

from gateway.codecs.fec_policy import FecPolicy
from gateway.rtp.feedback import (
    RemoteReception,
    SourceReception,
    blocks_about,
    round_trip,
    rtcp_interval,
)
from gateway.rtp.packet import ReceiverStats
from gateway.rtp.rtcp import ReceiverReport, ReportBlock, SenderReport, ntp_from_unix, ntp_middle32
from gateway.webrtc.aiortc_patches import _ReceptionMap

COMPENSATION = math.e - 1.5


def test_rtcp_interval_two_party_session_is_the_minimum():
    mid = lambda: 0.5  # noqa: E731  (rand() + 0.5 == 1)
    assert rtcp_interval(2, 1, 400, False, 100, False, mid) == pytest.approx(5 / COMPENSATION)
    assert rtcp_interval(2, 1, 400, False, 100, True, mid) == pytest.approx(2.5 / COMPENSATION)
    assert rtcp_interval(2, 1, 400, False, 100, False, lambda: 0.0) == pytest.approx(
        2.5 / COMPENSATION)  # randomised over [0.5, 1.5] x
    assert rtcp_interval(2, 1, 400, False, 100, False, lambda: 0.999) == pytest.approx(
        5 * 1.499 / COMPENSATION)


def test_rtcp_interval_large_session_shares_the_bandwidth():
    # 1000 members, 1 sender: receivers share 3/4 of 400 octets/s, 100-octet reports
    mid = lambda: 0.5  # noqa: E731
    receiver = rtcp_interval(1000, 1, 400, False, 100, False, mid)
    assert receiver == pytest.approx(999 * 100 / 300 / COMPENSATION)
    sender = rtcp_interval(1000, 1, 400, True, 100, False, mid)  # a quarter for 1 sender
    assert sender == pytest.approx(5 / COMPENSATION)  # 1 * 100 / 100 = 1 s < 5 s minimum


def test_jitter_follows_a8_by_hand():
    """8 kHz, 20 ms packets; packet 2 arrives 10 ms late: D = +80 then -80 units.
    J1 = 80/16 = 5; J2 = 5 + (80 - 5)/16 = 9.6875; then on time again: J3 = J2 * 15/16."""
    stats = ReceiverStats(8000)
    arrivals = [0.0, 0.020, 0.050, 0.060, 0.080]
    for seq, arrival in enumerate(arrivals):
        stats.update(1, seq, 160 * seq, arrival)
    assert stats._jitter == pytest.approx(9.6875 * 15 / 16)
    assert stats.jitter == 9 and stats.jitter_seconds == pytest.approx(9.08203125 / 8000)


def test_numbers_match_aiortcs_receiver_until_the_sequence_wraps():
    """Same packets (loss, reordering, jitter) into ours and aiortc's StreamStatistics:
    same loss, fraction and jitter (within aiortc's integer rounding); after a wrap
    aiortc's 'highest sequence' lacks the wrap count, ours has it."""
    ours, theirs = ReceiverStats(48000), StreamStatistics(48000)
    import aiortc.rtcrtpreceiver as receiver_module

    clock = {"now": 1000.0}
    real_time = receiver_module.time.time
    receiver_module.time.time = lambda: clock["now"]
    try:
        seqs = [s for s in range(65400, 65700) if s % 17 != 3]
        for i, seq in enumerate(seqs):
            clock["now"] = 1000.0 + (seq - 65400) * 0.02 + (0.004 if i % 5 == 0 else 0.0)
            packet = AiortcPacket(sequence_number=seq % 65536, timestamp=960 * seq % (1 << 32),
                                  ssrc=9)
            theirs.add(packet)
            ours.update(9, seq % 65536, packet.timestamp, clock["now"])
    finally:
        receiver_module.time.time = real_time
    assert ours.cumulative_lost == theirs.packets_lost > 0
    assert ours.fraction_lost() == theirs.fraction_lost
    assert abs(ours.jitter - theirs.jitter) <= 2
    assert theirs.max_seq == 65699 - 65536  # the bug: no cycles
    assert ours.extended_highest_sequence == 65699


def test_reception_map_makes_aiortc_report_our_numbers():
    stats = ReceiverStats(48000, ssrc=9)
    for seq in (65534, 65535, 0, 2):
        stats.update(9, seq, 0, 0.0)
    reported = []
    streams = _ReceptionMap(lambda ssrc: stats if ssrc == 9 else None,
                            lambda: reported.append(1))
    streams[9] = StreamStatistics(48000)  # what aiortc does for a new SSRC
    streams[9].add(None)  # and per packet: nothing (the playout counts)
    view = streams[9]
    assert (view.max_seq, view.packets_lost, view.packets_received) == (65538, 1, 4)
    assert view.fraction_lost == (1 << 8) // 5 and reported == [1]
    streams[7] = StreamStatistics(48000)
    assert (streams[7].fraction_lost, streams[7].max_seq) == (0, 0)


def test_source_reception_keeps_an_early_sender_report_and_restarts_on_a_new_ssrc():
    source = SourceReception(8000)
    assert source.report_blocks(0.0) == []
    sr = ntp_from_unix(1_700_000_000.0)
    source.sender_report(5, sr, 1.0)  # before any RTP
    for seq in range(10):
        source.packet(5, seq, 160 * seq, 1.0 + seq * 0.02)
    [block] = source.report_blocks(1.5)
    assert block.lsr == ntp_middle32(sr) and block.dlsr == 65536 // 2
    source.packet(6, 500, 0, 2.0)  # another sender
    [block] = source.report_blocks(2.0)
    assert (block.ssrc, block.lsr, block.highest_seq) == (6, 0, 500)
    assert source.reports == 2


def test_remote_reception_smooths_loss_and_measures_rtt():
    sr_wall = 1_700_000_000.0
    lsr = ntp_middle32(ntp_from_unix(sr_wall))
    reception = RemoteReception()
    reception.update(ReportBlock(1, fraction_lost=51, cumulative_lost=4, lsr=lsr,
                                 dlsr=65536 // 2), at=10.0, wall=sr_wall + 0.6)
    assert reception.fraction_lost == pytest.approx(51 / 256)
    assert reception.loss_smoothed == pytest.approx(51 / 256)  # the first report counts whole
    assert reception.rtt == pytest.approx(0.1, abs=1e-4)
    reception.update(ReportBlock(1, fraction_lost=0, cumulative_lost=4), at=11.0)
    assert reception.loss_smoothed == pytest.approx(51 / 256 * 0.7)
    assert reception.age(12.5) == 1.5 and reception.reports == 2
    assert round_trip(ReportBlock(1, lsr=0), sr_wall) is None
    assert round_trip(ReportBlock(1, lsr=lsr, dlsr=65536 * 5), sr_wall + 1) is None  # < 0


def test_blocks_about_our_ssrc_only():
    ours, other = ReportBlock(7, fraction_lost=3), ReportBlock(8)
    packets = [SenderReport(1, reports=(other,)), ReceiverReport(2, (ours, other))]
    assert blocks_about(packets, 7) == [ours]


def test_fec_policy_takes_the_worst_listener_rises_at_once_and_falls_after_the_hold():
    policy = FecPolicy(hold_s=10, stale_s=30, cap=20)
    assert policy.report("a", 0.0, 0.0) == 0
    assert policy.report("b", 0.004, 0.5) == 0  # under half a percent: off
    assert policy.report("b", 0.03, 1.0) == 3
    assert policy.report("a", 0.08, 1.5) == 8  # the worst one counts, at once
    assert policy.report("a", 0.01, 2.0) == 8  # falls only after 10 s below
    assert policy.report("a", 0.01, 11.0) == 8
    assert policy.report("a", 0.01, 12.0) == 3  # b's 3 % is the worst now
    policy.forget("b")
    assert policy.decide(12.5) == 3
    assert policy.decide(22.5) == 1
    assert policy.report("c", 0.9, 23.0) == 20  # capped


def test_fec_policy_forgets_listeners_that_stopped_reporting():
    policy = FecPolicy(hold_s=10, stale_s=10)
    assert policy.report("a", 0.05, 0.0) == 5
    assert policy.decide(9.0) == 5
    assert policy.decide(11.0) == 5  # a is stale now: the hold starts
    assert policy.decide(21.0) == 0
