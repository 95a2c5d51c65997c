"""RFC 4733 telephone events and digit commands (gateway.sip.dtmf)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.dtmf import (
    EVENT_DIGITS,
    DigitCommands,
    DtmfError,
    DtmfReceiver,
    TelephoneEvent,
    encode_event_packets,
)

events = st.builds(
    TelephoneEvent,
    event=st.integers(0, 255),
    end=st.booleans(),
    volume=st.integers(0, 63),
    duration=st.integers(0, 0xFFFF),
)


@given(events)
def test_round_trip(ev: TelephoneEvent) -> None:
    data = ev.to_bytes()
    assert len(data) == 4
    assert TelephoneEvent.parse(data) == ev
    assert TelephoneEvent.parse(data + b"\x01\x02\x03") == ev  # trailing bytes ignored


@given(st.binary(max_size=12))
def test_parse_arbitrary_bytes_raises_only_dtmf_error(data: bytes) -> None:
    try:
        ev = TelephoneEvent.parse(data)
    except DtmfError:
        assert len(data) < 4
    else:
        assert ev.to_bytes()[1:] == bytes([data[1] & 0xBF]) + data[2:4]  # R bit dropped


def test_known_bytes() -> None:
    # Digit 5, end, volume 10, duration 800 (RFC 4733 §2.3 layout).
    assert TelephoneEvent.parse(b"\x05\x8a\x03\x20") == TelephoneEvent(5, True, 10, 800)
    assert TelephoneEvent(11, False, 63, 160).to_bytes() == b"\x0b\x3f\x00\xa0"
    assert TelephoneEvent(11, False, 0, 0).digit == "#"
    assert TelephoneEvent(16, False, 0, 0).digit is None


@pytest.mark.parametrize("bad", [{"event": 256}, {"volume": 64}, {"duration": 0x10000}])
def test_to_bytes_rejects_out_of_range(bad: dict[str, int]) -> None:
    fields = {"event": 1, "end": False, "volume": 10, "duration": 160} | bad
    with pytest.raises(DtmfError):
        TelephoneEvent(**fields).to_bytes()  # type: ignore[arg-type]


def test_encode_event_packets() -> None:
    packets = encode_event_packets("7", duration_ms=100, ptime_ms=20)
    assert [m for m, _, _ in packets] == [True] + [False] * 6
    assert [d for _, d, _ in packets] == [160, 320, 480, 640, 800, 800, 800]
    parsed = [TelephoneEvent.parse(p) for _, _, p in packets]
    assert all(ev.event == 7 and ev.digit == "7" for ev in parsed)
    assert [ev.end for ev in parsed] == [False] * 4 + [True] * 3
    short = encode_event_packets("#", duration_ms=20)
    assert [(m, d) for m, d, _ in short] == [(True, 160), (False, 160), (False, 160)]
    for bad in ("", "12", "E", "x"):
        with pytest.raises(DtmfError):
            encode_event_packets(bad)
    with pytest.raises(DtmfError):
        encode_event_packets("1", duration_ms=9000)  # more than 65535 units at 8 kHz


def _stream(digits: str, start_ts: int, gap: int = 2400) -> list[tuple[int, bool, bytes]]:
    """(timestamp, marker, payload) of each packet, events ``gap`` units apart."""
    out = []
    ts = start_ts
    for digit in digits:
        for marker, _, payload in encode_event_packets(digit):
            out.append((ts % 2**32, marker, payload))
        ts += 800 + gap
    return out


def _receive(rx: DtmfReceiver, packets: list[tuple[int, bool, bytes]]) -> str:
    return "".join(d for p in packets if (d := rx.feed(*p)) is not None)


def test_receiver_realistic_sequence_with_loss() -> None:
    packets = _stream("122#", start_ts=123456)
    assert len(packets) == 4 * 7
    del packets[7]  # the start (marker) packet of the first "2" is lost
    rx = DtmfReceiver()
    assert _receive(rx, packets) == "122#"
    assert rx.digits == 4
    assert rx.malformed == 0


def test_receiver_reports_on_press_and_from_end_packets_alone() -> None:
    rx = DtmfReceiver()
    packets = _stream("9", start_ts=1000)
    assert rx.feed(*packets[0]) == "9"  # reported on the first packet: low latency
    assert _receive(rx, packets[1:]) == ""
    rx = DtmfReceiver()
    assert _receive(rx, _stream("5", start_ts=1000)[-3:]) == "5"  # only end packets arrived


def test_receiver_ignores_late_duplicates_of_earlier_presses() -> None:
    packets = _stream("12", start_ts=0)
    rx = DtmfReceiver()
    assert _receive(rx, packets + packets[::-1]) == "12"


@pytest.mark.parametrize("start_ts", [2**32 - 2000, 2**32 - 800, 2**32 - 1])
def test_receiver_timestamp_wrap(start_ts: int) -> None:
    packets = _stream("1111", start_ts=start_ts, gap=0)
    assert any(ts < 10000 for ts, _, _ in packets)  # the stream really wraps
    rx = DtmfReceiver()
    assert _receive(rx, packets) == "1111"


def test_receiver_long_event_segments_are_one_press() -> None:
    """RFC 4733 §2.5.1.3: a press longer than 65535 units continues with a new timestamp."""
    ts = 2**32 - 0x8000  # and wraps in between
    seg2 = (ts + 0xFFFF) % 2**32
    rx = DtmfReceiver()
    feed = [
        (ts, True, TelephoneEvent(4, False, 10, 160).to_bytes()),
        (ts, False, TelephoneEvent(4, False, 10, 0xFFFF).to_bytes()),
        (seg2, False, TelephoneEvent(4, False, 10, 160).to_bytes()),
        (seg2, False, TelephoneEvent(4, True, 10, 800).to_bytes()),
        (seg2, False, TelephoneEvent(4, True, 10, 800).to_bytes()),
    ]
    assert _receive(rx, feed) == "4"
    # After the end, the same key again (start lost, so no marker) is a new press.
    later = (seg2 + 2000) % 2**32
    assert rx.feed(later, False, TelephoneEvent(4, False, 10, 320).to_bytes()) == "4"
    assert rx.digits == 2


def test_receiver_malformed_and_non_digit_events() -> None:
    rx = DtmfReceiver()
    assert rx.feed(0, True, b"\x01\x0a") is None
    assert rx.feed(160, True, TelephoneEvent(16, False, 10, 160).to_bytes()) is None  # flash
    assert rx.feed(320, True, TelephoneEvent(15, False, 10, 160).to_bytes()) == "D"
    assert (rx.malformed, rx.digits) == (1, 1)


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.booleans(), st.binary(max_size=8))))
def test_receiver_fuzz(packets: list[tuple[int, bool, bytes]]) -> None:
    rx = DtmfReceiver()
    for p in packets:
        digit = rx.feed(*p)
        assert digit is None or digit in EVENT_DIGITS
    assert rx.digits + rx.malformed <= len(packets)


def _commands(dc: DigitCommands, keys: str, times: list[float] | None = None) -> list[str]:
    times = times if times is not None else [float(i) for i in range(len(keys))]
    return [c for k, t in zip(keys, times, strict=True) if (c := dc.feed(k, t)) is not None]


def test_commands_basic() -> None:
    dc = DigitCommands()
    assert _commands(dc, "*12#") == ["12"]
    assert _commands(DigitCommands(), "5#*3#7*44#9") == ["3", "44"]  # outside digits ignored


def test_commands_restart_and_empty() -> None:
    assert _commands(DigitCommands(), "*12*34#") == ["34"]
    assert _commands(DigitCommands(), "*#") == []


def test_commands_timeout_since_last_digit() -> None:
    dc = DigitCommands(timeout_s=5.0)
    # Each gap is 4 s (< 5 s) although the whole command takes 12 s.
    assert _commands(dc, "*12#", [0.0, 4.0, 8.0, 12.0]) == ["12"]
    dc = DigitCommands(timeout_s=5.0)
    assert _commands(dc, "*12#", [0.0, 1.0, 6.5, 7.0]) == []
    assert dc.discarded == 1
    assert _commands(dc, "*3#", [10.0, 10.5, 11.0]) == ["3"]  # next command still works


def test_commands_max_length() -> None:
    dc = DigitCommands(max_length=4)
    assert _commands(dc, "*1234#") == ["1234"]
    assert _commands(dc, "*12345#") == []
    assert dc.discarded == 1
    assert _commands(dc, "*9#") == ["9"]


def test_commands_custom_prefix_terminator() -> None:
    dc = DigitCommands(prefix="#", terminator="*")
    assert _commands(dc, "1#42*") == ["42"]
    with pytest.raises(ValueError):
        DigitCommands(prefix="#", terminator="#")
