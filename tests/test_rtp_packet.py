"""RTP packet parse/build, sender state and receiver statistics (gateway.rtp.packet)."""

from __future__ import annotations

import aiortc.rtp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.rtp.packet import (
    ReceiverStats,
    RtpError,
    RtpPacket,
    RtpSender,
    build_header,
    is_rtcp,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def extensions(draw: st.DrawFn) -> tuple[int, bytes] | None:
    if not draw(st.booleans()):
        return None
    words = draw(st.integers(0, 8))
    return draw(u16), draw(st.binary(min_size=4 * words, max_size=4 * words))


rtp_packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=u16,
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=300),
    marker=st.booleans(),
    csrcs=st.lists(u32, max_size=15).map(tuple),
    extension=extensions(),
    padding=st.one_of(st.just(0), st.integers(1, 255)),
)


# -- round trip and robustness ------------------------------------------------


@given(rtp_packets)
def test_parse_inverts_build(packet: RtpPacket) -> None:
    data = packet.build()
    assert bytes(packet) == data == packet.serialize()
    assert RtpPacket.parse(data) == packet
    assert RtpPacket.parse(bytearray(data)) == packet
    assert RtpPacket.parse(memoryview(data)) == packet


@given(rtp_packets)
def test_build_size_and_header_bits(packet: RtpPacket) -> None:
    data = packet.build()
    ext = 0 if packet.extension is None else 4 + len(packet.extension[1])
    assert len(data) == 12 + 4 * len(packet.csrcs) + ext + len(packet.payload) + packet.padding
    assert data[0] >> 6 == 2
    assert bool(data[0] & 0x20) == (packet.padding > 0)
    assert bool(data[0] & 0x10) == (packet.extension is not None)
    assert data[0] & 0x0F == len(packet.csrcs)
    if packet.padding:
        assert data[-1] == packet.padding


@given(st.binary(max_size=100))
def test_random_bytes_raise_only_rtp_error(data: bytes) -> None:
    try:
        RtpPacket.parse(data)
    except RtpError:
        pass


@given(st.binary(min_size=12, max_size=80).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:]))
def test_random_version_2_bytes_raise_only_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    # Whatever parsed rebuilds to the same bytes, padding content aside.
    rebuilt = packet.build()
    assert len(rebuilt) == len(data)
    assert rebuilt[: len(data) - packet.padding] == data[: len(data) - packet.padding]


@given(rtp_packets, st.data())
def test_truncated_or_corrupted_packets_raise_only_rtp_error(
    packet: RtpPacket, data: st.DataObject
) -> None:
    raw = bytearray(packet.build())
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw[:cut]), bytes(raw[cut:])):
        try:
            RtpPacket.parse(candidate)
        except RtpError:
            pass
    if raw:
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
        try:
            RtpPacket.parse(bytes(raw))
        except RtpError:
            pass


# -- known vectors ----------------------------------------------------------------


def test_pcmu_packet_vector() -> None:
    # A captured G.711 u-law packet: V=2, no P/X/CC, M=0, PT=0, 20 ms of silence.
    header = bytes.fromhex("80 00 1f 4a 00 01 38 80 5e 1a 2b 3c")
    packet = RtpPacket.parse(header + b"\xff" * 160)
    assert packet == RtpPacket(
        payload_type=0,
        sequence=0x1F4A,
        timestamp=0x13880,
        ssrc=0x5E1A2B3C,
        payload=b"\xff" * 160,
    )
    assert packet.version == 2
    assert packet.build() == header + b"\xff" * 160
    assert build_header(0, False, 0x1F4A, 0x13880, 0x5E1A2B3C) == header


def test_marker_and_dynamic_payload_type_vector() -> None:
    data = bytes.fromhex("80 ef ff ff ff ff ff ff 00 00 00 01")
    packet = RtpPacket.parse(data)
    assert packet.marker and packet.payload_type == 111
    assert (packet.sequence, packet.timestamp, packet.ssrc) == (0xFFFF, 0xFFFFFFFF, 1)
    assert packet.payload == b""


