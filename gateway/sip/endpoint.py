"""The asyncio side of SIP: UDP and TCP sockets around the sans-IO transaction layer.

Everything protocol-shaped happens in ``message``, ``transaction`` and ``nat``; this
module only moves bytes, applies the size and rate limits before parsing, and wakes the
transaction layer when its next timer is due. Events go to one handler (the service).

Workers of ``gateway serve --workers N`` share the SIP port (SO_REUSEPORT), and the kernel
hands each datagram to the worker its 4-tuple hashes to: right for calls that come in (a
phone's messages keep one 4-tuple), wrong for what a worker sends itself, whose answers
would land on any worker. So each worker also has a port of its own (``own_port``):
requests it originates leave from there, name it in Via and Contact, and their responses
and the dialog's later requests come back to it. Flows on that port carry ``OWN``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.cpu_budget import CpuBudget
from ..logs import request_id
from .dialog import new_branch
from .limits import RateLimiter
from .message import (
    Address,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Uri,
    Via,
    bare_host,
    parse_message,
    response_to,
)
from .nat import reply_address, stamp_received
from .overload import SetupGate
from .transaction import Event, Flow, Timers, TransactionLayer
from .udp import BatchedUdp

log = logging.getLogger(__name__)
CONTENT_LENGTH = re.compile(rb"(?im)^(content-length|l)[ \t]*:[^\r\n]*")
#: A TLS client must finish its handshake within this (asyncio counts a connection only
#: after it, so a client that never finishes would otherwise hold a socket for 60 s).
TLS_HANDSHAKE_TIMEOUT_S = 5.0

#: The fourth item of a flow on this worker's own port (a flow without it: the shared port).
OWN = "own"


def is_own(flow: Flow) -> bool:
    return len(flow) > 3 and flow[3] == OWN  # type: ignore[misc]


class EndpointError(OSError):
    """The SIP port cannot be opened; the message says which and why."""


@dataclass
class EndpointSettings:
    bind_host: str = "127.0.0.1"
    port: int = 5060  # 0: any free port (the same for UDP and TCP)
    advertised_host: str = ""  # written in Via and Contact; default: bind_host
    transports: tuple[str, ...] = ("udp", "tcp")
    max_message_bytes: int = 16384
    rate_per_s: float = 50.0
    rate_burst: int = 100
    max_transactions: int = 10000
    #: Accepted TCP/TLS connections; beyond it new ones are closed at once. The
    #: gateway's own (dial-out, upstream registrations) are not counted.
    max_connections: int = 1000
    #: Accepted connections from one address; beyond it new ones from it are closed.
    max_connections_per_host: int = 100
    #: An accepted connection that has received nothing this long is closed, unless a
    #: call or a registration uses it (RFC 3261 §18: the phone reopens one when needed).
    tcp_idle_timeout_s: float = 120.0
    #: A TCP message must arrive whole within this time of its first byte (and an accepted
    #: connection must start one within it), else the connection is closed: clients that
    #: connect and say nothing, or dribble, would otherwise hold the connection cap.
    tcp_message_timeout_s: float = 30.0
    #: Networks allowed to send SIP; empty: all. Others are dropped and counted.
    allow_from: tuple[str, ...] = ()
    user_agent: str = "audio-gateway"
    #: Share the port with the other workers of `gateway serve --workers` (SO_REUSEPORT).
    reuse_port: bool = False
    #: A worker's own port (UDP and TCP; 0: any free one) for the requests it originates
    #: and their dialogs; None: none (a single process owns the SIP port).
    own_port: int | None = None
    #: New out-of-dialog INVITEs admitted per second (more: 503 at once); 0: no limit.
    max_setup_rate: float = 120.0
    #: SIP over TLS: listen on ``tls_port`` (0: any free one) with ``server_ssl``;
    #: connect out with ``client_ssl`` (it verifies the server's certificate).
    tls_port: int = 5061
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None


@dataclass
class Counters:
    received: int = 0
    sent: int = 0
    malformed: int = 0
    too_large: int = 0
    rate_limited: int = 0
    send_errors: int = 0
    connections_refused: int = 0
    connections_timed_out: int = 0  # closed for not completing a message in time
    connections_idle_closed: int = 0  # idle past tcp_idle_timeout_s, used by no call
    forbidden: int = 0  # from sources outside allow_from


class SipEndpoint:
    def __init__(self, settings: EndpointSettings, handler: Callable[[Event], None],
                 timers: Timers | None = None) -> None:
        self.settings = settings
        self.handler = handler
        timers = timers or Timers()
        #: Refuses new calls cheaply under overload (503 before any transaction exists).
        self.gate = SetupGate(settings.max_setup_rate, remember_s=64 * timers.t1)
        self.layer = TransactionLayer(timers, settings.max_transactions, self.gate)
        self._episodes_seen = 0
        self._episode_timer: asyncio.TimerHandle | None = None
        self.limiter = RateLimiter(settings.rate_per_s, settings.rate_burst)
        self.counters = Counters()
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allow_from]
        self.port = settings.port
        #: Paces request handling under a container CPU quota (the gateway shares its own).
        self.budget = CpuBudget()
        self.own_port: int | None = None  # bound when settings.own_port is not None
        self._udp: BatchedUdp | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self._own_udp: BatchedUdp | None = None
        self._own_tcp_server: asyncio.AbstractServer | None = None
        self.tls_port: int | None = None  # bound when settings.server_ssl is set
        self._tls_server: asyncio.AbstractServer | None = None
        #: Open stream connections by (transport, peer host, peer port), and by the
        #: Contact address of the phone that opened one (RFC 5923's alias, implied):
        #: requests to that phone go back over its connection (a phone rarely has a
        #: certificate the gateway could verify as a TLS server's).
        self._connections: dict[tuple[str, str, int], SipStream] = {}
        #: Accepted (inbound) connections, by identity: two may share a key (a phone
        #: connecting from one port to the shared port and to a worker's own).
        self._accepted: set[SipStream] = set()
        self._accepted_by_host: dict[str, int] = {}
        #: The connection keys a call or a registration uses (the service's): the idle
        #: sweep never closes those.
        self.in_use: Callable[[], set[tuple[str, str, int]]] = set
        self._sweep: asyncio.TimerHandle | None = None
        self._aliases: dict[tuple[str, str, int], SipStream] = {}
        self._tls_names: dict[tuple[str, int], str] = {}  # the name a TLS peer is checked by
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        host = self.settings.bind_host
        self._udp, self._tcp_server, self.port = await self._open(
            host, self.settings.port, "SIP port", own=False)
        if self.settings.own_port is not None:
            try:
                self._own_udp, self._own_tcp_server, self.own_port = await self._open(
                    host, self.settings.own_port, "this worker's own SIP port", own=True)
            except EndpointError:
                await self.close()
                raise
        if self.settings.server_ssl is not None:
            try:
                self._tls_server = await asyncio.get_running_loop().create_server(
                    lambda: SipStream(self, inbound=True, transport="TLS"), host,
                    self.settings.tls_port, ssl=self.settings.server_ssl,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S,
                    reuse_address=True, reuse_port=self.settings.reuse_port or None)
            except OSError as exc:
                await self.close()
                raise EndpointError(exc.errno, f"cannot open the SIP TLS port {host}:"
                                    f"{self.settings.tls_port}: {exc.strerror}") from None
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        log.info("sip listening on %s:%d%s (%s)%s, advertised as %s", host, self.port,
                 f" and {self.own_port} (this worker's own)" if self.own_port else "",
                 "+".join(self.settings.transports),
                 f", TLS on {self.tls_port}" if self.tls_port else "", self.advertised_host)

    async def _open(self, host: str, port: int, what: str, own: bool
                    ) -> tuple[BatchedUdp | None, asyncio.AbstractServer | None, int]:
        """UDP and TCP sockets on one port (any free one for 0: tried again if its number
        is taken for the other transport)."""
        attempts = 20 if port == 0 else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._bind(host, port, own)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == attempts:
                    raise EndpointError(
                        exc.errno, f"cannot open {what} {host}:{port}: {exc.strerror}"
                    ) from None
        raise AssertionError("unreachable")

    async def _bind(self, host: str, port: int, own: bool
                    ) -> tuple[BatchedUdp | None, asyncio.AbstractServer | None, int]:
        loop = asyncio.get_running_loop()
        reuse_port = (self.settings.reuse_port and not own) or None
        udp = tcp = None
        try:
            if "udp" in self.settings.transports:
                local: tuple[str, ...] = (OWN,) if own else ()  # a flow's fourth item
                udp = await BatchedUdp.open(
                    host, port, bool(reuse_port),
                    lambda data, addr, arrived: self.received_datagram(data, addr, arrived, local),
                    self.budget, self.gate.refusing)
                port = udp.sockname[1]
            if "tcp" in self.settings.transports:
                tcp = await loop.create_server(
                    lambda: SipStream(self, inbound=True, own=own), host, port,
                    reuse_address=True, reuse_port=reuse_port,
                )
                port = tcp.sockets[0].getsockname()[1]
        except OSError:
            if udp is not None:
                udp.close()
            raise
        return udp, tcp, port

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._episode_timer is not None:
            self._episode_timer.cancel()
            self._episode_timer = None
        for udp in (self._udp, self._own_udp):
            if udp is not None:
                udp.close()
        self._udp = self._own_udp = None
        for conn in {*self._connections.values(), *self._accepted}:
            conn.close()
        for server in (self._tcp_server, self._own_tcp_server, self._tls_server):
            if server is not None:
                server.close()
        self._tcp_server = self._own_tcp_server = self._tls_server = None

    @property
    def listening(self) -> bool:
        """A UDP socket or a TCP server is open (started, not closed)."""
        return self._udp is not None or self._tcp_server is not None

    @property
    def advertised_host(self) -> str:
        return self.settings.advertised_host or self.settings.bind_host

    @property
    def udp_backlog_dropped(self) -> int:
        """UDP datagrams dropped because the backlog waiting for the CPU was full."""
        return sum(udp.dropped for udp in (self._udp, self._own_udp) if udp is not None)

    # -- what the service uses -----------------------------------------------------
    def _port_of(self, flow: Flow) -> int:
        if flow[0].upper() == "TLS" and self.tls_port is not None:
            return self.tls_port
        return self.own_port if is_own(flow) and self.own_port is not None else self.port

    def via(self, flow: Flow) -> Via:
        """A new top Via for a request sent on ``flow``: it names the port the request
        leaves from, where its responses come back."""
        return Via(flow[0].upper(), self.advertised_host, self._port_of(flow),
                   {"branch": new_branch(), "rport": None})

    def contact(self, user: str | None = None, flow: Flow = ("UDP", "", 0)) -> Address:
        """Our Contact in a dialog on ``flow``: the far end's requests in it come there."""
        transport = flow[0].upper()
        params = {"transport": transport.lower()} if transport in ("TCP", "TLS") else {}
        return Address(Uri("sip", self.advertised_host, user, self._port_of(flow), params))

    def stream_flow(self, key: tuple[str, str, int]) -> Flow | None:
        """The flow of the open TCP/TLS connection with the far end ``(transport, host,
        port)`` (one a phone opened, or one the gateway did), None if there is none."""
        conn = self._connections.get(key)
        if conn is None or conn.transport is None:
            return None
        return (*conn.key, *conn.local)  # type: ignore[return-value]

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def flow_for(self, uri: Uri, own: bool = False) -> Flow:
        """Where a request to ``uri`` goes: its transport, host and port (no SRV lookups).
        ``own``: from this worker's own port, if it has one (requests it originates)."""
        named = (uri.params.get("transport") or "").lower()
        transport = "TLS" if named == "tls" or uri.scheme == "sips" else \
            "TCP" if named == "tcp" else "UDP"
        port = uri.port or (5061 if transport == "TLS" else 5060)
        host = bare_host(uri.host)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_DGRAM
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise EndpointError(errno.EHOSTUNREACH, f"cannot resolve {host!r}: {exc}") from None
        address = infos[0][4][0]
        if transport == "TLS":
            if self.settings.server_ssl is None:
                raise EndpointError(errno.EPROTONOSUPPORT, "SIP over TLS needs sip.tls_cert "
                                    "and sip.tls_key (the gateway's own TLS port)")
            self._tls_names[(address, port)] = host
        if own and self.own_port is not None:
            return (transport, address, port, OWN)
        return (transport, address, port)

    def request(self, request: Request, flow: Flow):  # type: ignore[no-untyped-def]
        request.headers.set("User-Agent", self.settings.user_agent)
        tx = self.layer.request(request, flow, self.now())
        self._flush()
        return tx

    def respond(self, tx: Any, response: Response) -> None:
        response.headers.set("Server", self.settings.user_agent)
        self.layer.respond(tx, response, self.now())
        self._flush()

    def send_stateless(self, message: Request | Response, flow: Flow) -> None:
        self.layer.send_stateless(message, flow)
        self._flush()

    def cancel(self, tx: Any) -> None:
        self.layer.cancel(tx, self.now())
        self._flush()

    # -- incoming ------------------------------------------------------------------
    def received_datagram(self, data: bytes, addr: tuple, arrived: float,
                          local: tuple[str, ...]) -> None:
        """One datagram from a UDP socket, read at ``arrived`` (event-loop time)."""
        if data.strip(b"\r\n") != b"":  # else a keep-alive (RFC 5626 §4.4.1)
            self.received(data, ("UDP", addr[0], addr[1], *local), arrived)

    def received(self, data: bytes, flow: Flow, arrived: float | None = None) -> None:
        """One datagram or one framed stream message from ``flow``; ``arrived``: when it
        was read, if its handling waited (new INVITEs count against the setup rate as
        they arrive)."""
        self.counters.received += 1
        transport, host, port = flow[:3]
        if self.allowed and not self._allowed(host):
            self.counters.forbidden += 1
            return
        if not self.limiter.allow(host, self.now()):
            self.counters.rate_limited += 1
            return
        if len(data) > self.settings.max_message_bytes:
            self.counters.too_large += 1
            self._reject_too_large(data, flow)
            return
        message: Request | Response | None = None
        try:
            message = parse_message(data, self.settings.max_message_bytes)
            message.validate()
        except SipParseError as exc:
            self.counters.malformed += 1
            if self.counters.malformed == 1 or self.counters.malformed % 1000 == 0:
                log.warning("sip: malformed message from %s:%d: %s", host, port, exc)
            # 400 with the reason when the request parsed well enough to route a reply
            if isinstance(message, Request) and message.method != "ACK":
                self._reply_stateless(message, 400, flow, reason=f"Bad Request ({str(exc)[:60]})")
            return
        if isinstance(message, Request):
            stamp_received(message, host, port)
            if transport == "TLS" and message.method == "INVITE":
                self._alias(message, flow)
        token = request_id.set(f"sip:{message.call_id[:48]}")
        try:
            self._dispatch(self.layer.receive(message, flow, self.now(), validated=True,
                                              arrived=arrived))
        finally:
            request_id.reset(token)
        if self.gate.episodes != self._episodes_seen:
            self._episode_began()

    # -- overload episodes -----------------------------------------------------------
    def _episode_began(self) -> None:
        """Log once per episode (not per refused INVITE) and watch for its end."""
        self._episodes_seen = self.gate.episodes
        log.warning("sip overloaded: answering new INVITEs 503 with Retry-After (%s); calls "
                    "already up and requests in their dialogs are served as usual",
                    self._why())
        self._watch_episode()

    def _why(self) -> str:
        reason = self.gate.episode_reason
        return {"admission": "admission control is refusing new work",
                "setup_rate": f"new INVITEs above sip.max_setup_rate, "
                              f"{self.settings.max_setup_rate:g}/s",
                "transactions": "the transaction table is full (sip.max_transactions)",
                }.get(reason, reason)

    def _watch_episode(self) -> None:
        self._episode_timer = None
        if self._loop is None:
            return
        ended = self.gate.end_episode(self.now())
        if ended is not None:
            seconds, refusals = ended
            log.info("sip overload over: %d new INVITEs refused in %.1f s", refusals, seconds)
            return
        deadline = self.gate.episode_deadline()
        if deadline is not None:
            self._episode_timer = self._loop.call_at(deadline, self._watch_episode)

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allowed)

    def _reject_too_large(self, data: bytes, flow: Flow) -> None:
        """413 when the headers are readable enough to answer, else silence (§18.1.1)."""
        end = data.find(b"\r\n\r\n", 0, 1 << 16)
        if end < 0:
            return
        try:
            header_only = CONTENT_LENGTH.sub(b"Content-Length: 0", data[: end + 4])
            request = parse_message(header_only, 1 << 16)
        except SipParseError:
            return
        if isinstance(request, Request) and request.method != "ACK":
            self._reply_stateless(request, 413, flow)

    def _reply_stateless(self, request: Request, status: int, flow: Flow,
                         reason: str | None = None) -> None:
        try:
            stamp_received(request, flow[1], flow[2])
            response = response_to(request, status, reason)
        except SipParseError:
            return
        self.send_stateless(response, flow)

    def _dispatch(self, events: list[Event]) -> None:
        self._flush()
        for event in events:
            try:
                self.handler(event)
            except Exception:
                log.exception("sip: handling %s failed", type(event).__name__)
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(self.layer.poll(self.now()))

    # -- outgoing ------------------------------------------------------------------
    def _flush(self) -> None:
        for message, flow in self.layer.take_outgoing():
            self._send(message, flow)
        self._schedule()

    def _schedule(self) -> None:
        deadline = self.layer.next_deadline()
        if self._timer is not None:
            if deadline is not None and abs(self._timer.when() - deadline) < 1e-4:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _send(self, message: Request | Response, flow: Flow) -> None:
        transport, host, port = flow[:3]
        if isinstance(message, Response) and transport == "UDP":
            host, port = reply_address(message)
        data = bytes(message)
        own = is_own(flow)
        try:
            if transport == "UDP":
                udp = self._own_udp if own else self._udp
                if udp is None:
                    raise OSError(errno.ENOTCONN, "no UDP socket")
                udp.sendto(data, (host, port))
            else:
                self._send_stream(data, (transport, host, port), own)
            self.counters.sent += 1
        except OSError as exc:
            self.counters.send_errors += 1
            if not isinstance(exc, BlockingIOError) or self.counters.send_errors % 1000 == 1:
                log.warning("sip: cannot send to %s:%d/%s: %s", host, port, transport,
                            "socket buffer full" if isinstance(exc, BlockingIOError) else exc)

    def _send_stream(self, data: bytes, key: tuple[str, str, int], own: bool) -> None:
        conn = self._connections.get(key) or self._aliases.get(key)
        if conn is not None and conn.transport is not None:
            conn.transport.write(data)
            return
        if self._loop is None:
            return
        self._loop.create_task(self._connect_and_send(data, key, own))

    async def _connect_and_send(self, data: bytes, key: tuple[str, str, int],
                                own: bool) -> None:
        transport, host, port = key
        tls = transport == "TLS"
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: SipStream(self, own=own, transport=transport), host, port,
                ssl=self.settings.client_ssl if tls else None,
                server_hostname=self._tls_names.get((host, port), host) if tls else None)
        except (OSError, ssl.SSLError) as exc:
            self.counters.send_errors += 1
            log.warning("sip: cannot connect to %s:%d/%s: %s", host, port, transport,
                        getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            return
        assert conn.transport is not None
        conn.transport.write(data)

    def _alias(self, request: Request, flow: Flow) -> None:
        """A phone's INVITE over a TLS connection it opened: its Contact address now
        means that connection (only when the Contact names the address it came from, so
        another address cannot claim it; one at the same address could)."""
        try:
            contact = request.contact
        except SipParseError:
            return
        if contact is None or contact.star or bare_host(contact.uri.host) != flow[1]:
            return
        conn = self._connections.get(("TLS", flow[1], flow[2]))
        if conn is not None:
            self._aliases[("TLS", flow[1], contact.uri.port or 5061)] = conn

    # -- stream connections ---------------------------------------------------------
    def _admit(self, conn: SipStream) -> bool:
        """Keep ``conn`` (an accepted one: within the caps, else counted and refused)."""
        if not conn.inbound:
            self._connections[conn.key] = conn
            return True
        host = conn.peer[0]
        from_host = self._accepted_by_host.get(host, 0)
        if (len(self._accepted) >= self.settings.max_connections
                or from_host >= self.settings.max_connections_per_host):
            self.counters.connections_refused += 1
            if self.counters.connections_refused % 1000 == 1:
                log.warning("sip %s: connection from %s refused (%d open, %d from it)",
                            conn.transport_name.lower(), host, len(self._accepted), from_host)
            return False
        self._connections[conn.key] = conn
        self._accepted.add(conn)
        self._accepted_by_host[host] = from_host + 1
        if self._sweep is None and self._loop is not None:
            self._sweep = self._loop.call_later(self._sweep_period(), self._close_idle)
        return True

    def _sweep_period(self) -> float:
        return min(max(self.settings.tcp_idle_timeout_s / 4, 0.05), 15.0)

    def _close_idle(self) -> None:
        """Close accepted connections idle past ``tcp_idle_timeout_s`` that no call or
        registration uses; runs while there are accepted connections."""
        self._sweep = None
        assert self._loop is not None
        cutoff = self._loop.time() - self.settings.tcp_idle_timeout_s
        idle = [c for c in self._accepted if c.last_active < cutoff]
        if idle:
            used = self.in_use()
            by_alias = {id(c) for k, c in self._aliases.items() if k in used}
            for conn in idle:
                if conn.key not in used and id(conn) not in by_alias:
                    self.counters.connections_idle_closed += 1
                    log.info("sip %s %s:%d: idle for %g s and used by no call or "
                             "registration; closing", conn.transport_name.lower(), *conn.peer,
                             self.settings.tcp_idle_timeout_s)
                    conn.close()
        if self._accepted:
            self._sweep = self._loop.call_later(self._sweep_period(), self._close_idle)

    def _forget(self, conn: SipStream) -> None:
        if self._connections.get(conn.key) is conn:
            del self._connections[conn.key]
        if conn in self._accepted:
            self._accepted.discard(conn)
            host = conn.peer[0]
            left = self._accepted_by_host.pop(host, 1) - 1
            if left > 0:
                self._accepted_by_host[host] = left
        for alias in [k for k, c in self._aliases.items() if c is conn]:
            del self._aliases[alias]


class SipStream(asyncio.Protocol):
    """One TCP connection, inbound or outbound; messages are framed by Content-Length.

    Each message must arrive whole within ``tcp_message_timeout_s`` of its first byte, and
    an accepted connection must start one within that time. Between messages, an accepted
    connection may stay idle for ``tcp_idle_timeout_s``, or as long as a call or a
    registration uses it: a call's BYE can come over it hours later (RFC 3261 §18 keeps
    the connection of an INVITE for the dialog)."""

    def __init__(self, endpoint: SipEndpoint, inbound: bool = False, own: bool = False,
                 transport: str = "TCP") -> None:
        self.endpoint = endpoint
        self.inbound = inbound
        self.transport_name = transport  # TCP or TLS: a flow's first item
        self.local: tuple[str, ...] = (OWN,) if own else ()  # a flow's fourth item
        self.framer = StreamFramer(endpoint.settings.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._deadline: asyncio.TimerHandle | None = None
        #: When it last received anything (a message, part of one, a keep-alive).
        self.last_active = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.last_active = asyncio.get_running_loop().time()
        if not self.endpoint._admit(self):
            transport.close()
            return
        if self.inbound:
            self._start_deadline()

    @property
    def key(self) -> tuple[str, str, int]:
        """Where the endpoint keeps it: (transport, peer host, peer port)."""
        return (self.transport_name, *self.peer)

    def data_received(self, data: bytes) -> None:
        self.last_active = asyncio.get_running_loop().time()
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            self.endpoint.counters.malformed += 1
            log.warning("sip %s %s:%d: %s; closing", self.transport_name.lower(), *self.peer,
                        exc)
            self.close()
            return
        if messages:
            self._stop_deadline()
        if self.framer.pending and self._deadline is None:
            self._start_deadline()  # a new message began: its clock starts now
        for message in messages:
            self.endpoint.received(message, (self.transport_name, *self.peer, *self.local))

    def _start_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.endpoint.settings.tcp_message_timeout_s
        self._deadline = loop.call_later(timeout, self._timed_out)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self.endpoint.counters.connections_timed_out += 1
        log.warning("sip %s %s:%d: no complete message within %g s; closing",
                    self.transport_name.lower(), *self.peer,
                    self.endpoint.settings.tcp_message_timeout_s)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        self.endpoint._forget(self)
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
