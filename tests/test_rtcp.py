"""RTCP compound parse/build, NTP time and report helpers (gateway.rtp.rtcp)."""

from __future__ import annotations

from dataclasses import replace

import aiortc.rtp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.rtp import rtcp
from gateway.rtp.packet import ReceiverStats, RtpPacket, RtpSender, is_rtcp
from gateway.rtp.rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    Sdes,
    SdesChunk,
    SenderReport,
    UnknownRtcp,
    build_compound,
    build_packet,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    unix_from_ntp,
)

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
words = st.integers(0, 6).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))

report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-(1 << 23), (1 << 23) - 1),
    highest_seq=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
block_lists = st.lists(report_blocks, max_size=31).map(tuple)
sender_reports = st.builds(
    SenderReport,
    ssrc=u32,
    ntp_timestamp=u64,
    rtp_timestamp=u32,
    packet_count=u32,
    octet_count=u32,
    reports=block_lists,
    profile_extension=words,
)
receiver_reports = st.builds(ReceiverReport, ssrc=u32, reports=block_lists, profile_extension=words)
sdes_items = st.tuples(st.integers(1, 255), st.binary(max_size=255))
sdes = st.builds(
    Sdes,
    st.lists(
        st.builds(SdesChunk, ssrc=u32, items=st.lists(sdes_items, max_size=5).map(tuple)),
        max_size=31,
    ).map(tuple),
)
reasons = st.text(max_size=80).filter(lambda text: len(text.encode()) <= 255)
byes = st.builds(Bye, st.lists(u32, max_size=31).map(tuple), st.none() | reasons)
unknowns = st.builds(
    UnknownRtcp,
    packet_type=st.integers(0, 255).filter(lambda pt: pt not in (200, 201, 202, 203)),
    count=st.integers(0, 31),
    payload=words,
)
rtcp_packets = st.one_of(sender_reports, receiver_reports, sdes, byes, unknowns)
compounds = st.lists(rtcp_packets, min_size=1, max_size=5)


# -- round trip and robustness ------------------------------------------------


@given(compounds)
def test_parse_inverts_build(packets: list) -> None:
    data = build_compound(packets)
    assert len(data) % 4 == 0
    assert parse_compound(data) == packets
    assert parse_compound(bytearray(data)) == packets


@given(st.one_of(sender_reports, receiver_reports, sdes, byes))
def test_known_packets_demultiplex_as_rtcp(packet: rtcp.RtcpPacket) -> None:
    assert is_rtcp(build_packet(packet))


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_rtcp_error(data: bytes) -> None:
    try:
        parse_compound(data)
    except RtcpError:
        pass


@given(
    st.binary(min_size=4, max_size=120).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:]),
    st.sampled_from([200, 201, 202, 203, 204]),
)
def test_random_bodies_raise_only_rtcp_error(data: bytes, packet_type: int) -> None:
    # A plausible header (V=2, a known type, a length that fits) over random contents.
    words = (len(data) - 4) // 4
    head = bytes([data[0], packet_type, words >> 8, words & 0xFF])
    try:
        parse_compound(head + data[4 : 4 + 4 * words])
    except RtcpError:
        pass


@given(compounds, st.data())
def test_truncated_or_corrupted_compounds_raise_only_rtcp_error(
    packets: list, data: st.DataObject
) -> None:
    raw = bytearray(build_compound(packets))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw[:cut]), bytes(raw[cut:])):
        try:
            parse_compound(candidate)
        except RtcpError:
            pass
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    try:
        parse_compound(bytes(raw))
    except RtcpError:
        pass


# -- known vectors ----------------------------------------------------------------


SR_VECTOR = bytes.fromhex(
    # V=2 P=0 RC=1, PT=200, length 12 words (52 bytes)
    "81 c8 00 0c"
    "12 34 56 78"  # SSRC of sender
    "e9 2a 4b 6c 80 00 00 00"  # NTP timestamp, fraction .5
    "00 01 e2 40"  # RTP timestamp 123456
    "00 00 03 e8"  # sender's packet count 1000
    "00 02 71 00"  # sender's octet count 160000
    # report block
    "9a bc de f0"  # SSRC_1
    "0a ff ff ff"  # fraction lost 10/256, cumulative lost -1
    "00 01 00 05"  # extended highest sequence: 1 cycle, seq 5
    "00 00 00 2a"  # jitter 42
    "4b 6c 80 00"  # LSR: middle 32 bits of the NTP timestamp above
    "00 01 80 00"  # DLSR 1.5 s
)


