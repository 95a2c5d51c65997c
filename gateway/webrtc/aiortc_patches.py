"""Every place where the gateway reaches into aiortc/aioice internals, kept in one module.

1. Host candidate addresses. aioice gathers every interface address except 127.0.0.1.
   A media server must advertise the addresses its operator names (loopback for tests,
   the container address, ...), so gathering is redirected to a configured list.
2. DTLS cipher suites. aiortc offers only ECDHE-ECDSA suites, so a peer with an RSA
   certificate (GStreamer's webrtcbin, Janus) fails with "no shared cipher" when
   aiortc is the DTLS client. ECDHE-RSA AES-GCM suites are added.
3. Negotiated codecs. aiortc has no public getter for the codecs a transceiver kept
   after setRemoteDescription (``RTCRtpTransceiver._codecs``), and no setter: aiortc
   knows no ``audio/red`` (RFC 2198), so the gateway adds the offer's RED entry to that
   list itself before the answer is created (the answer, and the payload types aiortc's
   receiver passes on to the tap, are made from it).
4. The WHIP jitter buffer. aiortc's audio jitter buffer (prefetch 4, a delay that grows
   for good after one loss) is replaced by the gateway's tap: aiortc offers no hook, so
   the receiver's private ``__jitter_buffer`` is swapped, and the tap reads the payload
   aiortc depayloaded into ``RtpPacket._data``.
5. Sending past aiortc's RTCRtpSender. WHEP listeners get their RTP from one fan-out per
   shared encoder (gateway/egress/webrtc_fanout.py), not from a coroutine per listener:
   it needs the sender's SSRC (``RTCRtpSender._ssrc``, the one the answer announces),
   the DTLS transport's outbound SRTP session (``RTCDtlsTransport._tx_srtp``) and the
   nominated ICE pair's datagram transport and remote address (aioice
   ``Connection._nominated``, watched for a later nomination; asyncio's transport
   ``_sock``), and it writes the counts
   aiortc's own RTCP loop puts in its sender reports (``RTCRtpSender.__packet_count``
   and friends).
6. ICE consent freshness timing. aioice checks consent every ~5 s and gives up after 6
   failed checks (~30 s, RFC 7675); tests shorten that (module constants of aioice.ice).
7. SRTP protect per listener and packet. pylibsrtp's ``Session.protect`` allocates and
   checks on every call; the fan-out calls libsrtp's ``srtp_protect`` through
   pylibsrtp's own cffi binding (``pylibsrtp._binding``, ``Session._srtp``).

8. Receiver reports to WHIP publishers. aiortc's receiver keeps its own statistics per
   remote SSRC (``RTCRtpReceiver.__remote_streams``) and sends an RR from them about once
   a second; they are right except the extended highest sequence, which lacks the
   wrap count (``highest_sequence=stream.max_seq``). The map is swapped for one whose
   entries read the playout's RFC 3550 statistics, so aiortc's loop (SRTCP, interval,
   LSR/DLSR) reports the gateway's numbers.
9. Receiver reports from WHEP listeners. They are routed to the listener's
   RTCRtpSender (``_handle_rtcp_packet``, which keeps them for getStats); the gateway
   wraps that method to read the report blocks about the sender's SSRC too.
10. One UDP port for every session (gateway/webrtc/udp_mux.py). aioice binds a socket per
   session and host address in ``Connection.get_component_candidates``; for the
   connections the gateway marks (its own sessions', reached through the transceivers'
   ``RTCIceGatherer._connection``; never a client's in the same process) host candidates
   on an address with a shared port are made on that port instead: a StunProtocol whose
   transport is the session's place on the shared socket, non-STUN datagrams handed
   straight to ``Connection.data_received``. A local ufrag already on the port is
   replaced (``Connection._local_username``) before it is announced.

tests/test_aiortc_patches.py pins each of these; an aiortc upgrade that moves one fails
there (AiortcChanged), naming the version and the attribute.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any, Protocol

import aioice.ice
import pylibsrtp
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.utils import random_string
from aiortc import (
    RTCDtlsTransport,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket, RtpPacket
from pylibsrtp import Session

from ..rtp.packet import ReceiverStats
from ..rtp.rtcp import ReportBlock
from .udp_mux import Route, SharedUdpPort

AIORTC = f"aiortc {version('aiortc')} (aioice {version('aioice')})"


class AiortcChanged(RuntimeError):
    """An aiortc/aioice internal the gateway relies on is gone (after an upgrade?)."""

    def __init__(self, attribute: str) -> None:
        super().__init__(
            f"{AIORTC} has no {attribute}: gateway/webrtc/aiortc_patches.py must follow it"
        )


def _require(owner: object, name: str, label: str) -> None:
    if not hasattr(owner, name):
        raise AiortcChanged(label)


# -- 1. host candidate addresses ------------------------------------------------------
_require(aioice.ice, "get_host_addresses", "aioice.ice.get_host_addresses")
_original_get_host_addresses = aioice.ice.get_host_addresses
_host_addresses: list[str] = []


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _host_addresses:
        return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def set_host_addresses(addresses: Sequence[str]) -> None:
    """Gather ICE host candidates on exactly these addresses (empty: all interfaces)."""
    _host_addresses[:] = list(addresses)
    aioice.ice.get_host_addresses = _get_host_addresses


# -- 2. DTLS cipher suites ----------------------------------------------------------------
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
)
_require(RTCCertificate, "_create_ssl_context", "RTCCertificate._create_ssl_context")
_original_create_ssl_context = RTCCertificate._create_ssl_context


def _create_ssl_context(self, srtp_profiles):  # type: ignore[no-untyped-def]
    ctx = _original_create_ssl_context(self, srtp_profiles)
    ctx.set_cipher_list(CIPHERS)
    return ctx


def allow_rsa_dtls_peers() -> None:
    """Let aiortc's DTLS handshake complete with peers whose certificate is RSA."""
    RTCCertificate._create_ssl_context = _create_ssl_context  # type: ignore[method-assign]


