"""Plain RTP out: one stream to UDP destinations (unicast or multicast, IPv4 or IPv6).

All destinations on the same shared encoder (codec + packet time) are served by one
fan-out that reads the encoder's packet ring once (as its writes drive it, in the media
clock's tick) and writes each destination's
header (own SSRC, sequence numbers, timestamp offset) in front of the shared payload.
Sending never waits: a full socket buffer drops the packet and counts it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable
from typing import Protocol

from gateway.core.ids import new_id

from ..codecs.spec import CodecSpec
from ..core.counters import OutputCounters
from ..core.ring import RingClosed
from ..core.stream import Stream
from ..models.info import RtpOutputInfo
from ..rtp import rtcp
from ..rtp.packet import build_header
from .encoders import EncodedPacket, SharedEncoder, shared_encoder

log = logging.getLogger(__name__)

SR_INTERVAL_S = 5.0


class OutputError(ValueError):
    """The output cannot be created as asked (sent back as a 400)."""


async def resolve(host: str, port: int) -> tuple[int, tuple]:
    """(address family, sockaddr) for a destination (its port checked by the request,
    models.limits.RtpPort); OutputError if it does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutputError(f"cannot resolve host {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


class Srtp(Protocol):
    """What an output needs of an SRTP session (gateway.sip.sdes.SrtpPair)."""

    def protect(self, rtp: bytes) -> bytes: ...

    def protect_rtcp(self, rtcp: bytes) -> bytes: ...


class RtpOutput:
    """One destination: its own SSRC and sequence, its own counters."""

    def __init__(
        self,
        stream: Stream,
        spec: CodecSpec,
        ptime: int,
        host: str,
        family: int,
        sockaddr: tuple,
        ttl: int = 16,
        payload_type: int | None = None,
        bitrate: int | None = None,
        kind: str = "rtp",
    ) -> None:
        self.id = new_id(8)
        self.kind = kind  # "rtp", or "sip" for the media leg of a call
        self.stream = stream
        self.spec = spec
        self.ptime = ptime
        self.bitrate = bitrate
        self.paused = False  # on hold: packets are not sent, sequence numbers not used
        self.host = host
        self.family = family
        self.sockaddr = sockaddr
        self.rtcp_sockaddr = rtcp_address(sockaddr)
        self.multicast = ipaddress.ip_address(sockaddr[0]).is_multicast
        self.ttl = ttl
        self.payload_type = spec.payload_type if payload_type is None else payload_type
        self.ssrc = secrets.randbits(32)
        self.seq = random.randrange(1 << 16)
        self.ts_offset = secrets.randbits(32)
        self.packets = 0
        self.octets = 0
        self.drops = 0
        self.errors = 0
        self.started = time.time()
        self.last_timestamp = self.ts_offset
        self.last_sent = time.time()
        self.group: RtpFanout | None = None
        #: The socket packets leave from: the pool's, or a call's own (symmetric RTP).
        self.sock: socket.socket | None = None
        #: A call's RTCP socket (port + 1): its reports leave from there (else ``sock``).
        self.rtcp_sock: socket.socket | None = None
        #: Report blocks to put in our SRs (a call: about the phone's RTP).
        self.report_blocks: Callable[[], list[rtcp.ReportBlock]] | None = None
        self.on_close: Callable[[RtpOutput], None] | None = None
        #: A SIP call's SRTP (SDES): protects every packet and report this output sends.
        self.srtp: Srtp | None = None

    def retarget(self, sockaddr: tuple) -> None:
        """Send to where the peer's RTP really comes from (latching behind NAT)."""
        self.sockaddr = sockaddr
        self.rtcp_sockaddr = rtcp_address(sockaddr)

    def header(self, packet: EncodedPacket, marker: bool) -> bytes:
        timestamp = (self.ts_offset + packet.timestamp) & 0xFFFFFFFF
        head = build_header(self.payload_type, marker, self.seq, timestamp, self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        self.last_timestamp = timestamp
        return head

    def sender_report(self, now: float) -> bytes:
        elapsed = int((now - self.last_sent) * self.spec.clock_rate)
        return self._rtcp(rtcp.sender_report(
            ssrc=self.ssrc,
            ntp_time=now,
            rtp_timestamp=(self.last_timestamp + elapsed) & 0xFFFFFFFF,
            packet_count=self.packets,
            octet_count=self.octets,
            cname=f"gateway-{self.stream.name}",
            reports=self.report_blocks() if self.report_blocks is not None else (),
        ))

    def bye(self) -> bytes:
        return self._rtcp(rtcp.bye(self.ssrc, "output stopped"))

    def _rtcp(self, packet: bytes) -> bytes:
        return packet if self.srtp is None else self.srtp.protect_rtcp(packet)

    def sdp(self, origin_address: str = "127.0.0.1") -> str:
        """An SDP file that ffmpeg/ffplay, VLC and GStreamer's sdpdemux open directly."""
        ip6 = self.family == socket.AF_INET6
        net = "IP6" if ip6 else "IP4"
        conn = self.sockaddr[0]
        if self.multicast and not ip6:
            conn = f"{conn}/{self.ttl}"
        lines = [
            "v=0",
            f"o=- {self.ssrc} 1 IN {'IP6' if ':' in origin_address else 'IP4'} {origin_address}",
            f"s={self.stream.name}",
            f"c=IN {net} {conn}",
            "t=0 0",
            f"m=audio {self.sockaddr[1]} RTP/AVP {self.payload_type}",
            f"a=rtpmap:{self.payload_type} {self.spec.rtpmap}",
        ]
        if self.spec.name == "opus":
            lines.append(f"a=fmtp:{self.payload_type} sprop-stereo=0")
        lines += [f"a=ptime:{self.ptime}", "a=recvonly"]
        return "\r\n".join(lines) + "\r\n"

    def info(self) -> RtpOutputInfo:
        return RtpOutputInfo(
            id=self.id,
            type=self.kind,
            stream=self.stream.name,
            host=self.host,
            port=self.sockaddr[1],
            address=self.sockaddr[0],
            multicast=self.multicast,
            codec=self.spec.name,
            clock_rate=self.spec.clock_rate,
            payload_type=self.payload_type,
            ptime=self.ptime,
            ssrc=self.ssrc,
            packets=self.packets,
            bytes=self.octets,
            drops=self.drops,
            errors=self.errors,
            encoder_shared_with=self.shared_with,
            since=self.started,
        )

    def counters(self) -> OutputCounters:
        return OutputCounters(self.packets, self.octets, self.drops, self.errors)

    @property
    def shared_with(self) -> int:
        """How many other listeners and outputs use this output's encoder."""
        if self.group is None:
            return 0
        return (self.group.encoder.subscribers - 1) + (len(self.group.outputs) - 1)

    async def close(self, reason: str = "") -> None:
        if self.on_close is not None:
            self.on_close(self)


def rtcp_address(sockaddr: tuple) -> tuple:
    return (sockaddr[0], sockaddr[1] + 1, *sockaddr[2:])


class SocketPool:
    """Non-blocking send sockets shared by destinations (per family and multicast TTL)."""

    def __init__(self, multicast_interface: str | None = None) -> None:
        self.multicast_interface = multicast_interface
        self._sockets: dict[tuple[int, int | None], socket.socket] = {}

    def get(self, output: RtpOutput) -> socket.socket:
        key = (output.family, output.ttl if output.multicast else None)
        sock = self._sockets.get(key)
        if sock is None:
            sock = socket.socket(output.family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            if output.multicast:
                if output.family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, output.ttl)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                    if self.multicast_interface:
                        sock.setsockopt(
                            socket.IPPROTO_IP,
                            socket.IP_MULTICAST_IF,
                            socket.inet_aton(self.multicast_interface),
                        )
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, output.ttl)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            self._sockets[key] = sock
        return sock

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


def send(sock: socket.socket, output: RtpOutput, data: bytes, address: tuple) -> bool:
    if not data:  # SRTP could not protect it: never sent in the clear
        output.errors += 1
        return False
    try:
        sock.sendto(data, address)
        return True
    except BlockingIOError:
        output.drops += 1
    except (OSError, OverflowError) as exc:  # unreachable, refused (ICMP), port 65536 RTCP
        output.errors += 1
        if output.errors == 1 or output.errors % 500 == 0:
            log.warning("rtp output %s to %s: %s", output.id, address,
                        getattr(exc, "strerror", None) or exc)
    return False


def _failed(output: RtpOutput, exc: Exception) -> None:
    """An output whose packet or report could not be built: counted as an error and
    logged (the first and every 500th); the fan-out's other outputs are not affected."""
    output.errors += 1
    if output.errors == 1 or output.errors % 500 == 0:
        log.error("rtp output %s to %s: cannot build its packet (%d): %r", output.id,
                  output.sockaddr, output.errors, exc)


class RtpFanout:
    """Every RTP destination of one shared encoder, served by a single fan-out (driven
    by the encoder's packet ring: packets leave in the media clock's tick)."""

    def __init__(self, encoder: SharedEncoder, sockets: SocketPool) -> None:
        self.encoder = encoder
        self.sockets = sockets
        self.outputs: dict[str, RtpOutput] = {}
        self._reader = encoder.subscribe(kind="rtp")
        encoder.packets.drive(self._pump)
        self._report_cursor = 0
        self._report_credit = 1.0  # the first output reports at once

    def add(self, output: RtpOutput) -> None:
        output.group = self
        output.sock = output.sock or self.sockets.get(output)
        self.outputs[output.id] = output

    def remove(self, output: RtpOutput) -> None:
        if self.outputs.pop(output.id, None) is not None and output.sock is not None \
                and output.packets:  # nobody heard a never-sent stream: no BYE to them
            send(output.rtcp_sock or output.sock, output, output.bye(), output.rtcp_sockaddr)
        output.group = None
        if not self.outputs:
            self.encoder.packets.undrive(self._pump)
            self.encoder.unsubscribe(self._reader)

    def _pump(self) -> None:
        """Send every packet the encoder wrote since the last call."""
        try:
            while (got := self._reader.read_nowait()) is not None:
                packet = got[1]
                payload = packet.payload
                size = len(payload)
                outputs = list(self.outputs.values())
                for output in outputs:
                    if output.paused:
                        continue
                    try:
                        data = output.header(packet, output.packets == 0) + payload
                        if output.srtp is not None:
                            data = output.srtp.protect(data)
                    except Exception as exc:  # noqa: BLE001 - one broken output, not all
                        _failed(output, exc)
                        continue
                    if send(output.sock, output, data, output.sockaddr):  # type: ignore[arg-type]
                        output.packets += 1
                        output.octets += size
                        output.last_sent = time.time()
                self._send_some_reports(outputs, self.encoder.ptime)
        except RingClosed:
            log.info("rtp fan-out for %s ended: stream closed", self.encoder.stream.name)


    def _send_some_reports(self, outputs: list[RtpOutput], ptime_ms: int) -> None:
        """A slice of the sender reports on every packet: each output gets one per
        SR_INTERVAL_S, and a thousand outputs never burst a thousand reports at once."""
        if not outputs:
            return
        per_interval = SR_INTERVAL_S * 1000 / ptime_ms
        self._report_credit += len(outputs) / per_interval
        now = time.time()
        while self._report_credit >= 1.0:
            self._report_credit -= 1.0
            output = outputs[self._report_cursor % len(outputs)]
            self._report_cursor += 1
            if output.paused:
                continue
            try:
                report = output.sender_report(now)
            except Exception as exc:  # noqa: BLE001 - one broken output, not all
                _failed(output, exc)
                continue
            send(output.rtcp_sock or output.sock, output, report, output.rtcp_sockaddr)  # type: ignore[arg-type]


class RtpOutputs:
    """Creates, lists and stops the RTP outputs of every stream."""

    def __init__(self, multicast_interface: str | None = None) -> None:
        self.sockets = SocketPool(multicast_interface)
        self.outputs: dict[str, RtpOutput] = {}
        #: Ends every output id (".<node>" in a cluster: any node can tell where it is).
        self.id_suffix = ""
        self._fanouts: dict[tuple, RtpFanout] = {}

    async def create(
        self,
        stream: Stream,
        spec: CodecSpec,
        host: str,
        port: int,
        ptime: int = 20,
        ttl: int = 16,
        bitrate: int | None = None,
    ) -> RtpOutput:
        family, sockaddr = await resolve(host, port)
        output = RtpOutput(stream, spec, ptime, host, family, sockaddr, ttl, bitrate=bitrate)
        output.id += self.id_suffix
        self.attach(output)
        output.on_close = self.stop
        self.outputs[output.id] = output
        stream.outputs.add(output)
        log.info(
            "rtp output %s: stream %s -> %s:%d %s/%d ms",
            output.id, stream.name, sockaddr[0], port, spec.name, ptime,
        )
        return output

    def attach(self, output: RtpOutput) -> None:
        """Start sending: join the fan-out of the stream's shared encoder for this codec."""
        encoder = shared_encoder(output.stream, output.spec, output.bitrate, output.ptime)
        key = (output.stream.name, encoder.key)
        fanout = self._fanouts.get(key)
        if fanout is None or fanout.encoder is not encoder:
            fanout = self._fanouts[key] = RtpFanout(encoder, self.sockets)
        fanout.add(output)

    def detach(self, output: RtpOutput) -> None:
        """Stop sending (RTCP BYE); the fan-out and encoder stop with their last output."""
        group = output.group
        if group is not None:
            group.remove(output)
            if not group.outputs:
                key = (output.stream.name, group.encoder.key)
                if self._fanouts.get(key) is group:
                    del self._fanouts[key]

    def stop(self, output: RtpOutput) -> None:
        self.outputs.pop(output.id, None)
        self.detach(output)  # its RTCP BYE counts too
        output.stream.outputs.remove(output)
        log.info("rtp output %s stopped after %d packets", output.id, output.packets)

    def close(self) -> None:
        for output in list(self.outputs.values()):
            self.stop(output)
        self.sockets.close()