def test_sender_report_vector() -> None:
    [report] = parse_compound(SR_VECTOR)
    assert report == SenderReport(
        ssrc=0x12345678,
        ntp_timestamp=0xE92A4B6C_80000000,
        rtp_timestamp=123456,
        packet_count=1000,
        octet_count=160000,
        reports=(
            ReportBlock(
                ssrc=0x9ABCDEF0,
                fraction_lost=10,
                cumulative_lost=-1,
                highest_seq=0x10005,
                jitter=42,
                lsr=0x4B6C8000,
                dlsr=0x18000,
            ),
        ),
    )
    assert build_compound([report]) == SR_VECTOR
    assert ntp_middle32(report.ntp_timestamp) == report.reports[0].lsr


def test_compound_rr_sdes_bye_vector() -> None:
    data = bytes.fromhex(
        "80 c9 00 01 00 00 00 07"  # RR, no blocks
        "81 ca 00 04 00 00 00 07 01 09"  # SDES, one chunk: CNAME, 9 bytes
        + b"user@host".hex()
        + "00"  # null terminator, which ends the chunk on a 32-bit boundary (4+2+9+1)
        "81 cb 00 03 00 00 00 07 05"  # BYE, one source, 5-byte reason
         + b"gone!".hex() + "00 00"
    )
    packets = parse_compound(data)
    assert packets == [
        ReceiverReport(ssrc=7),
        Sdes((SdesChunk(7, ((1, b"user@host"),)),)),
        Bye((7,), "gone!"),
    ]
    assert packets[1].chunks[0].cname == "user@host"
    assert build_compound(packets) == data


def test_sdes_chunk_ending_on_word_boundary_gets_a_whole_null_word() -> None:
    packet = Sdes((SdesChunk(1, ((1, b"ab"),)),))  # 4 + 2 + 2 = 8 bytes of chunk
    assert build_packet(packet) == bytes.fromhex("81 ca 00 03 00 00 00 01 01 02 61 62 00 00 00 00")


def test_padding_on_last_packet_is_stripped() -> None:
    rr = build_packet(ReceiverReport(ssrc=1))
    padded = bytes.fromhex("a0 c9 00 02 00 00 00 02 00 00 00 04")  # RR + 4 padding bytes
    assert parse_compound(rr + padded) == [ReceiverReport(1), ReceiverReport(2)]


def test_unknown_types_are_kept() -> None:
    pli = bytes.fromhex("81 ce 00 02 00 00 00 01 00 00 00 02")  # PSFB FMT=1 (PLI)
    assert parse_compound(pli) == [UnknownRtcp(206, 1, bytes.fromhex("00000001 00000002"))]
    assert build_compound(parse_compound(pli)) == pli


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (bytes.fromhex("80 c9"), "too short"),
        (bytes.fromhex("40 c9 00 01 00 00 00 01"), "version 1 is not RTP version 2"),
        (bytes.fromhex("80 c9 00 02 00 00 00 01"), "length field"),
        (bytes.fromhex("80 c9 00 00"), "RR too short"),
        (bytes.fromhex("81 c9 00 01 00 00 00 01"), "RR truncated"),
        (bytes.fromhex("80 c8 00 01 00 00 00 01"), "SR too short"),
        (bytes.fromhex("a0 c9 00 01 00 00 00 00"), "padding length 0"),
        (bytes.fromhex("a0 c9 00 01 00 00 00 09"), "padding length 9"),
        (bytes.fromhex("81 ca 00 01 00 00 00 01"), "no null terminator"),
        (bytes.fromhex("81 ca 00 02 00 00 00 01 01 09 61 62"), "SDES item truncated"),
        (bytes.fromhex("82 ca 00 02 00 00 00 01 00 00 00 00"), "no SSRC"),
        (bytes.fromhex("82 cb 00 01 00 00 00 01"), "BYE truncated"),
        (bytes.fromhex("81 cb 00 02 00 00 00 01 09 61 62 63"), "BYE reason truncated"),
        (bytes.fromhex("80 c9 00 01 00 00 00 01 80"), "too short"),
    ],
)
def test_parse_errors_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(RtcpError, match=reason):
        parse_compound(data)