# -- 3. negotiated codecs -----------------------------------------------------------------
def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs aiortc kept for ``transceiver`` after setRemoteDescription: those both
    sides have, in the offer's order of preference."""
    try:
        return list(transceiver._codecs)
    except AttributeError:
        raise AiortcChanged("RTCRtpTransceiver._codecs") from None


def set_negotiated_codecs(transceiver: RTCRtpTransceiver,
                          codecs: list[RTCRtpCodecParameters]) -> None:
    """Make ``codecs`` (in this order) the transceiver's negotiated codecs: between
    setRemoteDescription and createAnswer, they become the answer's and those aiortc's
    sender and receiver are started with."""
    _require(transceiver, "_codecs", "RTCRtpTransceiver._codecs")
    transceiver._codecs = list(codecs)


# -- 4. the WHIP jitter buffer -------------------------------------------------------------
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


class JitterBufferLike(Protocol):
    """What aiortc's receiver calls for each RTP packet (aiortc.jitterbuffer.JitterBuffer)."""

    def add(self, packet: RtpPacket) -> tuple[bool, Any]: ...


def replace_jitter_buffer(receiver: RTCRtpReceiver, tap: JitterBufferLike) -> None:
    """Hand every RTP packet ``receiver`` gets to ``tap.add(packet)``, not to aiortc's
    audio jitter buffer (and so not to aiortc's decoder)."""
    _require(receiver, _JITTER_BUFFER, "RTCRtpReceiver.__jitter_buffer")
    setattr(receiver, _JITTER_BUFFER, tap)


def jitter_buffer(receiver: RTCRtpReceiver) -> JitterBufferLike:
    """What ``receiver`` hands its packets to (aiortc's buffer, or a tap put there)."""
    _require(receiver, _JITTER_BUFFER, "RTCRtpReceiver.__jitter_buffer")
    return getattr(receiver, _JITTER_BUFFER)


def depayloaded(packet: RtpPacket) -> bytes:
    """The payload aiortc depayloaded before it handed ``packet`` to the jitter buffer."""
    try:
        return packet._data  # type: ignore[attr-defined]
    except AttributeError:
        raise AiortcChanged("RtpPacket._data (set before jitter_buffer.add)") from None


# -- 5. sending past aiortc's RTCRtpSender ------------------------------------------------
def sender_ssrc(sender: RTCRtpSender) -> int:
    """The SSRC ``sender`` announces in the answer (a=ssrc) and its RTCP speaks for."""
    try:
        return sender._ssrc
    except AttributeError:
        raise AiortcChanged("RTCRtpSender._ssrc") from None


#: What RTCRtpSender._run_rtcp reads for each sender report (and getStats for outbound-rtp).
_SR_COUNTS = tuple(
    f"_RTCRtpSender__{name}"
    for name in ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count")
)

