"""One UDP port for the ICE, DTLS and SRTP of every WebRTC session (``webrtc.udp_port``).

aioice gives each session a socket of its own on an ephemeral port, so a container, a
Kubernetes Service or a firewall would have to open every UDP port. With a shared port,
every session's host candidate names one socket, and each datagram that arrives on it is
handed to its session (what LiveKit's and pion's UDPMux and mediasoup's WebRtcServer do):

* a STUN request (connectivity check, consent) by the local ufrag in its USERNAME. When
  its MESSAGE-INTEGRITY verifies with that session's password, the address it came from
  becomes that session's, also if another session had it (the peer moved, or a client
  port was reused for a new session); unsigned requests teach nothing;
* a STUN response by the transaction id of the request the session sent (a STUN
  server's answer too); a success response from the address that was asked teaches that
  address if no session has it;
* anything else (DTLS, SRTP, SRTCP, STUN indications) by the address it came from.
  Datagrams no session claims are dropped and counted (``unclaimed``).

Limits, as with any one-port server (pion's UDPMux is the same): two sessions whose peer
sends both from one address and port (a media server pulling two streams over one socket)
cannot be told apart after ICE; the address goes to the session that checked from it
last. A peer whose NAT gives it a new address mid-session is heard again from its next
consent check (within ~5 s), not at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: Kernel buffer each way: every session's packets share the socket (aioice gives each
#: of its per-session sockets 1 MiB to receive).
SOCKET_BUFFER = 1024 * 1024
#: Datagrams read per wake-up at most, so that other work gets its turn in a flood.
READ_BATCH = 64
RECEIVE_SIZE = 2048  # above any MTU
#: What one session may hold on the port: a peer's addresses (a NAT that moved, a few
#: candidates) and its unanswered STUN requests (aioice forgets a timed-out one).
MAX_ADDRESSES = 8
MAX_TRANSACTIONS = 64


@dataclass(eq=False)
class Route:
    """One ICE session's place on a shared port."""

    ufrag: str
    password: bytes
    #: Takes the session's STUN messages (aioice's StunProtocol.datagram_received).
    stun: Callable[[bytes, Address], Any]
    #: Takes everything else the session's peer sends (DTLS, SRTP, SRTCP).
    data: Callable[[bytes], Any]
    #: Addresses and STUN transactions of this session, oldest first (dicts as ordered
    #: sets: the oldest go when a session has too many).
    addresses: dict[Address, None] = field(default_factory=dict)
    transactions: dict[bytes, None] = field(default_factory=dict)


class UdpRouter:
    """Sans-IO: which session a datagram arriving on the shared port belongs to."""

    def __init__(self) -> None:
        self.by_ufrag: dict[str, Route] = {}
        self.by_address: dict[Address, Route] = {}
        self.by_transaction: dict[bytes, tuple[Route, Address]] = {}
        self.unclaimed = 0  # datagrams no session claimed (dropped)

    def __len__(self) -> int:
        return len(self.by_ufrag)

    def add(self, route: Route) -> None:
        if route.ufrag in self.by_ufrag:
            raise KeyError(f"ICE ufrag {route.ufrag!r} is already on this port")
        self.by_ufrag[route.ufrag] = route

    def remove(self, route: Route) -> None:
        if self.by_ufrag.get(route.ufrag) is route:
            del self.by_ufrag[route.ufrag]
        for address in route.addresses:
            if self.by_address.get(address) is route:
                del self.by_address[address]
        for transaction in route.transactions:
            self.by_transaction.pop(transaction, None)
        route.addresses.clear()
        route.transactions.clear()

    def sent(self, route: Route, data: bytes, address: Address) -> None:
        """Note a STUN request (class bits 00) ``route``'s session sends, so that its
        response finds it."""
        if len(data) >= 20 and data[0] < 4 and not data[0] & 0x01 and not data[1] & 0x10:
            transaction = bytes(data[8:20])
            self.by_transaction[transaction] = (route, address)
            route.transactions[transaction] = None
            if len(route.transactions) > MAX_TRANSACTIONS:
                oldest = next(iter(route.transactions))
                del route.transactions[oldest]
                self.by_transaction.pop(oldest, None)

    def received(self, data: bytes, address: Address) -> None:
        """Hand ``data`` from ``address`` to its session (or count it unclaimed)."""
        route = self.by_address.get(address)
        if data and data[0] > 3:  # RFC 7983: not STUN (DTLS, RTP, RTCP): by address
            if route is None:
                self.unclaimed += 1
            else:
                route.data(data)
            return
        if len(data) < 20:
            self.unclaimed += 1
        elif data[1] & 0x10 and not data[0] & 0x01:  # class 01: indication, by address
            if route is None:
                self.unclaimed += 1
            else:
                route.stun(data, address)
        elif data[0] & 0x01:  # class 1x: success or error response
            self._response(data, address)
        else:
            self._request(data, address)

    def _response(self, data: bytes, address: Address) -> None:
        transaction = bytes(data[8:20])
        entry = self.by_transaction.pop(transaction, None)
        if entry is None:
            self.unclaimed += 1
            return
        route, asked = entry
        route.transactions.pop(transaction, None)
        success = not data[1] & 0x10
        if success and address == asked and address not in self.by_address:
            self._learn(route, address)
        route.stun(data, address)

    def _request(self, data: bytes, address: Address) -> None:
        try:
            message = stun.parse_message(data)
        except Exception:  # aioice raises ValueError, struct.error, ... on garbage
            self.unclaimed += 1
            return
        username = message.attributes.get("USERNAME")
        route = self.by_ufrag.get(username.partition(":")[0]) if username else None
        if route is None:
            self.unclaimed += 1
            return
        if self.by_address.get(address) is not route and \
                message.check_message_integrity(route.password):
            self._learn(route, address)
        route.stun(data, address)  # aioice answers it (401 when the integrity is wrong)

    def _learn(self, route: Route, address: Address) -> None:
        previous = self.by_address.get(address)
        if previous is not None:
            previous.addresses.pop(address, None)
        self.by_address[address] = route
        route.addresses[address] = None
        if len(route.addresses) > MAX_ADDRESSES:
            oldest = next(iter(route.addresses))
            del route.addresses[oldest]
            if self.by_address.get(oldest) is route:
                del self.by_address[oldest]


