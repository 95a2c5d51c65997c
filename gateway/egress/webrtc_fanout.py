"""WHEP listeners of one shared encoder, served by a single fan-out.

aiortc gives every listener its own RTCRtpSender coroutine: one ``await track.recv()``,
one header build, one SRTP protect and one ``await`` chain down to ``sendto`` per
packet and listener. Here one fan-out reads each packet from the encoder's ring once
(driven by the ring's writes, in the media clock's tick) and,
for every connected listener in turn, writes that listener's header (its SSRC,
sequence, timestamp offset, payload type and ``mid`` extension), protects it with the
listener's SRTP session and hands it to the listener's ICE socket without waiting.
Listeners that negotiated RED (RFC 2198) get each packet with the previous one as a
redundant block; that payload is built once per packet (per Opus payload type), not
once per listener.

aiortc keeps everything else per listener: signalling, ICE (and its consent checks),
DTLS, the RTCP sender reports (its RTCP loop reports the counts written here) and the
receiver reports (routed to its RTCRtpSender, so getStats() still has them).
"""

from __future__ import annotations

import errno
import logging
import random
import secrets
import struct
import time
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.sdp import SessionDescription

from ..core.ring import RingClosed
from ..rtp.red import red_with_previous
from ..rtp.rtcp import ntp_from_unix
from ..webrtc import aiortc_patches
from .encoders import EncodedPacket, SharedEncoder

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
#: Every 8th packet (160 ms) a listener's path is refreshed: the counts aiortc's sender
#: reports (each report then describes a packet at most that old, its NTP and RTP times
#: a consistent pair) and the ICE pair to send on; an eighth of the cost of every packet.
REFRESH_EVERY_MASK = 7