SenderReportCounts = Callable[[int, int, int, int], None]


def sender_report_counts(sender: RTCRtpSender) -> SenderReportCounts:
    """A function ``(ntp_timestamp, rtp_timestamp, octets, packets)`` that sets what
    ``sender``'s own RTCP loop reports next (RTCP SR, and outbound-rtp in getStats) for
    packets sent past it. The NTP time is the 64-bit NTP timestamp of the last packet,
    the RTP timestamp that packet's."""
    state = getattr(sender, "__dict__", {})
    for name in _SR_COUNTS:
        if name not in state:
            raise AiortcChanged(f"RTCRtpSender.{name.removeprefix('_RTCRtpSender')}")
    ntp_key, rtp_key, octets_key, packets_key = _SR_COUNTS

    def counts(ntp_timestamp: int, rtp_timestamp: int, octets: int, packets: int) -> None:
        state[ntp_key] = ntp_timestamp
        state[rtp_key] = rtp_timestamp
        state[octets_key] = octets
        state[packets_key] = packets

    return counts


def srtp_tx(dtls: RTCDtlsTransport) -> Session:
    """The outbound SRTP session of a connected DTLS transport (keyed by the handshake)."""
    _require(dtls, "_tx_srtp", "RTCDtlsTransport._tx_srtp")
    session = dtls._tx_srtp
    if not isinstance(session, Session):
        raise ConnectionError("DTLS transport is not connected: no SRTP keys yet")
    return session


def nominated_pairs(dtls: RTCDtlsTransport) -> dict[int, Any]:
    """aioice's live map of component -> nominated candidate pair for ``dtls``'s ICE
    connection: a controlling peer may nominate another pair later, and aioice (and so
    aiortc) then sends on that one."""
    ice = dtls.transport
    _require(ice, "_connection", "RTCIceTransport._connection")
    connection = ice._connection
    _require(connection, "_nominated", "aioice Connection._nominated")
    return connection._nominated


def pair_route(pair: Any) -> tuple[Callable[[bytes, tuple], Any], tuple]:
    """(send function, remote address) of a nominated pair: what aioice's Connection.send
    does per datagram minus two coroutines and, on asyncio's own loop, its transport's
    Python checks: the datagram socket's non-blocking ``sendto`` (BlockingIOError when
    the socket buffer is full, where the transport would queue)."""
    try:
        transport, address = pair.protocol.transport, pair.remote_addr
    except AttributeError:
        raise AiortcChanged("aioice CandidatePair.protocol.transport / .remote_addr") from None
    sock = getattr(transport, "shared_socket", None)  # a session on the shared UDP port
    if sock is None:
        sock = getattr(transport, "_sock", None)  # asyncio's selector datagram transport
    if isinstance(sock, socket.socket):
        return sock.sendto, address
    return transport.sendto, address  # another event loop's transport


# -- 6. ICE consent freshness timing -----------------------------------------------------
_require(aioice.ice, "CONSENT_INTERVAL", "aioice.ice.CONSENT_INTERVAL")
_require(aioice.ice, "CONSENT_FAILURES", "aioice.ice.CONSENT_FAILURES")
CONSENT_DEFAULTS = (aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES)


def set_consent_timing(interval_s: float, failures: int) -> None:
    """Check ICE consent every ~``interval_s`` (randomised 0.8-1.2x) and close the
    connection after ``failures`` checks in a row went unanswered (each waits 0.5 s).
    aioice's defaults, 5 s and 6, let a vanished peer go after about 30 s (RFC 7675)."""
    aioice.ice.CONSENT_INTERVAL = interval_s  # type: ignore[assignment]
    aioice.ice.CONSENT_FAILURES = failures


# -- 7. SRTP protect per listener and packet -----------------------------------------------
try:
    from pylibsrtp._binding import ffi as _srtp_ffi
    from pylibsrtp._binding import lib as _srtp_lib
except ImportError:  # pragma: no cover - a pylibsrtp that moved its binding
    raise AiortcChanged("pylibsrtp._binding (ffi, lib)") from None
_require(_srtp_lib, "srtp_protect", "pylibsrtp._binding.lib.srtp_protect")
#: One scratch buffer for every protector: each call copies its result out at once.
_SRTP_BUFFER = _srtp_ffi.new("char[]", 1500)
_SRTP_VIEW = _srtp_ffi.buffer(_SRTP_BUFFER)
_SRTP_LENGTH = _srtp_ffi.new("int *")
#: Room libsrtp may add (authentication tag, MKI), as pylibsrtp reserves it.
_SRTP_MAX_PACKET = 1500 - 16 - 128


