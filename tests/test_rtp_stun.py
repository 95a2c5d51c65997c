"""STUN on a call's RTP port (gateway.rtp.stun), checked against aioice's STUN codec: a
separate implementation builds the requests and reads the gateway's responses."""

from __future__ import annotations

import struct

import pytest
from aioice import stun as aioice_stun
from hypothesis import given
from hypothesis import strategies as st

from gateway.rtp import stun

TID = bytes(range(12))


def request(fingerprint: bool = False, integrity_key: bytes | None = None,
            **attributes) -> bytes:
    message = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST,
                                  transaction_id=TID, attributes=dict(attributes))
    if integrity_key is not None:
        message.add_message_integrity(integrity_key)
    elif fingerprint:
        message.add_fingerprint()
    return bytes(message)


@pytest.mark.parametrize("source", [("127.0.0.1", 40000), ("192.0.2.77", 1),
                                    ("2001:db8::5", 65535)])
@pytest.mark.parametrize("fingerprint", [False, True])
def test_binding_request_gets_its_source_back(source, fingerprint) -> None:
    data = request(fingerprint)
    assert stun.is_stun(data)
    message = stun.parse(data)
    assert message.is_binding_request and not message.signed
    assert message.has_fingerprint == fingerprint and message.transaction_id == TID
    answer = aioice_stun.parse_message(stun.binding_success(message, source))  # checks CRC
    assert answer.message_method == aioice_stun.Method.BINDING
    assert answer.message_class == aioice_stun.Class.RESPONSE
    assert answer.transaction_id == TID
    assert answer.attributes["XOR-MAPPED-ADDRESS"] == source
    assert ("FINGERPRINT" in answer.attributes) == fingerprint


def test_signed_requests_and_other_messages_are_recognised_but_not_binding_requests() -> None:
    signed = stun.parse(request(USERNAME="abcd:efgh", integrity_key=b"ice-password"))
    assert signed.is_binding_request and signed.signed and signed.has_fingerprint
    indication = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.INDICATION)
    assert not stun.parse(bytes(indication)).is_binding_request


def fix_length(data: bytes) -> bytes:
    """``data`` with a header length field that matches its size."""
    return data[:2] + struct.pack("!H", len(data) - 20) + data[4:]


@pytest.mark.parametrize("data", [
    b"",
    b"\x00\x01\x00\x00",  # short
    request()[:4] + bytes(16),  # no magic cookie: RFC 3489
    b"\x00\x01\x00\x04" + request()[4:],  # length says 4, nothing follows
    request()[:2] + b"\x00\x02" + request()[4:] + b"\x00\x00",  # length not a multiple of 4
    fix_length(request(SOFTWARE="abcdefgh")[:-4]),  # attribute runs past the end
    fix_length(request(fingerprint=True)[:-1] + b"\x00"),  # wrong CRC
    fix_length(request(fingerprint=True) + b"\x80\x22\x00\x00"),  # attribute after it
    b"\xc0" + request()[1:],  # top bits set
])
def test_broken_messages_are_refused(data) -> None:
    with pytest.raises(stun.StunError):
        stun.parse(data)


def test_rfc7983_first_byte_ranges() -> None:
    assert [stun.is_stun(bytes([b])) for b in (0, 3, 4, 20, 63, 128, 191)] == [
        True, True, False, False, False, False, False]
    assert not stun.is_stun(b"")


@given(st.binary(max_size=200))
def test_parse_refuses_garbage_cleanly(data) -> None:
    try:
        stun.parse(data)
    except stun.StunError:
        pass
