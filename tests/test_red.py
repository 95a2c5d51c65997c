"""RED (RFC 2198): the sans-IO payload format, the jitter buffer's redundant copies, and
a playout that recovers lost Opus packets from their successors."""

from __future__ import annotations

import random

import numpy as np
import pytest
from audio_checks import assert_tone, step_tone
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.spec import OPUS, PCMU
from gateway.codecs.transcode import Packetizer, make_decoder
from gateway.ingress.playout import Playout
from gateway.ingress.red import RedSplitter, opus_samples
from gateway.rtp.jitter import Fill, JitterBuffer, Pop
from gateway.rtp.red import (
    MAX_BLOCK,
    MAX_OFFSET,
    RedBlock,
    RedError,
    build_red,
    parse_red,
    primary_payload_types,
    red_with_previous,
)


# -- the payload format ----------------------------------------------------------------
def test_the_rfc_2198_example_layout():
    """RFC 2198 §3's example: a DVI4 primary (PT 5) with an LPC copy (PT 7, 14 bytes)
    of the packet 160 timestamp units (20 ms at 8 kHz) before it."""
    lpc, dvi = bytes(range(14)), bytes(range(100, 184))
    payload = bytes([0x80 | 7, (160 >> 6) & 0xFF, ((160 & 0x3F) << 2) | (14 >> 8), 14 & 0xFF,
                     5]) + lpc + dvi
    red = parse_red(payload)
    assert red.redundant == [RedBlock(160, 7, lpc)]
    assert red.payload_type == 5 and red.primary == dvi
    assert build_red(5, dvi, (RedBlock(160, 7, lpc),)) == payload


def test_a_primary_alone_has_a_one_byte_header():
    assert parse_red(b"\x6f" + b"opus") == ([], 111, b"opus")
    assert parse_red(b"\x6f") == ([], 111, b"")
    assert build_red(111, b"opus") == b"\x6f" + b"opus"


def test_the_largest_offset_and_length_and_several_blocks():
    big = bytes(MAX_BLOCK)
    blocks = (RedBlock(MAX_OFFSET, 111, big), RedBlock(960, 111, b"x"), RedBlock(1, 0, b""))
    red = parse_red(build_red(111, b"primary", blocks))
    assert red.redundant == list(blocks) and red.primary == b"primary"


def test_what_a_header_cannot_describe_is_refused_when_building():
    with pytest.raises(ValueError, match="offset <= 16383"):
        build_red(111, b"p", (RedBlock(MAX_OFFSET + 1, 111, b"x"),))
    with pytest.raises(ValueError, match="length <= 1023"):
        build_red(111, b"p", (RedBlock(960, 111, bytes(MAX_BLOCK + 1)),))


@given(pt=st.integers(0, 127), primary=st.binary(max_size=300),
       blocks=st.lists(st.tuples(st.integers(0, MAX_OFFSET), st.integers(0, 127),
                                 st.binary(max_size=200)), max_size=4))
def test_round_trip(pt, primary, blocks):
    redundant = tuple(RedBlock(*b) for b in blocks)
    red = parse_red(build_red(pt, primary, redundant))
    assert (red.redundant, red.payload_type, red.primary) == (list(redundant), pt, primary)


def test_the_previous_packet_as_browsers_send_it():
    assert red_with_previous(111, b"now", b"before", 960) == build_red(
        111, b"now", (RedBlock(960, 111, b"before"),))
    # nothing to repeat, an offset or a block a header cannot carry: the primary alone
    for previous, offset in ((None, 960), (b"x", 0), (b"x", MAX_OFFSET + 1),
                             (bytes(MAX_BLOCK + 1), 960)):
        assert red_with_previous(111, b"now", previous, offset) == b"\x6fnow"


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "ends inside its block headers"),
    (b"\xef\x00\x0f", "cut short"),
    (b"\xef\x00\x0f\x00", "ends inside its block headers"),  # no final header
    (b"\xef\x00\x0f\x05\x6f" + b"abc", "runs past the payload"),  # a 5-byte block, 3 bytes
    (b"\xef\x00\x0f\x00" * 32 + b"\x6f", "more than 31 redundant blocks"),
])
def test_malformed_payloads_raise_red_error_saying_why(payload, message):
    with pytest.raises(RedError, match=message):
        parse_red(payload)


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_red_error(data):
    try:
        red = parse_red(data)
    except RedError:
        return
    used = len(red.redundant) * 4 + 1 + sum(len(b.data) for b in red.redundant)
    assert used + len(red.primary) == len(data)


