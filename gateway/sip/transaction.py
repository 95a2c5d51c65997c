"""Sans-IO SIP transactions (RFC 3261 §17, with the RFC 6026 corrections).

The layer is fed messages and the time and answers with events for the UA core;
what it wants sent waits in an outbox (``take_outgoing``). It owns every timer, so
an adapter only sleeps until ``next_deadline()`` and calls ``poll``. Nothing here
reads a clock or touches a socket, so every schedule is testable exactly.

Beyond the RFC state machines, chosen to spare the UA core work and to keep memory
bounded (every state that waits on somebody has a timer):

- An INVITE server transaction sends 100 Trying at once (§17.2.1: we cannot know
  whether the TU will answer within 200 ms).
- An INVITE server transaction retransmits its 2xx until the ACK arrives (§13.3.1.4,
  normally the UA core's job) and reports a missing ACK after 64*T1 as
  TransactionTimeout (the RFC 6026 Timer L deadline).
- An INVITE left Proceeding for ``Timers.c`` seconds is ended: a client transaction
  sends CANCEL (§16.8 Timer C), a server one answers 408. A non-INVITE server
  transaction the TU never answers is dropped after 64*T1 (the client gave up).
- A client transaction CANCELs through its own non-INVITE transaction, which the layer
  owns: its responses and timeouts are not reported (the INVITE's outcome is). If no
  final response follows a CANCEL within 64*T1, the INVITE times out (§9.1).
- A CANCEL matching an INVITE server transaction is answered 200 by the layer; it is
  reported (CancelReceived) only while that transaction is Proceeding, since after a
  final response it has no effect (§9.2).
- A late ``poll`` sends one retransmission, not a burst; the schedule keeps its grid.
- An OPTIONS server transaction ends with its final response, also over UDP (no Timer
  J): the answer is idempotent and cheap, so a retransmitted OPTIONS is simply answered
  again by the TU. Kept for 64*T1, the keep-alive and monitoring pings of many phones
  would hold thousands of transactions (every full garbage collection walks them, and
  they count against ``max_transactions``) for nothing.
- A new out-of-dialog INVITE the ``SetupGate`` refuses (overload, see ``overload``), or
  one beyond ``max_transactions``, gets 503 + Retry-After without a transaction; its
  retransmissions get the same 503, its ACK is absorbed. In-dialog requests, BYE and
  CANCEL pass the transaction cap (up to twice it), so admitted calls can go on and end.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.sip.message import (
    MAGIC_COOKIE,
    Headers,
    Request,
    Response,
    SipParseError,
    response_to,
)
from gateway.sip.overload import TRANSACTIONS, SetupGate, Verdict

#: (transport "UDP"|"TCP"|..., remote host, remote port): where a message comes from or goes to.
#: A fourth item, when present, names the local port (the endpoint's business, see
#: ``endpoint.OWN``); this layer passes flows through untouched.
Flow = tuple[str, str, int] | tuple[str, str, int, str]
Message = Request | Response


@dataclass(frozen=True)
class Timers:
    """RFC 3261 §17 timer values in seconds (Table 4), plus two of our own."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0  # Timer D on unreliable transports (at least 64*T1 is used)
    c: float = 180.0  # longest an INVITE may stay Proceeding, on either side

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2 or self.t4 < 0 or self.d < 0 or self.c <= 0:
            raise ValueError(f"bad SIP timers {self}")


DEFAULT_TIMERS = Timers()