def srtp_protector(session: Session) -> Callable[[bytes], bytes]:
    """``session.protect`` without its per-call allocation and checks: same bytes out,
    about a third less time (it is called once per listener and packet)."""
    _require(session, "_srtp", "pylibsrtp Session._srtp")
    srtp_t = session._srtp[0]
    protect_c, buffer, view, length = (
        _srtp_lib.srtp_protect, _SRTP_BUFFER, _SRTP_VIEW, _SRTP_LENGTH)
    slow = session.protect

    def protect(packet: bytes) -> bytes:
        size = len(packet)
        if size > _SRTP_MAX_PACKET:
            return slow(packet)  # raises pylibsrtp's own error
        view[0:size] = packet
        length[0] = size
        error = protect_c(srtp_t, buffer, length)
        if error:
            raise pylibsrtp.Error(f"srtp_protect failed (libsrtp error {error})")
        return view[0 : length[0]]

    protect.session = session  # type: ignore[attr-defined]  # keeps srtp_t alive
    return protect


# -- 8. receiver reports to WHIP publishers ---------------------------------------------
_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"

StatsLookup = Callable[[int], "ReceiverStats | None"]


class _StatsView:
    """Stands where aiortc keeps a remote SSRC's StreamStatistics: aiortc still calls
    ``add`` per packet (a no-op: the playout counts) and its RTCP loop and getStats read
    the properties, from the gateway's statistics of that SSRC."""

    __slots__ = ("_lookup", "_ssrc", "_reported")

    def __init__(self, lookup: StatsLookup, ssrc: int, reported: Callable[[], None]) -> None:
        self._lookup = lookup
        self._ssrc = ssrc
        self._reported = reported

    def add(self, packet: RtpPacket) -> None:
        pass

    @property
    def fraction_lost(self) -> int:  # read once per RR: starts a new interval
        stats = self._lookup(self._ssrc)
        self._reported()
        return stats.fraction_lost() if stats is not None else 0

    @property
    def packets_lost(self) -> int:
        stats = self._lookup(self._ssrc)
        return stats.cumulative_lost if stats is not None else 0

    @property
    def max_seq(self) -> int:  # what aiortc puts in "extended highest sequence"
        stats = self._lookup(self._ssrc)
        return stats.extended_highest_sequence if stats is not None else 0

    @property
    def jitter(self) -> int:
        stats = self._lookup(self._ssrc)
        return stats.jitter if stats is not None else 0

    @property
    def packets_received(self) -> int:
        stats = self._lookup(self._ssrc)
        return stats.received if stats is not None else 0


class _ReceptionMap(dict):
    """aiortc's ``__remote_streams``, whose new entries are views of our statistics."""

    def __init__(self, lookup: StatsLookup, reported: Callable[[], None]) -> None:
        super().__init__()
        self._lookup = lookup
        self._reported = reported

    def __setitem__(self, ssrc: int, _aiortc_stats: object) -> None:
        super().__setitem__(ssrc, _StatsView(self._lookup, ssrc, self._reported))


def report_reception(receiver: RTCRtpReceiver, lookup: StatsLookup,
                     reported: Callable[[], None] = lambda: None) -> None:
    """Make ``receiver``'s receiver reports (and getStats' inbound-rtp) say what
    ``lookup(ssrc)`` has for each remote SSRC; ``reported()`` is called per report block."""
    _require(receiver, _REMOTE_STREAMS, "RTCRtpReceiver.__remote_streams")
    setattr(receiver, _REMOTE_STREAMS, _ReceptionMap(lookup, reported))


# -- 9. receiver reports from WHEP listeners -----------------------------------------------
_SENDER_RTT = "_RTCRtpSender__rtt"

ReportsHandler = Callable[[list[ReportBlock], "float | None"], None]


