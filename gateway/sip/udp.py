"""The SIP UDP socket, read in batches.

asyncio's datagram transport reads one datagram per wake-up of the event loop, so under
a burst the loop goes round once per INVITE, and everything else it runs (the media
clock, HTTP, timers) waits behind that many turns. Reading up to ``BATCH`` datagrams per
wake-up handles a burst in one go: the overload gate refuses the excess of a burst at
once, and requests that arrive together are handled together (a CANCEL right behind its
INVITE is seen in the same turn, before the INVITE's answering task has run).

Handling a batch is cut into slices of ``SLICE`` datagrams, and a turn of the loop stops
handling after ``BUDGET_S`` of it: the rest waits for the next turn (reading pauses
meanwhile; the kernel's socket buffer holds what comes), so a flood of OPTIONS costs the
media clock at most about one budget of lateness per tick, not the whole batch (64
requests of 50-150 us each).

Sending is a plain non-blocking ``sendto``: a full socket buffer raises (the endpoint
counts it as a send error) instead of queueing, as SIP over UDP recovers by
retransmission anyway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Datagrams read per wake-up at most, so a flood cannot hold the loop for long either.
BATCH = 64
#: Larger than any SIP message we accept (sip.max_message_bytes is checked after).
MAX_DATAGRAM = 65535
#: Datagrams handled between two looks at the clock.
SLICE = 8
#: Handling time per turn of the loop, after which the rest of a batch waits a turn.
BUDGET_S = 0.001

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)


class BatchedUdp:
    """One bound, non-blocking UDP socket on the loop's selector; ``on_batch`` gets the
    datagrams of one wake-up, in arrival order."""

    def __init__(self, sock: socket.socket,
                 on_batch: Callable[[list[tuple[bytes, Address]]], None]) -> None:
        self._sock: socket.socket | None = sock
        self._on_batch = on_batch
        self._loop = asyncio.get_running_loop()
        self._backlog: deque[tuple[bytes, Address]] = deque()
        self._reading = True
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
        backlog = self._backlog
        for _ in range(BATCH):
            try:
                backlog.append(sock.recvfrom(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error queued on the socket: skip it
                log.debug("sip udp: %s", exc)
        self._drain()

    def _drain(self) -> None:
        """Handle the backlog a slice at a time until it is empty or the turn's budget
        is spent; then read again, or come back next turn (not reading meanwhile)."""
        backlog = self._backlog
        deadline = time.perf_counter() + BUDGET_S
        while backlog:
            self._on_batch([backlog.popleft() for _ in range(min(SLICE, len(backlog)))])
            if backlog and time.perf_counter() > deadline:
                self._set_reading(False)
                self._loop.call_soon(self._drain)
                return
        self._set_reading(True)

    def _set_reading(self, reading: bool) -> None:
        if self._sock is None or reading == self._reading:
            return
        self._reading = reading
        if reading:
            self._loop.add_reader(self._sock.fileno(), self._read_ready)
        else:
            self._loop.remove_reader(self._sock.fileno())

    def sendto(self, data: bytes, address: Address) -> None:
        """Send now or raise OSError (BlockingIOError on a full buffer)."""
        if self._sock is None:
            raise OSError("the SIP UDP socket is closed")
        self._sock.sendto(data, address)

    def close(self) -> None:
        if self._sock is not None:
            self._set_reading(False)
            self._sock.close()
            self._sock = None
            self._backlog.clear()