def mid_extension(ext_id: int | None, mid: str | None) -> bytes:
    """The RFC 8285 one-byte header extension block carrying ``mid`` (empty without one).

    BUNDLE receivers (browsers) use it to find the m-line of a packet, as aiortc sends it.
    """
    if not ext_id or not mid:
        return b""
    value = mid.encode()
    if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
        raise ValueError(f"mid {mid!r} with id {ext_id} does not fit a one-byte extension")
    data = bytes([(ext_id << 4) | (len(value) - 1)]) + value
    data += b"\0" * (-len(data) % 4)
    return b"\xbe\xde" + (len(data) // 4).to_bytes(2, "big") + data


class ListenerPath:
    """One listener's way out: its RTP header fields, SRTP session and ICE socket."""

    __slots__ = (
        "b0", "b1", "payload_type", "red_of", "ssrc", "seq", "ts_offset", "extension",
        "protect", "sendto", "address", "report", "pairs", "pair", "packets", "octets",
        "drops", "errors", "skipped_at_join",
    )  # fmt: skip

    def __init__(
        self,
        payload_type: int,
        ssrc: int,
        extension: bytes,
        protect: Callable[[bytes], bytes],
        sendto: Callable[[bytes, tuple], Any],
        address: tuple,
        report: Callable[[int, int, int, int], None] | None = None,
        pairs: dict[int, Any] | None = None,
        red_payload_type: int | None = None,
    ) -> None:
        self.b0 = 0x90 if extension else 0x80  # version 2, X bit with an extension
        #: The RTP header's payload type: RED's when negotiated, else the codec's.
        self.payload_type = payload_type if red_payload_type is None else red_payload_type
        #: With RED, the codec's payload type its blocks name (None: plain packets).
        self.red_of = None if red_payload_type is None else payload_type
        self.b1 = 0x80 | self.payload_type  # marker on the first packet: a talkspurt starts
        self.ssrc = ssrc
        # lower half, as aiortc: a wrap early in the stream trips some SRTP receivers
        self.seq = random.randrange(1 << 15)
        self.ts_offset = secrets.randbits(32)
        self.extension = extension
        self.protect = protect
        self.sendto = sendto
        self.address = address
        self.report = report
        self.pairs = pairs  # aioice's nominated pairs, to follow a later nomination
        self.pair = pairs.get(1) if pairs else None
        self.packets = 0
        self.octets = 0
        self.drops = 0  # the socket buffer was full
        self.errors = 0
        self.skipped_at_join = 0

    def refresh(self, ntp: int, timestamp: int) -> None:
        """Every few packets: the counts for aiortc's next sender report, and the ICE
        pair to send on (a controlling peer may nominate another one at any time)."""
        if self.report is not None:
            self.report(ntp, timestamp, self.octets, self.packets)
        if self.pairs is not None:
            pair = self.pairs.get(1)
            if pair is self.pair:
                return
            if pair is None:  # ICE closed (consent expired): stop at once (RFC 7675)
                self.sendto = _ice_closed
            else:
                self.sendto, self.address = aiortc_patches.pair_route(pair)
                log.info("webrtc listener ssrc %08x: ICE nominated %s", self.ssrc, pair)
            self.pair = pair


def listener_path(pc: RTCPeerConnection, transceiver: RTCRtpTransceiver,
                  payload_type: int, red_payload_type: int | None = None) -> ListenerPath:
    """The path of a connected WHEP peer connection (raises ConnectionError if not);
    with ``red_payload_type``, its packets are RED carrying ``payload_type``."""
    sender = transceiver.sender
    dtls = sender.transport
    if dtls.state != "connected":
        raise ConnectionError(f"DTLS is {dtls.state}")
    pairs = aiortc_patches.nominated_pairs(dtls)
    if pairs.get(1) is None:  # component 1: RTP and RTCP (rtcp-mux)
        raise ConnectionError("ICE has no nominated pair")
    sendto, address = aiortc_patches.pair_route(pairs[1])
    ext_id = None
    answer = SessionDescription.parse(pc.localDescription.sdp)
    for media in answer.media:
        if media.rtp.muxId == transceiver.mid:
            ext_id = next((x.id for x in media.rtp.headerExtensions if x.uri == MID_URI), None)
    return ListenerPath(
        payload_type=payload_type,
        ssrc=aiortc_patches.sender_ssrc(sender),
        extension=mid_extension(ext_id, transceiver.mid),
        protect=aiortc_patches.srtp_protector(aiortc_patches.srtp_tx(dtls)),
        sendto=sendto,
        address=address,
        report=aiortc_patches.sender_report_counts(sender),
        pairs=pairs,
        red_payload_type=red_payload_type,
    )


class WebRTCFanout:
    """Every WHEP listener of one shared encoder; listeners send once connected."""

    _by_encoder: dict[SharedEncoder, WebRTCFanout] = {}

    def __init__(self, encoder: SharedEncoder) -> None:
        self.encoder = encoder
        self.members = 0  # listeners joined, connected or not
        self.paths: list[ListenerPath] = []  # connected ones, in sending order
        self._reader = encoder.subscribe(kind="webrtc")
        self.previous: EncodedPacket | None = None  # for RED listeners' redundant block
        encoder.packets.drive(self._pump)

    @classmethod
    def join(cls, encoder: SharedEncoder) -> WebRTCFanout:
        """The encoder's fan-out (started on first use), counting one more listener.

        Each listener counts as one of the encoder's subscribers, as an own reader did."""
        fanout = cls._by_encoder.get(encoder)
        if fanout is None:
            fanout = cls._by_encoder[encoder] = cls(encoder)
        else:
            encoder.subscribers += 1
        fanout.members += 1
        return fanout

    def leave(self, path: ListenerPath | None) -> None:
        """A listener is gone; the fan-out (and maybe the encoder) stops with the last."""
        if path is not None:
            self.stop_sending(path)
        self.members -= 1
        if self.members > 0:
            self.encoder.subscribers -= 1
            return
        self.encoder.packets.undrive(self._pump)
        self.encoder.unsubscribe(self._reader)
        if self._by_encoder.get(self.encoder) is self:
            del self._by_encoder[self.encoder]

    def start_sending(self, path: ListenerPath) -> None:
        """Send ``path`` every packet from the next one on (the live head)."""
        path.skipped_at_join = self._reader.skipped
        self.paths = [*self.paths, path]  # a new list: never mutated while iterated

    def stop_sending(self, path: ListenerPath) -> None:
        if path in self.paths:
            self.paths = [p for p in self.paths if p is not path]

    def skipped(self, path: ListenerPath) -> int:
        """Packets the fan-out missed (it fell a whole ring behind) since ``path`` joined."""
        return self._reader.skipped - path.skipped_at_join

    def _pump(self) -> None:
        """Send every packet the encoder wrote since the last call (the packet ring calls
        it as each is written: in the media clock's tick)."""
        try:
            while (got := self._reader.read_nowait()) is not None:
                packet = got[1]
                send(self.paths, packet, self.previous)
                self.previous = packet
        except RingClosed:
            log.info("webrtc fan-out for %s ended: stream closed", self.encoder.stream.name)


def send(paths: list[ListenerPath], packet: EncodedPacket,
         previous: EncodedPacket | None = None) -> None:
    """The per-packet path: each listener's header, SRTP and datagram; no awaits, and
    a listener whose send fails misses its packet, nobody else does. RED listeners get
    ``packet`` with ``previous`` (the encoder's packet before it) as redundancy."""
    plain = packet.payload
    media_ts = packet.timestamp
    ntp = ntp_from_unix(time.time())
    pack = _HEADER.pack
    red: dict[int, bytes] | None = None  # RED payload by Opus payload type, built once
    for path in paths:
        red_of = path.red_of
        if red_of is None:
            payload = plain
        else:
            if red is None:
                red = {}
            cached = red.get(red_of)
            if cached is None:
                cached = red[red_of] = red_payload(red_of, packet, previous)
            payload = cached
        timestamp = (path.ts_offset + media_ts) & 0xFFFFFFFF
        seq = path.seq
        path.seq = (seq + 1) & 0xFFFF
        try:
            path.sendto(
                path.protect(
                    pack(path.b0, path.b1, seq, timestamp, path.ssrc) + path.extension
                    + payload),
                path.address)
        except BlockingIOError:  # never wait: this listener misses this packet
            path.drops += 1
            continue
        except Exception as exc:  # noqa: BLE001 - one broken listener, not everyone
            _failed(path, exc)
            continue
        path.b1 = path.payload_type
        path.octets += len(payload)
        path.packets += 1
        if not path.packets & REFRESH_EVERY_MASK:
            path.refresh(ntp, timestamp)


def red_payload(payload_type: int, packet: EncodedPacket,
                previous: EncodedPacket | None) -> bytes:
    """``packet`` as RED: its previous packet as the redundant block (distance 1, or
    more after a skip: the offset says how far back), or none when there is none."""
    if previous is None:
        return red_with_previous(payload_type, packet.payload, None, 0)
    offset = (packet.timestamp - previous.timestamp) & 0xFFFFFFFF
    return red_with_previous(payload_type, packet.payload, previous.payload, offset)


def _ice_closed(data: bytes, address: tuple) -> None:
    """A closed ICE connection's send: no packet, as when aioice closed its own socket
    (on the shared UDP port the socket stays open for the other sessions)."""
    raise OSError(errno.EBADF, "ICE connection closed")


def _failed(path: ListenerPath, exc: Exception) -> None:
    path.errors += 1
    if isinstance(exc, OSError) and exc.errno == errno.EBADF:
        return  # ICE closed its socket (consent expired): DTLS closes next
    if path.errors == 1 or path.errors % 500 == 0:
        log.warning("webrtc listener ssrc %08x: send failed (%d): %r",
                    path.ssrc, path.errors, exc)