def on_receiver_reports(sender: RTCRtpSender, handler: ReportsHandler) -> None:
    """Call ``handler(blocks, rtt)`` with the report blocks about ``sender``'s SSRC in
    every SR or RR routed to it (after aiortc kept them), and aiortc's round-trip
    estimate (seconds, None before one)."""
    _require(sender, "_handle_rtcp_packet", "RTCRtpSender._handle_rtcp_packet")
    if _SENDER_RTT not in getattr(sender, "__dict__", {}):
        raise AiortcChanged("RTCRtpSender.__rtt")
    original = sender._handle_rtcp_packet
    ssrc = sender_ssrc(sender)

    async def handle(packet: Any) -> None:
        await original(packet)
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            blocks = [
                ReportBlock(r.ssrc, r.fraction_lost, r.packets_lost, r.highest_sequence,
                            r.jitter, r.lsr, r.dlsr)
                for r in packet.reports if r.ssrc == ssrc
            ]
            if blocks:
                handler(blocks, sender.__dict__.get(_SENDER_RTT))

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


def forget_reports(pc: RTCPeerConnection) -> None:
    """Undo ``report_reception`` and ``on_receiver_reports`` on a closed peer connection:
    their hooks refer back to the session's ingress or egress, a cycle that only a full
    collection would free (gateway/heap.py freezes long-lived sessions)."""
    for transceiver in pc.getTransceivers():
        if isinstance(getattr(transceiver.receiver, _REMOTE_STREAMS, None), _ReceptionMap):
            setattr(transceiver.receiver, _REMOTE_STREAMS, {})
        transceiver.sender.__dict__.pop("_handle_rtcp_packet", None)


# -- 10. one UDP port for every session ---------------------------------------------------
_require(aioice.ice.Connection, "get_component_candidates",
         "aioice Connection.get_component_candidates")
_require(aioice.ice, "server_reflexive_candidate", "aioice.ice.server_reflexive_candidate")
_original_get_component_candidates = aioice.ice.Connection.get_component_candidates
#: Where a marked aioice Connection finds its shared ports (host address -> port).
_SHARED_PORTS = "_gateway_shared_ports"


def gather_on_shared_ports(pc: RTCPeerConnection, ports: Mapping[str, SharedUdpPort]) -> None:
    """Make ``pc``'s ICE host candidates on an address in ``ports`` use that shared port.
    Call it between setRemoteDescription (which makes the transceivers) and createAnswer
    (which gathers)."""
    aioice.ice.Connection.get_component_candidates = _get_component_candidates  # type: ignore[method-assign]
    for transceiver in pc.getTransceivers():
        gatherer = transceiver.sender.transport.transport.iceGatherer
        _require(gatherer, "_connection", "RTCIceGatherer._connection")
        connection = gatherer._connection
        _require(connection, "_local_username", "aioice Connection._local_username")
        setattr(connection, _SHARED_PORTS, ports)


async def _get_component_candidates(self: aioice.ice.Connection, component: int,
                                    addresses: list[str], timeout: int = 5) -> list[Candidate]:
    ports: Mapping[str, SharedUdpPort] = getattr(self, _SHARED_PORTS, {})
    open_on = {a for a in addresses if a in ports and ports[a].sock is not None}
    shared = [ports[a] for a in addresses if a in open_on]
    if component != 1 or not shared:  # aiortc muxes RTCP: component 1 is all there is
        return await _original_get_component_candidates(self, component, addresses, timeout)
    while any(port.has(self.local_username) for port in shared):
        self._local_username = random_string(16)
    candidates, protocols = [], []
    for port in shared:
        protocol = aioice.ice.StunProtocol(self)
        route = Route(self.local_username, self.local_password.encode("utf8"),
                      protocol.datagram_received,
                      functools.partial(self.data_received, component=component))
        protocol.connection_made(port.attach(route, protocol.connection_lost))
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", port.host), component=component,
            transport="udp", priority=candidate_priority(component, "host"),
            host=port.host, port=port.port, type="host")
        candidates.append(protocol.local_candidate)
        protocols.append(protocol)
    self._protocols += protocols
    reflexive = [
        asyncio.create_task(aioice.ice.server_reflexive_candidate(p, self.stun_server))
        for p in protocols
        if self.stun_server and ipaddress.ip_address(p.local_candidate.host).version == 4
    ]
    rest = [a for a in addresses if a not in open_on]
    candidates += await _original_get_component_candidates(self, component, rest, timeout)
    if reflexive:  # as aioice does for its own sockets
        done, pending = await asyncio.wait(reflexive, timeout=timeout)
        candidates += [t.result()[0] for t in done if t.exception() is None]
        for task in pending:
            task.cancel()
    return candidates


def host_addresses() -> list[str]:
    """The addresses aioice gathers host candidates on (the configured ones, or every
    interface's but loopback)."""
    return aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
