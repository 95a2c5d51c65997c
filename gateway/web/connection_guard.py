"""Limits on HTTP connections that have not sent a request yet (slowloris).

aiohttp alone keeps a connection that never finishes its request headers until its
keep-alive timeout (75 s), and takes any number of them from one address, all before
authentication can run. Every connection is therefore wrapped in a GuardedConnection:

* it must complete a request's headers within ``header_timeout_s`` of being accepted, or
  of the first byte of a later request on a kept-alive connection; else it is closed.
  Idle time between requests, request bodies and replies (SSE never ends) are not timed.
* one client address may hold at most ``max_pending`` connections that have not yet
  completed their first request's headers; a connection beyond that is closed at once.
  Refusals are counted, and logged once per episode (until that address has no such
  connection left), not once per connection.

Behind a reverse proxy every client shares the proxy's address; the proxy completes
headers at once, so only its own slow clients' requests (which it holds) would count.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)


class ConnectionGuard:
    """Per-address counts of connections still waiting for their first request, and the
    counters of what was closed."""

    def __init__(self, header_timeout_s: float, max_pending: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_pending = max_pending
        self.pending: dict[Any, int] = {}  # address -> connections without a request yet
        self._refusing: dict[Any, int] = {}  # address -> refused in its current episode
        self.refused = 0
        self.header_timeouts = 0

    def admit(self, address: Any) -> bool:
        held = self.pending.get(address, 0)
        if held >= self.max_pending:
            self.refused += 1
            if address not in self._refusing:
                self._refusing[address] = 0
                log.warning("refusing HTTP connections from %s: %d of its connections have "
                            "not sent a request yet (http.max_pending_per_address)",
                            address, held)
            self._refusing[address] += 1
            return False
        self.pending[address] = held + 1
        return True

    def release(self, address: Any) -> None:
        held = self.pending[address] - 1
        if held:
            self.pending[address] = held
            return
        del self.pending[address]
        refused = self._refusing.pop(address, None)
        if refused is not None:
            log.info("accepting HTTP connections from %s again; refused %d", address, refused)


class GuardedConnection(asyncio.Protocol):
    """Stands between the transport and aiohttp's RequestHandler, which does all the HTTP;
    this only watches for request headers to complete, and closes connections that do not.
    """

    def __init__(self, handler: RequestHandler, guard: ConnectionGuard) -> None:
        self.handler = handler
        self.guard = guard
        self.address: Any = None
        self.admitted = False
        self.pending = False  # counted in guard.pending: no request completed yet
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if isinstance(peer, tuple) else peer
        if not self.guard.admit(self.address):
            transport.abort()
            return
        self.admitted = self.pending = True
        self.handler.connection_made(transport)
        self._start_timer()

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        parsed = handler._request_count  # aiohttp counts the requests whose headers it parsed
        handler.data_received(data)
        if handler._request_count != parsed:
            self._headers_complete()
        elif self._timer is None and _waiting_for_request(handler):
            self._start_timer()  # the first bytes of a next request on a kept-alive connection

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._stop_pending()
        if self.admitted:
            self.handler.connection_lost(exc)

    def _start_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.guard.header_timeout_s, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop_pending(self) -> None:
        if self.pending:
            self.pending = False
            self.guard.release(self.address)

    def _headers_complete(self) -> None:
        self._stop_timer()
        self._stop_pending()

    def _timed_out(self) -> None:
        self._timer = None
        self.guard.header_timeouts += 1
        log.debug("closing HTTP connection from %s: no complete request headers within %.1f s",
                  self.address, self.guard.header_timeout_s)
        self.handler.force_close()


def _waiting_for_request(handler: RequestHandler) -> bool:
    """aiohttp waits on this future while a connection has no request to handle."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()