def test_everything_vector() -> None:
    # V=2 P=1 X=1 CC=2, M=1 PT=96, two CSRCs, a one-word RFC 8285 extension, 3 payload
    # bytes and 4 padding bytes (the last one counting all four).
    data = bytes.fromhex(
        "b2 e0 00 07 00 00 03 e8 11 22 33 44"
        " 00 00 00 0a 00 00 00 0b"
        " be de 00 01 10 ab 00 00"
        " 01 02 03"
        " 00 00 00 04"
    )
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(
        payload_type=96,
        sequence=7,
        timestamp=1000,
        ssrc=0x11223344,
        payload=b"\x01\x02\x03",
        marker=True,
        csrcs=(10, 11),
        extension=(0xBEDE, bytes.fromhex("10ab0000")),
        padding=4,
    )
    assert packet.build() == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (bytes.fromhex("80 00 00 01 00 00 00 01 00 00 00"), "too short"),
        (bytes.fromhex("40 00 00 01 00 00 00 01 00 00 00 01"), "version 1 is not RTP version 2"),
        (bytes.fromhex("00 00 00 01 00 00 00 01 00 00 00 01"), "version 0 is not RTP version 2"),
        (bytes.fromhex("82 00 00 01 00 00 00 01 00 00 00 01 00 00 00 02"), "CSRC list truncated"),
        (bytes.fromhex("90 00 00 01 00 00 00 01 00 00 00 01 be de"), "header extension truncated"),
        (
            bytes.fromhex("90 00 00 01 00 00 00 01 00 00 00 01 be de 00 02 00 00 00 00"),
            "header extension truncated",
        ),
        (bytes.fromhex("a0 00 00 01 00 00 00 01 00 00 00 01 aa 05"), "padding length exceeds"),
        (bytes.fromhex("a0 00 00 01 00 00 00 01 00 00 00 01 aa 00"), "padding length is zero"),
    ],
)
def test_parse_errors_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        RtpPacket.parse(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(payload_type=128),
        RtpPacket(sequence=65536),
        RtpPacket(timestamp=-1),
        RtpPacket(ssrc=1 << 32),
        RtpPacket(csrcs=tuple(range(16))),
        RtpPacket(csrcs=(1 << 32,)),
        RtpPacket(extension=(0xBEDE, b"abc")),
        RtpPacket(extension=(0x10000, b"")),
        RtpPacket(padding=256),
        RtpPacket(padding=-1),
    ],
)
def test_build_rejects_invalid_fields(packet: RtpPacket) -> None:
    with pytest.raises(ValueError):
        packet.build()


@given(st.integers(0, 127), st.booleans(), u16, u32, u32)
def test_build_header_matches_build(pt: int, marker: bool, seq: int, ts: int, ssrc: int) -> None:
    packet = RtpPacket(payload_type=pt, marker=marker, sequence=seq, timestamp=ts, ssrc=ssrc)
    assert build_header(pt, marker, seq, ts, ssrc) == packet.build()


# -- RTP/RTCP demultiplexing ----------------------------------------------------


def test_is_rtcp_demultiplexes_rfc5761() -> None:
    assert is_rtcp(bytes.fromhex("80c80006"))  # SR
    assert is_rtcp(bytes.fromhex("81c90007"))  # RR
    assert is_rtcp(bytes.fromhex("80cd0002"))  # RTPFB
    assert not is_rtcp(bytes.fromhex("8000"))  # PCMU
    assert not is_rtcp(bytes.fromhex("8080"))  # PCMU with marker
    assert not is_rtcp(bytes.fromhex("80ef"))  # Opus (111) with marker
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"")


