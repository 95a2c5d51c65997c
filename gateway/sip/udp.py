"""The SIP UDP socket, read in batches.

asyncio's datagram transport reads one datagram per wake-up of the event loop, so under
a burst the loop goes round once per INVITE, and everything else it runs (the media
clock, HTTP, timers) waits behind that many turns. Reading up to ``BATCH`` datagrams per
wake-up takes a burst in one go; requests that arrive together are mostly handled in
the same turn too (a CANCEL right behind its INVITE is then seen before the INVITE's
answering task has run; either order ends the call with 487).

Handling a batch is paced by the gateway's CPU budget (gateway/core/cpu_budget.py). A
turn of it covers up to ``SLICE`` datagrams: turns of all the work that can wait start
within ~1 ms of each other per turn of the loop, the rest waits for a later turn, and
under a container CPU quota they also wait for room in the quota's period, so that a
flood does not use it up and throttle the media clock. Each datagram of a turn starts
only in the media clock's spare time (not while a tick's work is queued, nor just
before the next tick): a flood of OPTIONS (64 requests of 50-150 us each per read) or
INVITEs (0.5-1 ms each) fills the spare time of as many 20 ms periods as it needs
instead of delaying the ticks.

New INVITEs that the overload gate will refuse (``urgent``: its bucket is empty, counting
the INVITEs still waiting) are handled as they are read, not paced: a refusal is cheap,
and RFC 3261 §21.5.4's 503 is only useful if it comes before the phone retransmits.

Reading goes on meanwhile, into a backlog of at most ``MAX_BACKLOG`` datagrams: a
datagram waits there for its turn (a few hundred bytes each) rather than in the kernel's
socket buffer, which holds far fewer (each takes a page or more of it). What arrives
with the backlog full is dropped and counted (``dropped``), as the kernel would drop it.

Sending is a plain non-blocking ``sendto``: a full socket buffer raises (the endpoint
counts it as a send error) instead of queueing, as SIP over UDP recovers by
retransmission anyway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable

from ..core.cpu_budget import CpuBudget

log = logging.getLogger(__name__)

#: Datagrams read per wake-up at most, so a flood cannot hold the loop for long either.
BATCH = 64
#: Larger than any SIP message we accept (sip.max_message_bytes is checked after).
MAX_DATAGRAM = 65535
#: Datagrams handled per turn the CPU budget gives.
SLICE = 8
#: Datagrams waiting to be handled at most (a flood of 200 OPTIONS fits four times over).
MAX_BACKLOG = 1024

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)


class BatchedUdp:
    """One bound, non-blocking UDP socket on the loop's selector; ``on_datagram`` gets
    each datagram, its source and when it was read (event-loop time), in arrival order,
    when the CPU budget says."""

    def __init__(self, sock: socket.socket,
                 on_datagram: Callable[[bytes, Address, float], None],
                 budget: CpuBudget | None = None,
                 urgent: Callable[[float, int], bool] | None = None) -> None:
        self._sock: socket.socket | None = sock
        self._on_datagram = on_datagram
        #: Whether an INVITE read at a time, with this many INVITEs waiting, is handled
        #: at once (the gate refuses it).
        self._urgent = urgent
        self.invites_waiting = 0
        self._budget = budget or CpuBudget()
        self._loop = asyncio.get_running_loop()
        #: (datagram, source, read at, is an INVITE)
        self._backlog: deque[tuple[bytes, Address, float, bool]] = deque()
        self._draining: asyncio.TimerHandle | None = None  # the next slice, when one waits
        self._granted = 0  # datagrams left of the budget's last turn
        self.dropped = 0  # datagrams that found the backlog full
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    async def open(cls, host: str, port: int, reuse_port: bool,
                   on_datagram: Callable[[bytes, Address, float], None],
                   budget: CpuBudget | None = None,
                   urgent: Callable[[float, int], bool] | None = None) -> BatchedUdp:
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
            return cls(sock, on_datagram, budget, urgent)
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
        now = self._loop.time()
        for _ in range(BATCH):
            try:
                data, address = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error queued on the socket: skip it
                log.debug("sip udp: %s", exc)
                continue
            invite = data.startswith(b"INVITE ")
            if invite and self._urgent is not None and self._urgent(now, self.invites_waiting):
                self._on_datagram(data, address, now)
            elif len(backlog) < MAX_BACKLOG:
                backlog.append((data, address, now, invite))
                self.invites_waiting += invite
            else:
                self.dropped += 1
        if self._draining is None:
            self._drain()

    def _drain(self) -> None:
        """Handle the backlog until it is empty or the CPU budget says wait: for the
        media clock's spare time (before each datagram), for a later turn of the loop or
        for room in the quota (every ``SLICE`` datagrams)."""
        self._draining = None
        backlog, budget = self._backlog, self._budget
        while backlog:
            wait = budget.media_wait_s() if self._granted else budget.wait_s()
            if wait > 0:
                self._draining = self._loop.call_later(wait, self._drain)
                return
            self._granted = (self._granted or SLICE) - 1
            data, address, arrived, invite = backlog.popleft()
            self.invites_waiting -= invite
            self._on_datagram(data, address, arrived)

    @property
    def backlog(self) -> int:
        """Datagrams read and waiting to be handled."""
        return len(self._backlog)

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
            self._backlog.clear()
            self.invites_waiting = 0
            if self._draining is not None:
                self._draining.cancel()
                self._draining = None
