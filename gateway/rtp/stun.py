"""Sans-IO STUN (RFC 8489), just enough for what phones send to a call's RTP port.

Some phones (linphone, anything doing RFC 6263 keepalives) send STUN Binding requests to
the RTP and RTCP ports they were given, to open and hold their NAT binding. RFC 7983
tells them apart from RTP by the first byte: 0-3 is STUN, 20-63 DTLS, 128-191 RTP/RTCP.
A Binding request gets a Binding success response carrying the address it came from
(XOR-MAPPED-ADDRESS), and a FINGERPRINT when the request had one.

Requests signed with MESSAGE-INTEGRITY are ICE connectivity checks with credentials from
an SDP we never sent (the gateway offers no ICE on SIP calls): we cannot sign an answer,
and the checking agent discards unsigned ones (RFC 8445 §7.2.5.1), so they are parsed
and counted but not answered. The classic RFC 3489 form (no magic cookie) is not STUN
here: it has no XOR-MAPPED-ADDRESS to give.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
MESSAGE_INTEGRITY = 0x0008
MESSAGE_INTEGRITY_SHA256 = 0x001C
FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)


class StunError(ValueError):
    """Not a well-formed STUN message (RFC 8489 §6, §14.7)."""


def is_stun(data: bytes) -> bool:
    """RFC 7983 §7 demultiplexing: a first byte of 0-3 is STUN (``parse`` checks the rest)."""
    return len(data) > 0 and data[0] < 4


@dataclass(frozen=True)
class StunMessage:
    """A STUN message's type, transaction ID and the types of its attributes, in order."""

    message_type: int
    transaction_id: bytes
    attribute_types: tuple[int, ...]

    @property
    def is_binding_request(self) -> bool:
        return self.message_type == BINDING_REQUEST

    @property
    def signed(self) -> bool:
        """Carries MESSAGE-INTEGRITY(-SHA256): short-term credentials we do not have."""
        return bool({MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256} & set(self.attribute_types))

    @property
    def has_fingerprint(self) -> bool:
        return FINGERPRINT in self.attribute_types


def parse(data: bytes) -> StunMessage:
    """The header and attribute list of ``data``; StunError unless it is a STUN message
    with the magic cookie, lengths that add up and (if present) a correct FINGERPRINT."""
    if len(data) < HEADER_SIZE:
        raise StunError(f"{len(data)} bytes, shorter than a STUN header")
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000 or cookie != MAGIC_COOKIE:
        raise StunError("not STUN: top bits set or no magic cookie")
    if length % 4 or HEADER_SIZE + length != len(data):
        raise StunError(f"length field {length} does not match {len(data)} bytes")
    types: list[int] = []
    pos = HEADER_SIZE
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            raise StunError(f"attribute 0x{attr_type:04x} runs past the message")
        if FINGERPRINT in types:
            raise StunError("attribute after FINGERPRINT")
        if attr_type == FINGERPRINT:
            if attr_len != 4 or struct.unpack_from("!I", data, pos + 4)[0] != _crc(data[:pos]):
                raise StunError("FINGERPRINT does not match")
        types.append(attr_type)
        pos = end + (-attr_len % 4)
    return StunMessage(message_type, data[8:HEADER_SIZE], tuple(types))


def binding_success(request: StunMessage, source: tuple) -> bytes:
    """The Binding success response to ``request``, which came from ``source`` (host, port)."""
    address = ipaddress.ip_address(source[0])
    port = source[1] ^ (MAGIC_COOKIE >> 16)
    xor_key = _COOKIE_BYTES + (request.transaction_id if address.version == 6 else b"")
    packed = bytes(a ^ b for a, b in zip(address.packed, xor_key, strict=True))
    value = struct.pack("!BBH", 0, 1 if address.version == 4 else 2, port) + packed
    body = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    if request.has_fingerprint:
        body += struct.pack("!HH", FINGERPRINT, 4)  # the length counts the FINGERPRINT
        head = struct.pack("!HHI", BINDING_SUCCESS, len(body) + 4, MAGIC_COOKIE)
        message = head + request.transaction_id + body
        return message + struct.pack("!I", _crc(message[:-4]))
    head = struct.pack("!HHI", BINDING_SUCCESS, len(body), MAGIC_COOKIE)
    return head + request.transaction_id + body


def _crc(data: bytes) -> int:
    """FINGERPRINT value (RFC 8489 §14.7) of the message up to the attribute."""
    return zlib.crc32(data) ^ _FINGERPRINT_XOR