class SessionTransport(asyncio.DatagramTransport):
    """What one session's aioice protocol sees as its socket: sends go out on the shared
    port (STUN requests noted for their responses), close() takes the session off it."""

    def __init__(self, port: SharedUdpPort, route: Route,
                 lost: Callable[[Exception | None], Any]) -> None:
        super().__init__()
        self._port = port
        self._route = route
        self._lost = lost
        self._closing = False

    @property
    def shared_socket(self) -> socket.socket | None:
        """The shared port's socket (the fan-out sends media on it directly)."""
        return self._port.sock

    def sendto(self, data: bytes, addr: Address | None = None) -> None:  # type: ignore[override]
        if self._closing:
            return
        assert addr is not None
        self._port.router.sent(self._route, data, addr)
        self._port.sendto(data, addr)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._port.router.remove(self._route)
        asyncio.get_running_loop().call_soon(self._lost, None)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return (self._port.host, self._port.port)
        if name == "socket":
            return self._port.sock
        return default


class SharedUdpPort:
    """The socket of ``webrtc.udp_port`` on one address, and its router.

    Read with the event loop's reader callback, up to READ_BATCH datagrams per wake-up:
    asyncio's datagram transport reads one per loop iteration, which serves a socket per
    session well but starves one socket that carries every session's packets."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.router = UdpRouter()
        self.sock: socket.socket | None = None
        self.send_errors = 0  # datagrams the kernel did not take (buffer full, no route)
        self.failures = 0  # datagrams a session's code raised on
        self._v6 = ":" in host

    async def open(self) -> None:
        """Bind; OSError (port in use, address not here) is the caller's to report."""
        sock = socket.socket(socket.AF_INET6 if self._v6 else socket.AF_INET,
                             socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _set_buffer(sock, socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None))
            _set_buffer(sock, socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None))
            sock.bind((self.host, self.port))
        except (OSError, OverflowError) as exc:
            sock.close()
            if isinstance(exc, OverflowError):  # a port above 65535
                raise OSError(errno.EINVAL, f"no UDP port {self.port}") from None
            raise
        self.sock = sock
        self.port = sock.getsockname()[1]
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        log.info("WebRTC media for every session on UDP %s:%d", self.host, self.port)

    def close(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def has(self, ufrag: str) -> bool:
        return ufrag in self.router.by_ufrag

    def attach(self, route: Route, lost: Callable[[Exception | None], Any]) -> SessionTransport:
        """Put a session on this port; its transport's close() takes it off again."""
        if self.sock is None:
            raise ConnectionError(f"the shared WebRTC port {self.host}:{self.port} is closed")
        self.router.add(route)
        return SessionTransport(self, route, lost)

    def sendto(self, data: bytes, address: Address) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(data, address)
        except OSError as exc:  # BlockingIOError included: UDP may drop, never wait
            self.send_errors += 1
            log.debug("shared WebRTC port %s:%d: send to %s: %s", self.host, self.port,
                      address, exc)

    def _readable(self) -> None:
        sock, received = self.sock, self.router.received
        if sock is None:
            return
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket, or closed
                if self.sock is None:
                    return
                log.debug("shared WebRTC port %s:%d: %s", self.host, self.port, exc)
                continue
            try:
                received(data, (addr[0], addr[1]) if self._v6 else addr)
            except Exception:  # one session's failure must not stop the others' packets
                self.failures += 1
                if self.failures == 1 or self.failures % 1000 == 0:
                    log.exception("shared WebRTC port: a session failed on a datagram from "
                                  "%s (%d so far)", addr, self.failures)

    def info(self) -> dict[str, Any]:
        return {"address": self.host, "port": self.port, "sessions": len(self.router),
                "unclaimed_datagrams": self.router.unclaimed,
                "send_errors": self.send_errors}


def _set_buffer(sock: socket.socket, option: int, force: int | None) -> None:
    """SOCKET_BUFFER bytes of kernel buffer for ``option``: the ``*FORCE`` variant
    (root, or CAP_NET_ADMIN) goes past net.core.rmem_max/wmem_max; else the capped size,
    and a log line saying which sysctl to raise. Every session's packets share it."""
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            return
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    got = sock.getsockopt(socket.SOL_SOCKET, option) // 2  # Linux reports twice the size
    if got < SOCKET_BUFFER:
        which = "rmem_max" if option == socket.SO_RCVBUF else "wmem_max"
        log.warning("shared WebRTC port: %s buffer is %d KiB, not %d (raise "
                    "net.core.%s so bursts of every session's packets fit)",
                    "receive" if option == socket.SO_RCVBUF else "send", got // 1024,
                    SOCKET_BUFFER // 1024, which)