@given(st.integers(0, 127).filter(lambda pt: not 64 <= pt <= 95), st.booleans())
def test_rtp_with_usable_payload_types_is_never_rtcp(pt: int, marker: bool) -> None:
    assert not is_rtcp(build_header(pt, marker, 1, 2, 3))


# -- independent cross-check against aiortc ------------------------------------


def _aiortc_fields(packet: aiortc.rtp.RtpPacket) -> tuple:
    return (
        packet.payload_type,
        bool(packet.marker),
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
        tuple(packet.csrc),
        packet.padding_size,
        packet.payload,
    )


def _fields(packet: RtpPacket) -> tuple:
    return (
        packet.payload_type,
        packet.marker,
        packet.sequence,
        packet.timestamp,
        packet.ssrc,
        packet.csrcs,
        packet.padding,
        packet.payload,
    )


@given(rtp_packets)
def test_aiortc_parses_what_we_build(packet: RtpPacket) -> None:
    # aiortc interprets RFC 8285 extensions; keep to a profile it leaves alone.
    if packet.extension is not None:
        packet.extension = (0x1234, packet.extension[1])
    theirs = aiortc.rtp.RtpPacket.parse(packet.build())
    assert _aiortc_fields(theirs) == _fields(packet)


@given(
    st.integers(0, 127), st.booleans(), u16, u32, u32, st.lists(u32, max_size=15),
    st.binary(max_size=200),
)  # fmt: skip
def test_we_parse_what_aiortc_builds(
    pt: int, marker: bool, seq: int, ts: int, ssrc: int, csrcs: list[int], payload: bytes
) -> None:
    theirs = aiortc.rtp.RtpPacket(pt, int(marker), seq, ts, ssrc, payload)
    theirs.csrc = csrcs
    data = theirs.serialize()
    ours = RtpPacket.parse(data)
    assert _fields(ours) == _aiortc_fields(theirs)
    assert ours.build() == data


@given(st.binary(min_size=12, max_size=64).map(lambda b: bytes([0x80 | (b[0] & 0x2F)]) + b[1:]))
def test_accepts_and_rejects_like_aiortc(data: bytes) -> None:
    # X bit cleared (0x2F mask): aiortc decodes extension contents, which we pass through.
    try:
        theirs = aiortc.rtp.RtpPacket.parse(data)
    except ValueError:
        theirs = None
    try:
        ours = RtpPacket.parse(data)
    except RtpError:
        ours = None
    assert (theirs is None) == (ours is None)
    if ours is not None and theirs is not None:
        assert _fields(ours) == _aiortc_fields(theirs)


# -- sender ------------------------------------------------------------------------


def test_sender_sequence_and_timestamp_wrap() -> None:
    sender = RtpSender(ssrc=42, payload_type=0, clock_rate=8000, initial_seq=65534,
                       initial_ts=0xFFFFFF00)  # fmt: skip
    packets = [RtpPacket.parse(sender.next(b"\xff" * 160, 160)) for _ in range(4)]
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in packets] == [0xFFFFFF00, 0xFFFFFFA0, 0x40, 0xE0]
    assert {p.ssrc for p in packets} == {42}
    assert sender.packet_count == 4
    assert sender.octet_count == 640  # payload only, per RFC 3550 §6.4.1
    assert sender.last_timestamp == 0xE0
    assert (sender.sequence, sender.timestamp) == (2, 0x180)


def test_sender_marker_payload_type_and_skip() -> None:
    sender = RtpSender(ssrc=7, payload_type=111, clock_rate=48000, initial_seq=10, initial_ts=0)
    first = RtpPacket.parse(sender.next(b"a", 960, marker=True))
    sender.skip(960 * 5)  # DTX: five packets' worth of silence not sent
    second = RtpPacket.parse(sender.next(b"b", 960, marker=True))
    third = RtpPacket.parse(sender.next(b"c", 960))
    assert (first.marker, second.marker, third.marker) == (True, True, False)
    assert {first.payload_type, second.payload_type} == {111}
    assert [first.sequence, second.sequence, third.sequence] == [10, 11, 12]
    assert [first.timestamp, second.timestamp, third.timestamp] == [0, 960 * 6, 960 * 7]