@pytest.mark.parametrize(
    "packet",
    [
        ReceiverReport(ssrc=1, reports=(ReportBlock(1),) * 32),
        ReceiverReport(ssrc=1 << 32),
        ReceiverReport(ssrc=1, profile_extension=b"abc"),
        ReceiverReport(ssrc=1, reports=(ReportBlock(1, fraction_lost=256),)),
        ReceiverReport(ssrc=1, reports=(ReportBlock(1, cumulative_lost=1 << 23),)),
        SenderReport(ssrc=1, ntp_timestamp=1 << 64),
        Sdes((SdesChunk(1, ((0, b"x"),)),)),
        Sdes((SdesChunk(1, ((1, b"x" * 256),)),)),
        Bye((1,), "x" * 256),
        Bye(tuple(range(32))),
        UnknownRtcp(200),
        UnknownRtcp(204, payload=b"12345"),
    ],
)
def test_build_rejects_invalid_packets(packet: rtcp.RtcpPacket) -> None:
    with pytest.raises(ValueError):
        build_packet(packet)


# -- NTP time -----------------------------------------------------------------------


def test_ntp_epoch_and_fraction() -> None:
    assert ntp_from_unix(0) == 2_208_988_800 << 32
    assert ntp_from_unix(0.5) == (2_208_988_800 << 32) | 0x80000000
    assert ntp_from_unix(1_700_000_000.25) == ((1_700_000_000 + 2_208_988_800) << 32) | (1 << 30)
    assert ntp_middle32(0x1122_3344_5566_7788) == 0x3344_5566


@given(st.floats(0, 2_000_000_000, allow_nan=False))
def test_ntp_round_trip(seconds: float) -> None:
    ntp = ntp_from_unix(seconds)
    assert 0 <= ntp < 1 << 64
    assert unix_from_ntp(ntp) == pytest.approx(seconds, abs=1e-6)


# -- helpers --------------------------------------------------------------------------


def test_make_sender_report_from_sender_counters() -> None:
    sender = RtpSender(ssrc=99, payload_type=0, initial_seq=0, initial_ts=1000)
    for _ in range(50):
        sender.next(b"\xff" * 160, 160)
    sender.octet_count += 1 << 32  # counters wrap on the wire
    report = rtcp.make_sender_report(sender, wall_time=1_700_000_000.5, rtp_timestamp=9000)
    assert report == SenderReport(
        ssrc=99,
        ntp_timestamp=ntp_from_unix(1_700_000_000.5),
        rtp_timestamp=9000,
        packet_count=50,
        octet_count=8000,
    )
    assert parse_compound(build_compound([report])) == [report]


def test_report_block_from_receiver_stats() -> None:
    stats = ReceiverStats(8000)
    for seq in range(100):
        if seq not in (10, 20):
            stats.receive(RtpPacket(sequence=seq, timestamp=160 * seq, ssrc=5), 0.02 * seq)
    sr_ntp = ntp_from_unix(1_700_000_000.0)
    stats.on_sender_report(sr_ntp, arrival=2.0)
    block = rtcp.report_block(stats, now=2.25)
    assert block == ReportBlock(
        ssrc=5,
        fraction_lost=5,
        cumulative_lost=2,
        highest_seq=99,
        jitter=0,
        lsr=ntp_middle32(sr_ntp),
        dlsr=65536 // 4,
    )
    assert rtcp.report_block(stats, now=2.5).fraction_lost == 0  # new interval
    with pytest.raises(ValueError):
        rtcp.report_block(ReceiverStats(8000), now=0.0)