def test_fmtp_names_the_blocks_payload_types():
    assert primary_payload_types("111/111") == [111, 111]
    assert primary_payload_types(" 111/111/111 ") == [111, 111, 111]
    assert primary_payload_types("111") == [111]
    for bad in ("", "111/", "opus/opus", "111/200", "minptime=10"):
        assert primary_payload_types(bad) == []


def test_opus_packet_durations_from_the_toc_byte():
    assert opus_samples(bytes([0xFC, 0xFF])) == 960  # CELT FB 20 ms, one frame (browsers)
    assert opus_samples(bytes([0x78])) == 960  # hybrid FB 20 ms
    assert opus_samples(bytes([0x70])) == 480  # hybrid FB 10 ms
    assert opus_samples(bytes([(1 << 3) | 0])) == 960  # SILK NB 20 ms
    assert opus_samples(bytes([(3 << 3) | 1])) == 2 * 2880  # SILK 60 ms, two frames
    assert opus_samples(bytes([(16 << 3) | 3, 0x04])) == 4 * 120  # CELT 2.5 ms, 4 frames
    assert opus_samples(b"") == 0 and opus_samples(bytes([3])) == 0  # code 3 cut short


# -- the jitter buffer's redundant copies ------------------------------------------------
def play(jb: JitterBuffer, ticks: int) -> list:
    return [jb.pop() for _ in range(ticks)]


def test_a_copy_fills_a_loss_when_the_buffer_holds_its_successor():
    jb = JitterBuffer(min_depth=2, max_depth=3)
    jb.push(0, "p0")
    jb.push(1, "p1")
    assert play(jb, 1) == ["p0"]
    jb.push(3, "p3")  # 2 is lost; 3 carries a copy of it
    assert jb.fill(2, "copy of 2") is Fill.FILLED
    assert play(jb, 3) == ["p1", "copy of 2", "p3"]
    assert (jb.stats.lost, jb.stats.recovered, jb.stats.concealed) == (1, 1, 0)
    assert jb.stats.received == 3 and jb.stats.duplicate == 0


def test_copies_of_packets_that_arrived_change_nothing():
    jb = JitterBuffer(min_depth=2, max_depth=3)
    for seq in range(6):
        jb.push(seq, seq)
        if seq >= 3:
            assert jb.fill(seq - 1, "copy") is Fill.PRESENT  # buffered
            assert jb.fill(seq - 3, "copy") is Fill.PRESENT  # played already
        if seq >= 1:
            assert jb.pop() == seq - 1
    assert vars(jb.stats) == vars(type(jb.stats)(received=6, played=5))
    assert jb.target == 2


def test_a_copy_after_its_tick_grows_the_delay_so_the_next_loss_is_filled():
    """Depth 1: the copy of lost packet 2 comes with 3, after 2's tick was concealed; the
    buffer grows by one packet (one stretched tick), and the next loss (5) is filled."""
    jb = JitterBuffer(min_depth=1, max_depth=3)
    out = []
    for seq in range(9):
        if seq not in (2, 5):
            jb.push(seq, seq)
            if seq - 1 in (2, 5):
                jb.fill(seq - 1, f"copy of {seq - 1}")
        out.append(jb.pop())
    assert out == [0, 1, Pop.LOST, Pop.LOST, 3, 4, "copy of 5", 6, 7]
    assert jb.target == 2 and jb.stats.late_copies == 1 and jb.stats.late == 0
    assert (jb.stats.lost, jb.stats.recovered, jb.stats.concealed) == (2, 1, 2)
    # a second copy of the same concealed packet does not grow it again
    assert jb.fill(2, "again") is Fill.LATE and jb.target == 2 and jb.stats.late_copies == 1


def test_the_packet_itself_replaces_its_copy():
    jb = JitterBuffer(min_depth=2, max_depth=3)
    jb.push(0, "p0")
    jb.push(1, "p1")
    jb.pop()
    jb.push(3, "p3")
    assert jb.fill(2, "copy of 2") is Fill.FILLED
    jb.push(2, "p2")  # reordered, not lost
    assert play(jb, 3) == ["p1", "p2", "p3"]
    assert (jb.stats.lost, jb.stats.recovered, jb.stats.duplicate) == (0, 0, 0)


