"""The SIP UDP socket, read in batches.

asyncio's datagram transport reads one datagram per wake-up of the event loop, so under
a burst the loop goes round once per INVITE, and everything else it runs (the media
clock, HTTP, timers) waits behind that many turns. Reading up to ``BATCH`` datagrams per
wake-up handles a burst in one go: the overload gate refuses the excess of a burst at
once, and requests that arrive together are handled together (a CANCEL right behind its
INVITE is seen in the same turn, before the INVITE's answering task has run).

Sending is a plain non-blocking ``sendto``: a full socket buffer raises (the endpoint
counts it as a send error) instead of queueing, as SIP over UDP recovers by
retransmission anyway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Datagrams read per wake-up at most, so a flood cannot hold the loop for long either.
BATCH = 64
#: Larger than any SIP message we accept (sip.max_message_bytes is checked after).
MAX_DATAGRAM = 65535

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)


class BatchedUdp:
    """One bound, non-blocking UDP socket on the loop's selector; ``on_batch`` gets the
    datagrams of one wake-up, in arrival order."""

    def __init__(self, sock: socket.socket,
                 on_batch: Callable[[list[tuple[bytes, Address]]], None]) -> None:
        self._sock: socket.socket | None = sock
        self._on_batch = on_batch
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    async def open(cls, host: str, port: int, reuse_port: bool,
                   on_batch: Callable[[list[tuple[bytes, Address]]], None]) -> BatchedUdp:
        """Bind ``host:port`` (0: any free port); OSError as bind() raises it."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                       flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            return cls(sock, on_batch)
        except BaseException:
            sock.close()
            raise

    @property
    def sockname(self) -> Address:
        assert self._sock is not None
        return self._sock.getsockname()

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        batch: list[tuple[bytes, Address]] = []
        for _ in range(BATCH):
            try:
                batch.append(sock.recvfrom(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error queued on the socket: skip it
                log.debug("sip udp: %s", exc)
        if batch:
            self._on_batch(batch)

    def sendto(self, data: bytes, address: Address) -> None:
        """Send now or raise OSError (BlockingIOError on a full buffer)."""
        if self._sock is None:
            raise OSError("the SIP UDP socket is closed")
        self._sock.sendto(data, address)

    def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