def test_sender_random_initial_state_is_in_range() -> None:
    senders = [RtpSender() for _ in range(20)]
    assert all(0 <= s.sequence < 65536 and 0 <= s.timestamp < 1 << 32 for s in senders)
    assert all(0 <= s.ssrc < 1 << 32 for s in senders)
    assert len({s.ssrc for s in senders}) > 1
    with pytest.raises(ValueError):
        RtpSender(payload_type=128)


@given(u16, u32, st.integers(1, 2000), st.integers(1, 300))
def test_sender_increments_modulo(seq: int, ts: int, step: int, count: int) -> None:
    sender = RtpSender(ssrc=1, payload_type=8, initial_seq=seq, initial_ts=ts)
    for i in range(count):
        packet = RtpPacket.parse(sender.next(b"x", step))
        assert packet.sequence == (seq + i) % 65536
        assert packet.timestamp == (ts + i * step) % (1 << 32)
        assert packet.payload_type == 8


# -- receiver statistics ---------------------------------------------------------


def feed(stats: ReceiverStats, seqs: list[int], *, step: int = 160, ssrc: int = 1) -> None:
    """Packets with the given sequence numbers, each arriving exactly on time."""
    for seq in seqs:
        ts = (seq * step) % (1 << 32)
        stats.receive(RtpPacket(sequence=seq % 65536, timestamp=ts, ssrc=ssrc), seq * 0.02)


def test_no_loss() -> None:
    stats = ReceiverStats(8000)
    feed(stats, list(range(1000, 1100)))
    assert (stats.expected, stats.received, stats.cumulative_lost) == (100, 100, 0)
    assert stats.extended_highest_sequence == 1099
    assert stats.fraction_lost() == 0
    assert stats.ssrc == 1


def test_two_of_hundred_lost() -> None:
    stats = ReceiverStats(8000)
    feed(stats, [s for s in range(100) if s not in (17, 60)])
    assert stats.expected == 100
    assert stats.received == 98
    assert stats.cumulative_lost == 2
    assert stats.fraction_lost() == (2 << 8) // 100 == 5
    # The fraction is per reporting interval: the next interval has no loss.
    feed(stats, list(range(100, 150)))
    assert stats.fraction_lost() == 0
    assert stats.cumulative_lost == 2


def test_fraction_lost_of_total_loss_saturates() -> None:
    stats = ReceiverStats(8000)
    feed(stats, [0])
    stats.fraction_lost()
    feed(stats, [100])  # 99 lost, 1 received in this interval
    assert stats.fraction_lost() == (99 << 8) // 100


def test_reordering_is_not_loss() -> None:
    stats = ReceiverStats(8000)
    feed(stats, [0, 1, 3, 2, 4, 6, 5, 7])
    assert stats.cumulative_lost == 0
    assert stats.extended_highest_sequence == 7
    assert stats.fraction_lost() == 0


def test_duplicate_makes_loss_negative_as_rfc3550_says() -> None:
    stats = ReceiverStats(8000)
    feed(stats, [0, 1, 2, 2, 3])
    assert (stats.expected, stats.received) == (4, 5)
    assert stats.cumulative_lost == -1
    assert stats.fraction_lost() == 0


def test_sequence_wrap_counts_cycles() -> None:
    stats = ReceiverStats(8000)
    feed(stats, [65533, 65534, 65535, 65536, 65537, 65539])  # 65538 (wire seq 2) lost
    assert stats.extended_highest_sequence == 65536 + 3
    assert stats.cycles == 65536
    assert stats.expected == 7
    assert stats.cumulative_lost == 1