class State(StrEnum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


# -- events -----------------------------------------------------------------------------
@dataclass(eq=False)
class RequestReceived:
    """A new request (never a retransmission, never an ACK)."""

    request: Request
    tx: ServerTransaction
    flow: Flow


@dataclass(eq=False)
class AckReceived:
    """An ACK for a 2xx; ``tx`` is the Accepted INVITE server transaction, if still alive."""

    request: Request
    tx: ServerTransaction | None
    flow: Flow


@dataclass(eq=False)
class CancelReceived:
    """A CANCEL for ``tx`` (still Proceeding), already answered 200 by the layer."""

    request: Request
    tx: ServerTransaction
    flow: Flow


@dataclass(eq=False)
class ResponseReceived:
    response: Response
    tx: ClientTransaction


@dataclass(eq=False)
class StrayResponse:
    """A response matching no transaction (e.g. a late or forked 2xx)."""

    response: Response
    flow: Flow


@dataclass(eq=False)
class TransactionTimeout:
    tx: ClientTransaction | ServerTransaction


Event = (
    RequestReceived | AckReceived | CancelReceived | ResponseReceived | StrayResponse
    | TransactionTimeout
)


def _local_tag(request: Request) -> str:
    """A To tag for responses the layer makes itself; derived, so output is deterministic."""
    seed = f"{request.call_id}|{request.headers.get('CSeq')}|{request.headers.get('Via')}"
    return hashlib.blake2s(seed.encode(), digest_size=6).hexdigest()


def _double_capped(cap: float) -> Callable[[float], float]:
    return lambda interval: min(2 * interval, cap)


def _double(interval: float) -> float:
    return 2 * interval


# -- transactions -----------------------------------------------------------------------
class Transaction:
    """What both sides share. Public: request, flow, key, state, is_invite, last_response."""

    is_invite = False

    def __init__(
        self, layer: TransactionLayer, request: Request, flow: Flow, key: tuple, state: State
    ) -> None:
        self.request = request
        self.flow = flow
        self.key = key
        self.state = state
        self.last_response: Response | None = None
        self.internal = False  # owned by the layer (a CANCEL it sends): events not reported
        self._layer = layer
        self._t = layer.timers
        self._timers: dict[str, int] = {}  # timer name -> sequence number of its heap entry
        self._interval = self._t.t1  # current retransmission interval
        self._timed_out = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.key[0]} {self.state}>"

    @property
    def reliable(self) -> bool:
        return self.flow[0].upper() != "UDP"

    # timers
    def _start(self, name: str, delay: float, now: float) -> None:
        self._layer._schedule(self, name, now + delay)

    def _stop(self, *names: str) -> None:
        for name in names:
            if self._timers.pop(name, None) is not None:
                self._layer._stale += 1

    def _linger(self, name: str, delay: float, now: float) -> None:
        """Stay to absorb retransmissions for ``delay``, or end now if there are none."""
        if delay > 0:
            self._start(name, delay, now)
        else:
            self._terminate()

    def _retransmit(self, name: str, message: Message, at: float, now: float,
                    grow: Callable[[float], float]) -> None:
        """Resend and rearm; a poll later than ``at`` skips missed slots instead of bursting."""
        self._layer._send(message, self.flow, retransmission=True)
        self._interval = grow(self._interval)
        deadline = at + self._interval
        while deadline <= now and grow(self._interval) > self._interval:
            self._interval = grow(self._interval)
            deadline += self._interval
        if deadline <= now:  # the interval is capped: jump straight over the gap
            deadline += (math.floor((now - deadline) / self._interval) + 1) * self._interval
        self._layer._schedule(self, name, deadline)

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._stop(*list(self._timers))
        self._layer._remove(self)

    def _timeout(self) -> list[Event]:
        first = not self._timed_out
        self._timed_out = True
        self._terminate()
        if not first:
            return []
        self._layer.timeouts += 1
        return [TransactionTimeout(self)]

    def _begin(self, now: float) -> None:
        raise NotImplementedError

    def _fire(self, name: str, at: float, now: float) -> list[Event]:
        raise NotImplementedError


class ClientTransaction(Transaction):
    """A request we sent; ``cancel_tx`` is the CANCEL the layer sent for it, if any."""

    def __init__(
        self, layer: TransactionLayer, request: Request, flow: Flow, key: tuple, state: State
    ) -> None:
        super().__init__(layer, request, flow, key, state)
        self.cancel_requested = False
        self.cancel_tx: ClientTransaction | None = None

    def _on_response(self, response: Response, flow: Flow, now: float) -> list[Event]:
        raise NotImplementedError


