"""Sans-IO RTP payload for redundant audio data, RED (RFC 2198).

A RED payload carries the primary encoding of its packet plus copies of earlier ones
(browsers send the previous Opus packet), so a receiver can recover a lost packet from
its successor. Layout: one 4-byte header per redundant block (F=1, block payload type,
14-bit timestamp offset back from the packet's timestamp, 10-bit length), a 1-byte
final header (F=0, the primary's payload type), then the blocks in header order and the
primary last. Parsing untrusted input raises only :class:`RedError`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: Largest timestamp offset (14 bits) and block length (10 bits) a header can carry.
MAX_OFFSET = (1 << 14) - 1
MAX_BLOCK = (1 << 10) - 1
#: At most this many redundant blocks are accepted (libwebrtc's splitter allows 32
#: blocks in all); more is a malformed or hostile packet.
MAX_BLOCKS = 31

_BLOCK_HEADER = struct.Struct("!I")


class RedError(ValueError):
    """A payload that is not well-formed RED (the only error :func:`parse_red` raises)."""


class RedBlock(NamedTuple):
    """One redundant encoding: ``offset`` timestamp units before the packet's timestamp."""

    offset: int
    payload_type: int
    data: bytes


class RedPayload(NamedTuple):
    """A parsed RED payload: the redundant blocks, oldest first as sent, and the primary."""

    redundant: list[RedBlock]
    payload_type: int
    primary: bytes


def parse_red(payload: bytes) -> RedPayload:
    """Split a RED payload into its redundant blocks and its primary encoding."""
    size = len(payload)
    headers: list[tuple[int, int, int]] = []
    pos = 0
    while True:
        if pos >= size:
            raise RedError(f"RED payload of {size} bytes ends inside its block headers")
        first = payload[pos]
        if not first & 0x80:  # final header: the primary's payload type
            primary_pt = first & 0x7F
            pos += 1
            break
        if pos + 4 > size:
            raise RedError(f"RED block header at byte {pos} is cut short ({size} bytes)")
        if len(headers) == MAX_BLOCKS:
            raise RedError(f"RED payload has more than {MAX_BLOCKS} redundant blocks")
        (word,) = _BLOCK_HEADER.unpack_from(payload, pos)
        headers.append(((word >> 24) & 0x7F, (word >> 10) & MAX_OFFSET, word & MAX_BLOCK))
        pos += 4
    blocks: list[RedBlock] = []
    for pt, offset, length in headers:
        if pos + length > size:
            raise RedError(
                f"RED block of {length} bytes at byte {pos} runs past the payload "
                f"({size} bytes)")
        blocks.append(RedBlock(offset, pt, payload[pos : pos + length]))
        pos += length
    return RedPayload(blocks, primary_pt, payload[pos:])


def build_red(payload_type: int, primary: bytes, redundant: tuple[RedBlock, ...] = ()) -> bytes:
    """A RED payload: ``redundant`` blocks (oldest first) and the primary encoding.

    Raises ValueError for a block the headers cannot describe (offset above 16383,
    longer than 1023 bytes): the caller leaves such a block out.
    """
    parts: list[bytes] = []
    for block in redundant:
        if not 0 <= block.offset <= MAX_OFFSET or len(block.data) > MAX_BLOCK:
            raise ValueError(
                f"RED block (offset {block.offset}, {len(block.data)} bytes) does not fit "
                f"a header (offset <= {MAX_OFFSET}, length <= {MAX_BLOCK})")
        parts.append(_BLOCK_HEADER.pack(
            0x80000000 | (block.payload_type & 0x7F) << 24 | block.offset << 10
            | len(block.data)))
    parts.append(bytes((payload_type & 0x7F,)))
    parts.extend(block.data for block in redundant)
    parts.append(primary)
    return b"".join(parts)


def red_with_previous(payload_type: int, primary: bytes, previous: bytes | None,
                      offset: int) -> bytes:
    """The RED payload browsers send: the primary and, when it fits, the previous packet
    (``offset`` timestamp units earlier) as the one redundant block (distance 1)."""
    if previous is None or len(previous) > MAX_BLOCK or not 0 < offset <= MAX_OFFSET:
        return bytes((payload_type & 0x7F,)) + primary
    return (_BLOCK_HEADER.pack(0x80000000 | (payload_type & 0x7F) << 24 | offset << 10
                               | len(previous))
            + bytes((payload_type & 0x7F,)) + previous + primary)


def primary_payload_types(fmtp: str) -> list[int]:
    """The payload types an SDP ``a=fmtp:<red> 111/111`` line names (RFC 2198 §5):
    one per block, the primary's last. Empty when the value is not such a list."""
    parts = fmtp.strip().split("/")
    if not all(p.isdigit() and int(p) < 128 for p in parts):
        return []
    return [int(p) for p in parts]