def test_reordered_packet_across_wrap() -> None:
    stats = ReceiverStats(8000)
    feed(stats, [65534, 65536, 65535, 65537])
    assert stats.extended_highest_sequence == 65537
    assert stats.cumulative_lost == 0


def test_large_jump_needs_two_packets_to_restart() -> None:
    stats = ReceiverStats(8000)
    feed(stats, list(range(10)))
    assert not stats.receive(RtpPacket(sequence=40000, timestamp=0, ssrc=1), 1.0)
    assert stats.extended_highest_sequence == 9
    assert stats.receive(RtpPacket(sequence=40001, timestamp=160, ssrc=1), 1.02)
    assert stats.extended_highest_sequence == 40001
    assert (stats.expected, stats.received, stats.cumulative_lost) == (1, 1, 0)


def test_other_ssrc_is_ignored() -> None:
    stats = ReceiverStats(8000, ssrc=5)
    assert not stats.receive(RtpPacket(sequence=1, ssrc=6), 0.0)
    assert stats.receive(RtpPacket(sequence=1, ssrc=5), 0.0)
    assert stats.received == 1


def test_probation_waits_for_sequential_packets() -> None:
    stats = ReceiverStats(8000, min_sequential=2)
    assert not stats.receive(RtpPacket(sequence=100, ssrc=1), 0.0)
    assert stats.expected == 0
    assert stats.receive(RtpPacket(sequence=101, ssrc=1), 0.02)
    feed(stats, [102, 104])
    # The first (probation) packet is not part of the statistics, as in A.1.
    assert (stats.expected, stats.received, stats.cumulative_lost) == (4, 3, 1)


def test_cumulative_lost_clamps_to_24_bits() -> None:
    stats = ReceiverStats(8000)
    feed(stats, list(range(0, 2999 * 2900, 2999)))  # just under MAX_DROPOUT each time
    assert stats.lost > (1 << 23)
    assert stats.cumulative_lost == (1 << 23) - 1


def test_jitter_of_regular_stream_is_zero() -> None:
    stats = ReceiverStats(8000)
    feed(stats, list(range(500)))
    assert stats.jitter == 0


def test_jitter_of_regular_stream_across_timestamp_wrap_is_zero() -> None:
    stats = ReceiverStats(48000)
    start = 0xFFFFFFFF - 960 * 10
    for i in range(30):
        ts = (start + 960 * i) % (1 << 32)
        stats.receive(RtpPacket(sequence=i, timestamp=ts, ssrc=9), 100.0 + 0.02 * i)
    assert stats.jitter == 0


def test_jitter_follows_a8_formula() -> None:
    stats = ReceiverStats(8000)
    stats.receive(RtpPacket(sequence=0, timestamp=0, ssrc=1), 0.0)
    stats.receive(RtpPacket(sequence=1, timestamp=160, ssrc=1), 0.020)
    stats.receive(RtpPacket(sequence=2, timestamp=320, ssrc=1), 0.050)  # 10 ms = 80 late
    assert stats.jitter == 80 // 16
    assert stats.jitter_seconds == pytest.approx(5 / 8000)


def test_jitter_of_jittery_stream_is_positive() -> None:
    stats = ReceiverStats(8000)
    for i in range(200):
        wobble = 0.005 if i % 2 else 0.0
        stats.receive(RtpPacket(sequence=i, timestamp=160 * i, ssrc=1), 0.02 * i + wobble)
    # Alternating 5 ms (40 units) offsets give |D| = 40 every packet: J converges to 40.
    assert 35 <= stats.jitter <= 40


def test_sender_report_bookkeeping() -> None:
    stats = ReceiverStats(8000)
    assert stats.dlsr(10.0) == 0
    stats.on_sender_report(0xAAAA_BBBB_CCCC_DDDD, arrival=10.0)
    assert stats.last_sr == 0xBBBB_CCCC
    assert stats.dlsr(11.5) == int(1.5 * 65536)
