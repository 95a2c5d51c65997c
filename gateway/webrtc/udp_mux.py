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
  server's answer too); one from the address that was asked teaches that address;
* anything else (DTLS, SRTP, SRTCP, STUN indications) by the address it came from.
  Datagrams no session claims are dropped and counted (``unclaimed``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: Bigger than the default so a burst of every publisher's packets fits (aioice's value).
RECEIVE_BUFFER = 1024 * 1024


@dataclass(eq=False)
class Route:
    """One ICE session's place on a shared port."""

    ufrag: str
    password: bytes
    #: Takes the session's STUN messages (aioice's StunProtocol.datagram_received).
    stun: Callable[[bytes, Address], Any]
    #: Takes everything else the session's peer sends (DTLS, SRTP, SRTCP).
    data: Callable[[bytes], Any]
    addresses: set[Address] = field(default_factory=set)
    transactions: set[bytes] = field(default_factory=set)


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
            route.transactions.add(transaction)

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
        route.transactions.discard(transaction)
        if address == asked and address not in self.by_address:
            self._learn(route, address)
        route.stun(data, address)

    def _request(self, data: bytes, address: Address) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
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
            previous.addresses.discard(address)
        self.by_address[address] = route
        route.addresses.add(address)


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
    def socket_transport(self) -> asyncio.DatagramTransport:
        """The shared port's own transport (the fan-out sends media on its socket)."""
        assert self._port.transport is not None
        return self._port.transport

    def sendto(self, data: bytes, addr: Address | None = None) -> None:  # type: ignore[override]
        if self._closing or self._port.transport is None:
            return
        assert addr is not None
        self._port.router.sent(self._route, data, addr)
        self._port.transport.sendto(data, addr)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._port.router.remove(self._route)
        asyncio.get_running_loop().call_soon(self._lost, None)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._port.transport is None:
            return default
        return self._port.transport.get_extra_info(name, default)


class SharedUdpPort(asyncio.DatagramProtocol):
    """The socket of ``webrtc.udp_port`` on one address, and its router."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.router = UdpRouter()
        self.transport: asyncio.DatagramTransport | None = None
        self._v6 = ":" in host

    async def open(self) -> None:
        """Bind; OSError (port in use, address not here) is the caller's to report."""
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.port))
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.port = self.transport.get_extra_info("sockname")[1]
        log.info("WebRTC media for every session on UDP %s:%d", self.host, self.port)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def has(self, ufrag: str) -> bool:
        return ufrag in self.router.by_ufrag

    def attach(self, route: Route, lost: Callable[[Exception | None], Any]) -> SessionTransport:
        """Put a session on this port; its transport's close() takes it off again."""
        if self.transport is None:
            raise ConnectionError(f"the shared WebRTC port {self.host}:{self.port} is closed")
        self.router.add(route)
        return SessionTransport(self, route, lost)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.router.received(data, (addr[0], addr[1]) if self._v6 else addr)  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable after a send
        log.debug("shared WebRTC port %s:%d: %s", self.host, self.port, exc)

    def info(self) -> dict[str, Any]:
        return {"address": self.host, "port": self.port, "sessions": len(self.router),
                "unclaimed_datagrams": self.router.unclaimed}