def test_sender_report_compound_for_egress() -> None:
    data = rtcp.sender_report(
        ssrc=3,
        ntp_time=1_700_000_000.0,
        rtp_timestamp=(1 << 32) + 5,
        packet_count=10,
        octet_count=1600,
        cname="gateway-main",
    )
    sr, description = parse_compound(data)
    assert sr == SenderReport(3, ntp_from_unix(1_700_000_000.0), 5, 10, 1600)
    assert description.chunks[0].ssrc == 3
    assert description.chunks[0].cname == "gateway-main"


def test_receiver_report_and_bye_compounds() -> None:
    block = ReportBlock(ssrc=8, highest_seq=4)
    assert parse_compound(rtcp.receiver_report(ssrc=1, reports=[block], cname="rx")) == [
        ReceiverReport(1, (block,)),
        Sdes.for_cname(1, "rx"),
    ]
    assert parse_compound(rtcp.bye(1, "output stopped")) == [
        ReceiverReport(1),
        Bye((1,), "output stopped"),
    ]
    assert parse_compound(rtcp.bye(1)) == [ReceiverReport(1), Bye((1,))]


# -- independent cross-check against aiortc ------------------------------------


def _aiortc_block(block: ReportBlock) -> aiortc.rtp.RtcpReceiverInfo:
    return aiortc.rtp.RtcpReceiverInfo(
        ssrc=block.ssrc,
        fraction_lost=block.fraction_lost,
        packets_lost=block.cumulative_lost,
        highest_sequence=block.highest_seq,
        jitter=block.jitter,
        lsr=block.lsr,
        dlsr=block.dlsr,
    )


@given(sender_reports.map(lambda sr: replace(sr, profile_extension=b"")))
def test_sender_report_bytes_match_aiortc(report: SenderReport) -> None:
    theirs = aiortc.rtp.RtcpSrPacket(
        ssrc=report.ssrc,
        sender_info=aiortc.rtp.RtcpSenderInfo(
            ntp_timestamp=report.ntp_timestamp,
            rtp_timestamp=report.rtp_timestamp,
            packet_count=report.packet_count,
            octet_count=report.octet_count,
        ),
        reports=[_aiortc_block(b) for b in report.reports],
    )
    data = build_packet(report)
    assert bytes(theirs) == data
    assert parse_compound(bytes(theirs)) == [report]
    [parsed] = aiortc.rtp.RtcpPacket.parse(data)
    assert parsed.reports == theirs.reports


@given(receiver_reports.map(lambda rr: ReceiverReport(rr.ssrc, rr.reports)))
def test_receiver_report_bytes_match_aiortc(report: ReceiverReport) -> None:
    theirs = aiortc.rtp.RtcpRrPacket(
        ssrc=report.ssrc, reports=[_aiortc_block(b) for b in report.reports]
    )
    assert bytes(theirs) == build_packet(report)


@given(u32, st.lists(sdes_items, max_size=5))
def test_sdes_chunk_interoperates_with_aiortc(ssrc: int, items: list) -> None:
    # One chunk only: aiortc pads once per packet rather than per chunk (RFC 3550 §6.5),
    # and may end with an extra null word; both are valid for a single chunk.
    ours = Sdes((SdesChunk(ssrc, tuple(items)),))
    theirs = aiortc.rtp.RtcpSdesPacket(chunks=[aiortc.rtp.RtcpSourceInfo(ssrc, items)])
    assert parse_compound(bytes(theirs)) == [ours]
    [parsed] = aiortc.rtp.RtcpPacket.parse(build_packet(ours))
    assert [(c.ssrc, c.items) for c in parsed.chunks] == [(ssrc, items)]


@given(byes)
def test_bye_sources_match_aiortc(packet: Bye) -> None:
    [parsed] = aiortc.rtp.RtcpPacket.parse(build_packet(packet))
    assert parsed.sources == list(packet.sources)
    if packet.reason is None:
        theirs = aiortc.rtp.RtcpByePacket(sources=list(packet.sources))
        assert bytes(theirs) == build_packet(packet)
