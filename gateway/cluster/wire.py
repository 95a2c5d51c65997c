"""What cluster messages look like on NATS: subjects, directory keys, media packets.

Sans-IO: pure functions, no NATS here. A media message is a 12-byte header and one
encoded packet of the owner's shared encoder, so a stream costs its Opus payload plus
~12 bytes and NATS's own framing (~30 bytes with a short subject) per 20 ms:
1.3x the payload at 64 kbit/s.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass

VERSION = 1
#: version, flags, sequence number, RTP timestamp (48 kHz), epoch (one per publisher).
_HEADER = struct.Struct("!BBHII")
HEADER_BYTES = _HEADER.size


class WireError(ValueError):
    """A cluster message that cannot be read (another version, truncated)."""


@dataclass(frozen=True, slots=True)
class MediaPacket:
    seq: int  # 16-bit, per epoch: the receiver's jitter buffer orders and detects loss by it
    timestamp: int  # 32-bit, 48 kHz: the same instant on every node
    epoch: int  # 32-bit, new for each publisher of the stream: the receiver restarts on it
    payload: bytes


def pack_media(seq: int, timestamp: int, epoch: int, payload: bytes) -> bytes:
    return _HEADER.pack(VERSION, 0, seq & 0xFFFF, timestamp & 0xFFFFFFFF,
                        epoch & 0xFFFFFFFF) + payload


def unpack_media(data: bytes) -> MediaPacket:
    if len(data) < HEADER_BYTES:
        raise WireError(f"media message of {len(data)} bytes is shorter than its header")
    version, _flags, seq, timestamp, epoch = _HEADER.unpack_from(data)
    if version != VERSION:
        raise WireError(f"media message version {version}, this node reads {VERSION}")
    return MediaPacket(seq, timestamp, epoch, data[HEADER_BYTES:])


class Subjects:
    """Every subject the gateway uses, under one prefix (several clusters may share NATS).

    Stream names may hold dots, which NATS reads as token separators: subjects that carry
    a stream name end with it, and wildcard subscriptions use ``>``.
    """

    def __init__(self, prefix: str = "gw") -> None:
        self.prefix = prefix

    def media(self, stream: str) -> str:
        return f"{self.prefix}.media.{stream}"

    def want(self, stream: str) -> str:
        return f"{self.prefix}.want.{stream}"

    @property
    def want_all(self) -> str:
        return f"{self.prefix}.want.>"

    def stream_of_want(self, subject: str) -> str:
        return subject[len(self.prefix) + len(".want."):]

    def node(self, node: str) -> str:
        """Request/reply to one node (end a session it holds, read its streams)."""
        return f"{self.prefix}.node.{node}"


# KV keys allow [-/_=.a-zA-Z0-9]; stream names also allow "~". "=" is not in stream
# names, so it can escape without ambiguity.
def stream_key(stream: str) -> str:
    return stream.replace("~", "=7E")


def stream_of_key(key: str) -> str:
    return key.replace("=7E", "~")


def default_node_name() -> str:
    """The host name, cut to what a node name may hold."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48].strip("-")
    return name or "node"