class ServerTransaction(Transaction):
    """A request we received; the TU answers it with ``TransactionLayer.respond``."""

    def _on_retransmission(self) -> list[Event]:
        """The request again: resend whatever we last answered, report nothing."""
        self._layer.absorbed_retransmissions += 1
        if self.last_response is not None and self.state != State.CONFIRMED:
            self._layer._send(self.last_response, self.flow, retransmission=True)
        return []

    def _respond(self, response: Response, now: float) -> None:
        raise NotImplementedError


class InviteClientTransaction(ClientTransaction):
    """§17.1.1 with RFC 6026 (Accepted state): Calling, Proceeding, Completed, Accepted."""

    is_invite = True

    def __init__(self, layer: TransactionLayer, request: Request, flow: Flow, key: tuple) -> None:
        super().__init__(layer, request, flow, key, State.CALLING)
        self._ack: Request | None = None
        self._cancel_reason: str | None = None

    def _begin(self, now: float) -> None:
        self._layer._send(self.request, self.flow)
        if not self.reliable:
            self._start("A", self._t.t1, now)
        self._start("B", 64 * self._t.t1, now)

    def _on_response(self, response: Response, flow: Flow, now: float) -> list[Event]:
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self.last_response = response
            self._stop("A", "B")
            if status < 200:
                self.state = State.PROCEEDING
                if self.cancel_tx is None:
                    self._start("C", self._t.c, now)  # restarted by each provisional
                    if self.cancel_requested:
                        self._send_cancel(now)
            elif status < 300:
                self.state = State.ACCEPTED
                self._stop("C")
                self._start("M", 64 * self._t.t1, now)
            else:
                self.state = State.COMPLETED
                self._stop("C")
                self._ack = self._build_ack(response)
                self._layer._send(self._ack, self.flow)
                self._linger("D", 0 if self.reliable else max(self._t.d, 64 * self._t.t1), now)
            return [ResponseReceived(response, self)]
        if self.state == State.ACCEPTED and 200 <= status < 300:
            return [ResponseReceived(response, self)]  # the UA re-sends its ACK
        if self.state == State.COMPLETED and status >= 300 and self._ack is not None:
            self._layer.absorbed_retransmissions += 1
            self._layer._send(self._ack, self.flow, retransmission=True)
            return []
        if status >= 200 and status < 300:  # a 2xx after our failure: UA may ACK and BYE it
            self._layer.stray_responses += 1
            return [StrayResponse(response, flow)]
        self._layer.absorbed_retransmissions += 1
        return []

    def _build_ack(self, response: Response) -> Request:
        """§17.1.1.3: the ACK for a non-2xx final belongs to the INVITE's transaction."""
        return self._derived("ACK", response.headers.get("To") or "")

    def _derived(self, method: str, to: str) -> Request:
        inv = self.request.headers
        headers = Headers([("Via", self.request.headers.get_all("Via")[0])])
        headers.add("Max-Forwards", inv.get("Max-Forwards") or "70")
        for route in inv.get_all("Route"):
            headers.add("Route", route)
        headers.add("From", inv.get("From") or "")
        headers.add("To", to)
        headers.add("Call-ID", self.request.call_id)
        headers.add("CSeq", f"{self.request.cseq[0]} {method}")
        return Request(method, self.request.uri, headers)

    def _cancel(self, now: float, reason: str | None) -> None:
        if self.cancel_requested or self.state not in (State.CALLING, State.PROCEEDING):
            return
        self.cancel_requested = True
        self._cancel_reason = reason
        if self.state == State.PROCEEDING:
            self._send_cancel(now)
        # in Calling, §9.1: wait for a provisional response before sending CANCEL

    def _send_cancel(self, now: float) -> None:
        """§9.1: same branch, Request-URI, Call-ID, From, To and CSeq number as the INVITE."""
        self.cancel_requested = True
        cancel = self._derived("CANCEL", self.request.headers.get("To") or "")
        if self._cancel_reason:
            cancel.headers.add("Reason", self._cancel_reason)
        existing = self._layer._clients.get((self.key[0], "CANCEL"))  # the TU sent one itself
        self.cancel_tx = existing or self._layer._start_client(cancel, self.flow, now, True)
        self._start("C", 64 * self._t.t1, now)  # §9.1: then give up on the INVITE

    def _fire(self, name: str, at: float, now: float) -> list[Event]:
        if name == "A":
            self._retransmit("A", self.request, at, now, _double)
        elif name == "B":
            return self._timeout()
        elif name == "C":
            if self.cancel_tx is None:
                self._send_cancel(at)
            else:
                return self._timeout()
        else:  # D, M
            self._terminate()
        return []