def test_copies_before_playout_from_another_sender_or_too_old_are_ignored():
    jb = JitterBuffer(min_depth=2, max_depth=3)
    jb.push(10, "p10", ssrc=1)
    assert jb.fill(9, "copy", ssrc=1) is Fill.IGNORED  # nothing played yet
    jb.push(11, "p11", ssrc=1)
    jb.pop()
    assert jb.fill(12, "copy", ssrc=2) is Fill.IGNORED
    assert jb.fill(12, "copy", ssrc=1) is Fill.IGNORED  # newer than anything that arrived
    jb.push(30, "p30", ssrc=1)
    assert jb.fill(20, "copy", ssrc=1) is Fill.IGNORED  # 10 back: not a recent packet
    assert jb.stats.recovered == 0


def test_the_calm_period_does_not_shrink_a_depth_that_keeps_recovering():
    jb = JitterBuffer(min_depth=1, max_depth=3, relax_after=50)
    lost = set(range(5, 400, 20))
    for seq in range(400):
        if seq not in lost:
            jb.push(seq, seq)
            if seq - 1 in lost:
                jb.fill(seq - 1, "copy")
        jb.pop()
    assert jb.target == 2
    assert jb.stats.recovered == len(lost) - 1 and jb.stats.late_copies == 1


# -- a playout fed RED over a lossy network ---------------------------------------------
RED_PT = 63


def opus_packets(frames: int, freq: float = 440.0) -> list[bytes]:
    """A ``freq`` Hz tone with noise (which no concealment can predict) in 20 ms Opus."""
    packetizer = Packetizer(OPUS, 20, 32000)
    generate = step_tone([freq], amplitude=0.25)
    noise = np.random.default_rng(2198).normal(0, 0.08 * 32767, (frames, 960))
    packets = [p for i in range(frames) for p in packetizer.encode(
        np.clip(generate(i) + noise[i], -32768, 32767).astype(np.int16))]
    assert len(packets) == frames
    return packets


def decode_all(packets: list[bytes]) -> np.ndarray:
    decoder = make_decoder(OPUS)
    return np.concatenate([decoder.decode(p) for p in packets])


def lossy_run(payloads: list[bytes], lost: set[int], payload_type: int) -> tuple:
    """Each tick: packet ``tick`` arrives (unless lost), then the media clock pulls.
    Returns (audio, playout, ticks whose frame was concealed)."""
    playout = Playout({111: OPUS})
    playout.red_payload_types.add(RED_PT)
    out, concealed_ticks = [], []
    for tick, payload in enumerate(payloads):
        if tick not in lost:
            playout.push(tick, payload_type, payload, 0xABC)
        before = playout.jitter.stats.concealed
        frame = playout.pull()
        out.append(frame if frame is not None else np.zeros(960, np.int16))
        if playout.jitter.stats.concealed > before:
            concealed_ticks.append(tick)
    return np.concatenate(out), playout, concealed_ticks


def snr_db(ref: np.ndarray, out: np.ndarray, start: int) -> float:
    """Signal to error ratio of ``out`` against ``ref`` from frame ``start`` on, at the
    best lag of 0-3 frames."""
    best = -np.inf
    for lag in range(4):
        a = ref[start * 960 : len(ref) - lag * 960].astype(float)
        b = out[(start + lag) * 960 :].astype(float)
        best = max(best, 10 * np.log10(np.sum(a * a) / max(np.sum((a - b) ** 2), 1.0)))
    return best