class NonInviteClientTransaction(ClientTransaction):
    """§17.1.2: Trying, Proceeding, Completed."""

    def __init__(self, layer: TransactionLayer, request: Request, flow: Flow, key: tuple) -> None:
        super().__init__(layer, request, flow, key, State.TRYING)

    def _begin(self, now: float) -> None:
        self._layer._send(self.request, self.flow)
        if not self.reliable:
            self._start("E", self._t.t1, now)
        self._start("F", 64 * self._t.t1, now)

    def _on_response(self, response: Response, flow: Flow, now: float) -> list[Event]:
        if self.state in (State.TRYING, State.PROCEEDING):
            self.last_response = response
            if response.status < 200:
                self.state = State.PROCEEDING
            else:
                self.state = State.COMPLETED
                self._stop("E", "F")
                self._linger("K", 0 if self.reliable else self._t.t4, now)
            return [ResponseReceived(response, self)]
        self._layer.absorbed_retransmissions += 1
        return []

    def _fire(self, name: str, at: float, now: float) -> list[Event]:
        if name == "E":
            t2 = self._t.t2
            grow = (lambda _: t2) if self.state == State.PROCEEDING else _double_capped(t2)
            self._retransmit("E", self.request, at, now, grow)
        elif name == "F":
            return self._timeout()
        else:  # K
            self._terminate()
        return []


class InviteServerTransaction(ServerTransaction):
    """§17.2.1 with RFC 6026: Proceeding, Completed, Confirmed, Accepted."""

    is_invite = True

    def __init__(self, layer: TransactionLayer, request: Request, flow: Flow, key: tuple) -> None:
        super().__init__(layer, request, flow, key, State.PROCEEDING)
        self.acked = False
        self.dialog_key: tuple | None = None  # (Call-ID, CSeq number, From tag, To tag) of a 2xx

    def _begin(self, now: float) -> None:
        self.last_response = response_to(self.request, 100)
        self._layer._send(self.last_response, self.flow)
        self._start("C", self._t.c, now)

    def _respond(self, response: Response, now: float) -> None:
        status = response.status
        if self.state == State.ACCEPTED and 200 <= status < 300:
            self._layer._send(response, self.flow)  # RFC 6026: further 2xx pass through
            return
        if self.state != State.PROCEEDING:
            self._layer.ignored_responses += 1
            return
        dialog = None
        if 200 <= status < 300:
            req = self.request
            dialog = (req.call_id, req.cseq[0], req.from_.tag, response.to.tag)
        self.last_response = response
        self._layer._send(response, self.flow)
        if status < 200:
            return
        self._stop("C")
        self._interval = self._t.t1
        if not self.reliable:
            self._start("G", self._t.t1, now)
        if dialog is not None:
            self.state = State.ACCEPTED
            self.dialog_key = dialog
            self._layer._accepted[dialog] = self
            self._start("L", 64 * self._t.t1, now)
        else:
            self.state = State.COMPLETED
            self._start("H", 64 * self._t.t1, now)

    def _on_ack(self, ack: Request, flow: Flow, now: float) -> list[Event]:
        """An ACK with our branch: for the non-2xx final, or (RFC 2543 peers) for a 2xx."""
        if self.state == State.COMPLETED:
            self.state = State.CONFIRMED
            self._stop("G", "H")
            self._linger("I", 0 if self.reliable else self._t.t4, now)
            return []
        if self.state == State.ACCEPTED:
            return self._on_2xx_ack(ack, flow)
        self._layer.absorbed_retransmissions += 1
        return []

    def _on_2xx_ack(self, ack: Request, flow: Flow) -> list[Event]:
        if self.acked:
            self._layer.absorbed_retransmissions += 1
            return []
        self.acked = True
        self._stop("G")  # stay Accepted until L, absorbing INVITE retransmissions
        return [AckReceived(ack, self, flow)]

    def _fire(self, name: str, at: float, now: float) -> list[Event]:
        if name == "G" and self.last_response is not None:
            self._retransmit("G", self.last_response, at, now, _double_capped(self._t.t2))
        elif name == "H" or (name == "L" and not self.acked):
            return self._timeout()
        elif name == "C":  # the TU let it ring too long: give up for it
            self._respond(response_to(self.request, 408, to_tag=self._to_tag()), at)
            self._timed_out = True  # so Timer H, if the ACK never comes, reports nothing more
            self._layer.timeouts += 1
            return [TransactionTimeout(self)]
        else:  # I, or L after the ACK
            self._terminate()
        return []

    def _to_tag(self) -> str:
        """The To tag we already answered with, so every response of the call agrees."""
        try:
            tag = self.last_response.to.tag if self.last_response is not None else None
        except SipParseError:  # the TU's own response had a bad To; never fail a timer
            tag = None
        return tag or _local_tag(self.request)


class NonInviteServerTransaction(ServerTransaction):
    """§17.2.2: Trying, Proceeding, Completed."""

    def __init__(self, layer: TransactionLayer, request: Request, flow: Flow, key: tuple) -> None:
        super().__init__(layer, request, flow, key, State.TRYING)

    def _begin(self, now: float) -> None:
        self._start("guard", 64 * self._t.t1, now)  # by then the client has given up

    def _respond(self, response: Response, now: float) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            self._layer.ignored_responses += 1
            return
        self.last_response = response
        self._layer._send(response, self.flow)
        if response.status < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.COMPLETED
        self._stop("guard")
        stateless = self.reliable or self.request.method == "OPTIONS"
        self._linger("J", 0 if stateless else 64 * self._t.t1, now)

    def _fire(self, name: str, at: float, now: float) -> list[Event]:
        self._terminate()  # J, or the TU never answered
        return []


# -- the layer --------------------------------------------------------------------------
def _server_key(request: Request) -> tuple:
    """§17.2.3: branch + sent-by + method (ACK finds its INVITE); RFC 2543 fallback."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    sent_by = (via.host.lower(), via.port)
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return (branch, *sent_by, method)
    return ("rfc2543", request.call_id, request.cseq[0], request.from_.tag, *sent_by, method)


class TransactionLayer:
    """All client and server transactions of one SIP endpoint."""

    def __init__(self, timers: Timers = DEFAULT_TIMERS, max_transactions: int = 10000,
                 gate: SetupGate | None = None) -> None:
        self.timers = timers
        self.max_transactions = max_transactions
        #: Asked about every new out-of-dialog INVITE; without one only the cap refuses.
        self.gate = gate
        self._clients: dict[tuple, ClientTransaction] = {}
        self._servers: dict[tuple, ServerTransaction] = {}
        self._accepted: dict[tuple, InviteServerTransaction] = {}  # 2xx ACK matching
        self._heap: list[tuple[float, int, Transaction, str]] = []
        self._seq = itertools.count()
        self._stale = 0  # heap entries of stopped timers, dropped lazily
        self._outbox: list[tuple[Message, Flow]] = []
        # counters, for metrics
        self.retransmissions_sent = 0
        self.absorbed_retransmissions = 0
        self.timeouts = 0
        self.stray_responses = 0
        self.rejected_overload = 0
        self.ignored_responses = 0  # respond() on a transaction past answering
        self.malformed = 0

    @property
    def transactions(self) -> int:
        """Live transactions (client and server)."""
        return len(self._clients) + len(self._servers)

    # -- I/O side -------------------------------------------------------------------
    def receive(self, message: Message, flow: Flow, now: float,
                validated: bool = False, arrived: float | None = None) -> list[Event]:
        """``validated``: the caller already ran ``message.validate()`` (the endpoint does,
        to answer 400); checking every header again would cost as much as the parse.
        ``arrived``: when the message was read, if it waited to be handled: the setup
        rate counts INVITEs as they arrive, however their handling was paced."""
        try:
            if isinstance(message, Response):
                return self._receive_response(message, flow, now, validated)
            return self._receive_request(message, flow, now, validated,
                                         now if arrived is None else arrived)
        except SipParseError:  # a header we need is missing or unreadable; keys come first
            self.malformed += 1
            return []

    def poll(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``, in deadline order."""
        events: list[Event] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, seq, tx, name = heapq.heappop(heap)
            if tx._timers.get(name) != seq:
                self._stale -= 1
                continue
            del tx._timers[name]
            fired = tx._fire(name, at, now)
            if not tx.internal:
                events.extend(fired)
        return events

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2]._timers.get(heap[0][3]) != heap[0][1]:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    def take_outgoing(self) -> list[tuple[Message, Flow]]:
        out, self._outbox = self._outbox, []
        return out

    # -- transaction user side ------------------------------------------------------
    def request(self, request: Request, flow: Flow, now: float) -> ClientTransaction:
        """Send a request in a new client transaction (its top Via needs a z9hG4bK branch)."""
        if request.method == "ACK":
            raise ValueError("an ACK for a 2xx goes through send_stateless")
        return self._start_client(request, flow, now, internal=False)

    def respond(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """Send a response in ``tx``; ignored (and counted) once ``tx`` is past answering."""
        tx._respond(response, now)

    def cancel(self, tx: ClientTransaction, now: float, reason: str | None = None) -> None:
        """CANCEL an INVITE (§9.1), deferred until a provisional response; no-op after a final
        response, on a second call, and for a non-INVITE transaction.

        ``reason`` becomes a Reason header (RFC 3326), e.g. ``SIP;cause=200;text="..."``.
        """
        if isinstance(tx, InviteClientTransaction):
            tx._cancel(now, reason)

    def send_stateless(self, message: Message, flow: Flow) -> None:
        self._send(message, flow)

    # -- internals ------------------------------------------------------------------
    def _send(self, message: Message, flow: Flow, retransmission: bool = False) -> None:
        if retransmission:
            self.retransmissions_sent += 1
        self._outbox.append((message, flow))

    def _schedule(self, tx: Transaction, name: str, deadline: float) -> None:
        seq = next(self._seq)
        if name in tx._timers:
            self._stale += 1
        tx._timers[name] = seq
        heapq.heappush(self._heap, (deadline, seq, tx, name))
        if self._stale > 1024 and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2]._timers.get(e[3]) == e[1]]
            heapq.heapify(self._heap)
            self._stale = 0

    def _remove(self, tx: Transaction) -> None:
        table: dict = self._clients if isinstance(tx, ClientTransaction) else self._servers
        if table.get(tx.key) is tx:
            del table[tx.key]
        dialog = getattr(tx, "dialog_key", None)
        if dialog is not None and self._accepted.get(dialog) is tx:
            del self._accepted[dialog]

    def _start_client(
        self, request: Request, flow: Flow, now: float, internal: bool
    ) -> ClientTransaction:
        request.validate()  # the ACK and CANCEL we may build from it need these headers
        branch = request.top_via.branch
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise ValueError(f"top Via branch {branch!r} lacks the {MAGIC_COOKIE} cookie")
        key = (branch, request.method)
        if key in self._clients:
            raise ValueError(f"a client transaction {key} already exists")
        cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        tx = cls(self, request, flow, key)
        tx.internal = internal
        self._clients[key] = tx
        tx._begin(now)
        return tx

    def _receive_response(self, response: Response, flow: Flow, now: float,
                          validated: bool = False) -> list[Event]:
        if not validated:
            response.validate()
        key = (response.top_via.branch, response.cseq[1])
        tx = self._clients.get(key)
        if tx is None:
            self.stray_responses += 1
            return [StrayResponse(response, flow)]
        events = tx._on_response(response, flow, now)
        return [] if tx.internal else events

    def _receive_request(self, request: Request, flow: Flow, now: float,
                         validated: bool, arrived: float) -> list[Event]:
        if not validated:  # so nothing below fails half-way through a state change
            request.validate()
        key = _server_key(request)
        tx = self._servers.get(key)
        gate = self.gate
        if request.method == "ACK":
            if isinstance(tx, InviteServerTransaction):
                return tx._on_ack(request, flow, now)
            if gate is not None and gate.absorb_ack(key, now):
                return []  # the ACK of a 503 the gate sent
            dialog = (request.call_id, request.cseq[0], request.from_.tag, request.to.tag)
            accepted = self._accepted.get(dialog)
            if accepted is not None:
                return accepted._on_2xx_ack(request, flow)
            return [AckReceived(request, None, flow)]
        if tx is not None:
            return tx._on_retransmission()
        in_dialog = request.to.tag is not None
        new_call = request.method == "INVITE" and not in_dialog
        if new_call and gate is not None:
            verdict = gate.refused_before(key, now)
            if verdict is not None:  # a retransmission: the same 503 again
                self._send_busy(request, flow, verdict.retry_after_s, retransmission=True)
                return []
            verdict = gate.check(arrived)
            if verdict is not None:
                self._refuse(request, key, flow, now, verdict)
                return []
        # Requests that end calls (BYE, CANCEL) or change them (re-INVITE) are let through
        # past the cap: refusing them would keep sending media to phones that hung up, or
        # break calls already admitted. A bounded headroom.
        reinvite = in_dialog and request.method == "INVITE"
        passes = (request.method in ("BYE", "CANCEL") or reinvite) and (
            self.transactions < self.max_transactions * 2)
        if self.transactions >= self.max_transactions and not passes:
            self.rejected_overload += 1
            if new_call and gate is not None:
                self._refuse(request, key, flow, now, Verdict(TRANSACTIONS, 5))
            else:
                self._send_busy(request, flow, 5)
            return []
        if request.method == "CANCEL":
            return self._receive_cancel(request, key, flow, now)
        cls = InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
        tx = cls(self, request, flow, key)
        self._servers[key] = tx
        tx._begin(now)
        return [RequestReceived(request, tx, flow)]

    def _refuse(self, request: Request, key: tuple, flow: Flow, now: float,
                verdict: Verdict) -> None:
        """503 without a transaction; the gate remembers it for retransmissions and the ACK
        (for as long as a transaction would have: Timer B, 64*T1)."""
        assert self.gate is not None
        self.gate.refuse(key, verdict, now)
        self._send_busy(request, flow, verdict.retry_after_s)

    def _send_busy(self, request: Request, flow: Flow, retry_after_s: int,
                   retransmission: bool = False) -> None:
        """503 + Retry-After with a To tag derived from the request: a retransmission of
        the request gets the very same response, with nothing stored but its key."""
        busy = response_to(request, 503, to_tag=_local_tag(request),
                           headers=[("Retry-After", str(retry_after_s))])
        self._send(busy, flow, retransmission)

    def _receive_cancel(
        self, cancel: Request, key: tuple, flow: Flow, now: float
    ) -> list[Event]:
        """§9.2: 200 if the CANCEL matches an INVITE transaction, else 481; by the layer."""
        invite = self._servers.get((*key[:-1], "INVITE"))
        if isinstance(invite, InviteServerTransaction):
            answer = response_to(cancel, 200, to_tag=invite._to_tag())
        else:
            answer = response_to(cancel, 481, to_tag=_local_tag(cancel))
        tx = NonInviteServerTransaction(self, cancel, flow, key)
        self._servers[key] = tx
        tx._begin(now)
        tx._respond(answer, now)
        if isinstance(invite, InviteServerTransaction) and invite.state == State.PROCEEDING:
            return [CancelReceived(cancel, invite, flow)]
        return []