@pytest.mark.parametrize("loss", [0.05, 0.10])
def test_red_recovers_random_loss_and_the_audio_is_what_was_sent(loss):
    """Seeded random loss on 10 s of a 440 Hz tone with noise in Opus. Sent as RED (each packet with
    the previous one), every loss whose successor arrived is played from the copy once
    the buffer has grown by one packet (the first loss tells it to), nothing else is
    concealed, and the audio is the lossless decode's. Sent as plain Opus, the same
    losses are all concealed."""
    frames = 500
    packets = opus_packets(frames)
    red = [red_with_previous(111, p, packets[i - 1] if i else None, 960)
           for i, p in enumerate(packets)]
    rng = random.Random(15)
    lost = {i for i in range(10, frames - 2) if rng.random() < loss}
    recoverable = {i for i in lost if i + 1 not in lost}
    reference = decode_all(packets)

    audio, playout, concealed = lossy_run(red, lost, RED_PT)
    info = playout.info()
    first = min(lost)
    assert first in recoverable  # the seed's first loss is a single one
    # the first loss is concealed, and one more tick grows the buffer; then only the
    # losses whose successor was lost too (it carried their copy), one tick later
    assert concealed == sorted([first, first + 1, *(s + 1 for s in lost - recoverable)])
    assert info.red_recovered == len(recoverable) - 1
    assert info.lost == len(lost) and info.concealed == len(concealed)
    assert info.red_malformed == 0 and info.unknown_payload == 0
    assert snr_db(reference, audio, first + 2) > 15
    tail = slice(-4 * 48000, None)
    assert_tone(audio[tail], 440)
    # a frame played from a packet or a copy is the lossless decode's, bit for bit (one
    # frame late), unless a concealed tick (the decoder skipped a packet) is < 40 back
    exact = [t for t in range(first + 2, frames)
             if not any(0 <= t - c < 40 for c in concealed)]
    assert len(exact) > frames / 2
    for t in exact:
        assert np.array_equal(audio[t * 960 : (t + 1) * 960],
                              reference[(t - 1) * 960 : t * 960]), f"tick {t}"

    plain, plain_playout, plain_concealed = lossy_run(packets, lost, 111)
    assert plain_playout.info().red_recovered == 0
    assert plain_concealed == sorted(lost)
    print(f"SNR from frame {first + 2}: RED {snr_db(reference, audio, first + 2):.1f} dB,"
          f" plain {snr_db(reference, plain, first + 2):.1f} dB")
    assert snr_db(reference, plain, first + 2) < snr_db(reference, audio, first + 2) - 6


def test_red_malformed_is_counted_and_dropped_and_copies_of_other_codecs_unplaced():
    playout = Playout({111: OPUS, 0: PCMU})
    playout.red_payload_types.add(RED_PT)
    playout.push(1, RED_PT, b"\xef\x00\x0f", 7)  # a cut block header
    playout.push(2, RED_PT, b"", 7)
    playout.push(3, RED_PT, bytes([RED_PT]) + b"red in red", 7)
    assert playout.info().red_malformed == 2 and playout.info().unknown_payload == 1
    assert "cut short" in playout.red.last_error or "ends inside" in playout.red.last_error
    assert playout.jitter.stats.received == 0
    splitter = RedSplitter({111: OPUS, 0: PCMU})
    pcmu_copy = build_red(111, b"\xfc\xff", (RedBlock(160, 0, b"\xff" * 160),))
    odd_offset = build_red(111, b"\xfc\xff", (RedBlock(700, 111, b"\xfc\xff"),))
    assert splitter.split(pcmu_copy) == (111, b"\xfc\xff", [])
    assert splitter.split(odd_offset) == (111, b"\xfc\xff", [])
    assert splitter.unplaced == 2
    two_back = build_red(111, b"\xfc\xff", (RedBlock(1920, 111, b"\xfc\x01"),
                                            RedBlock(960, 111, b"\xfc\x02")))
    assert splitter.split(two_back) == (111, b"\xfc\xff", [(2, 111, b"\xfc\x01"),
                                                           (1, 111, b"\xfc\x02")])


# -- negotiation ---------------------------------------------------------------------
CHROME_AUDIO = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8
c=IN IP4 0.0.0.0
a=mid:0
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 {fmtp}
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
"""


@pytest.mark.parametrize(("fmtp", "primary", "found"), [
    ("111/111", 111, True),  # Chrome's offer
    ("111/111/111", 111, True),  # two redundant blocks
    ("111", 111, True),
    ("111/111", 0, False),  # the session uses another codec than the blocks
    ("109/111", 111, False),  # a block of another codec
    ("", 111, False),  # no fmtp: nothing says what the blocks are
])
def test_the_offered_red_is_used_only_if_its_blocks_are_the_sessions_opus(
        fmtp, primary, found):
    from aiortc.sdp import SessionDescription

    from gateway.webrtc.session import offered_red

    sdp = CHROME_AUDIO.format(fmtp=fmtp).replace("a=fmtp:63 \n", "")
    red = offered_red(SessionDescription.parse(sdp.replace("\n", "\r\n")), "0", primary)
    assert (red is not None) is found
    if red is not None:
        assert (red.payloadType, red.mimeType.lower(), red.clockRate) == (63, "audio/red", 48000)
    assert offered_red(SessionDescription.parse(sdp.replace("\n", "\r\n")), "1", 111) is None
