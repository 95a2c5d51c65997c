"""SIP transaction layer (gateway.sip.transaction), driven by an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.message import Headers, Request, Response, Uri, parse_message, response_to
from gateway.sip.transaction import (
    AckReceived,
    CancelReceived,
    ClientTransaction,
    Event,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    State,
    StrayResponse,
    Timers,
    TransactionLayer,
    TransactionTimeout,
)

UDP = ("UDP", "192.0.2.7", 5060)
TCP = ("TCP", "192.0.2.7", 5060)


def make_request(
    method: str = "INVITE", branch: str = "z9hG4bKaaa", transport: str = "UDP",
    cseq: int = 1, call_id: str = "call-1", to_tag: str | None = None,
) -> Request:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    headers = Headers([
        ("Via", f"SIP/2.0/{transport} 192.0.2.7:5060;branch={branch};rport"),
        ("Max-Forwards", "70"),
        ("Route", "<sip:proxy1.example.com;lr>"),
        ("Route", "<sip:proxy2.example.com;lr>"),
        ("From", "<sip:alice@example.com>;tag=alice1"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", "<sip:alice@192.0.2.7:5060>"),
    ])
    return Request(method, Uri.parse("sip:bob@example.com"), headers)


def ack_for_2xx(invite: Request, to_tag: str, branch: str = "z9hG4bKack") -> Request:
    return make_request("ACK", branch=branch, cseq=invite.cseq[0], call_id=invite.call_id,
                        to_tag=to_tag)


def step(layer: TransactionLayer, until: float = float("inf")) -> tuple[list, list]:
    """Advance the clock from deadline to deadline (up to ``until``), as the adapter would.

    Returns ([(time, message)], [(time, event)]).
    """
    sent: list[tuple[float, Request | Response]] = []
    events: list[tuple[float, Event]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        events += [(deadline, e) for e in layer.poll(deadline)]
        sent += [(deadline, m) for m, _ in layer.take_outgoing()]
    return sent, events


def sent_now(layer: TransactionLayer) -> list[Request | Response]:
    return [m for m, _ in layer.take_outgoing()]


def describe(message: Request | Response) -> str:
    return message.method if isinstance(message, Request) else str(message.status)


# -- client INVITE ------------------------------------------------------------------------
def test_unanswered_invite_over_udp_follows_timer_a_then_b() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request(), UDP, 0.0)
    assert isinstance(tx, ClientTransaction) and tx.is_invite and tx.state == State.CALLING
    sent = [(0.0, m) for m in sent_now(layer)]
    more, events = step(layer)
    sent += more
    assert [t for t, _ in sent] == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(m is tx.request for _, m in sent)
    assert [(t, type(e), e.tx) for t, e in events] == [(32.0, TransactionTimeout, tx)]
    assert tx.state == State.TERMINATED and layer.transactions == 0
    assert layer.retransmissions_sent == 6 and layer.timeouts == 1
    assert layer.next_deadline() is None


def test_unanswered_invite_over_tcp_is_never_retransmitted() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request(transport="TCP"), TCP, 0.0)
    assert len(sent_now(layer)) == 1
    sent, events = step(layer)
    assert sent == []
    assert [(t, type(e), e.tx) for t, e in events] == [(32.0, TransactionTimeout, tx)]
    assert layer.transactions == 0


def test_late_poll_sends_one_retransmission_and_keeps_the_grid() -> None:
    layer = TransactionLayer()
    layer.request(make_request(), UDP, 0.0)
    sent_now(layer)
    assert layer.poll(10.0) == []
    assert len(sent_now(layer)) == 1
    assert layer.next_deadline() == 15.5


def test_provisional_stops_retransmissions_and_timer_b() -> None:
    layer = TransactionLayer(Timers(c=100.0))
    tx = layer.request(make_request(), UDP, 0.0)
    sent_now(layer)
    layer.poll(0.5)
    events = layer.receive(response_to(tx.request, 180, to_tag="bob1"), UDP, 0.7)
    assert [type(e) for e in events] == [ResponseReceived] and tx.state == State.PROCEEDING
    sent, events = step(layer, until=99.0)
    assert sent == [] and events == []  # no Timer A, no Timer B in Proceeding
    assert tx.state == State.PROCEEDING


def test_non_2xx_final_is_acked_by_the_transaction() -> None:
    layer = TransactionLayer()
    invite = make_request(branch="z9hG4bKinv1")
    tx = layer.request(invite, UDP, 0.0)
    sent_now(layer)
    busy = response_to(invite, 486, to_tag="bob9")
    events = layer.receive(busy, UDP, 0.2)
    assert [(type(e), e.response.status) for e in events] == [(ResponseReceived, 486)]
    assert tx.state == State.COMPLETED and tx.last_response is busy
    [ack] = sent_now(layer)
    assert ack.method == "ACK" and str(ack.uri) == str(invite.uri)
    assert ack.headers.get_all("Via") == [invite.headers.get_all("Via")[0]]
    assert ack.top_via.branch == "z9hG4bKinv1"
    assert ack.to.tag == "bob9" and ack.from_.tag == "alice1"
    assert ack.call_id == invite.call_id and ack.cseq == (1, "ACK")
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    assert ack.headers.get("Contact") is None and ack.body == b""
    parse_message(bytes(ack))  # well formed on the wire
    # The 486 again: the same ACK again, and nothing new for the TU.
    assert layer.receive(busy, UDP, 0.9) == []
    assert sent_now(layer) == [ack]
    assert layer.absorbed_retransmissions == 1
    # No INVITE retransmission after the final; Timer D (32 s on UDP) ends it.
    sent, events = step(layer)
    assert sent == [] and events == []
    assert layer.transactions == 0


def test_non_2xx_final_over_tcp_ends_the_transaction_at_once() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request(transport="TCP"), TCP, 0.0)
    layer.receive(response_to(tx.request, 404, to_tag="x"), TCP, 0.1)
    assert [describe(m) for m in sent_now(layer)] == ["INVITE", "ACK"]
    assert tx.state == State.TERMINATED and layer.transactions == 0


def test_2xx_retransmissions_are_passed_up_in_accepted() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request(), UDP, 0.0)
    ok = response_to(tx.request, 200, to_tag="bob1")
    assert [type(e) for e in layer.receive(ok, UDP, 0.1)] == [ResponseReceived]
    assert tx.state == State.ACCEPTED
    assert [e.response for e in layer.receive(ok, UDP, 0.6)] == [ok]  # the UA re-ACKs
    sent_now(layer)
    sent, events = step(layer)
    assert sent == [] and events == []  # Timer M: quietly gone at 0.1 + 32
    assert layer.transactions == 0
    # A 2xx after that is stray: the UA may ACK and BYE it.
    [stray] = layer.receive(ok, UDP, 40.0)
    assert isinstance(stray, StrayResponse) and stray.response is ok and stray.flow == UDP


def test_response_for_an_unknown_branch_is_stray() -> None:
    layer = TransactionLayer()
    layer.request(make_request(branch="z9hG4bKmine"), UDP, 0.0)
    other = response_to(make_request(branch="z9hG4bKother"), 200, to_tag="t")
    assert [type(e) for e in layer.receive(other, UDP, 0.1)] == [StrayResponse]
    assert layer.stray_responses == 1


# -- client non-INVITE ---------------------------------------------------------------------
def test_unanswered_non_invite_caps_at_t2() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request("OPTIONS"), UDP, 0.0)
    sent = [(0.0, m) for m in sent_now(layer)]
    more, events = step(layer)
    sent += more
    assert [t for t, _ in sent] == [
        0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]
    assert [(t, type(e), e.tx) for t, e in events] == [(32.0, TransactionTimeout, tx)]
    assert layer.transactions == 0


def test_non_invite_after_a_provisional_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request("BYE", to_tag="b"), UDP, 0.0)
    layer.poll(0.5)
    assert len(sent_now(layer)) == 2
    layer.receive(response_to(tx.request, 100), UDP, 1.0)
    assert tx.state == State.PROCEEDING
    sent, events = step(layer, until=14.0)
    assert [t for t, _ in sent] == [1.5, 5.5, 9.5, 13.5]
    final = response_to(tx.request, 200)
    assert [e.response for e in layer.receive(final, UDP, 14.0)] == [final]
    assert layer.receive(final, UDP, 14.5) == []  # absorbed
    sent, events = step(layer)
    assert sent == [] and events == [] and layer.transactions == 0  # Timer K = T4


# -- server INVITE --------------------------------------------------------------------------
def test_retransmitted_invite_is_reported_once_and_gets_the_last_response() -> None:
    layer = TransactionLayer()
    invite = make_request()
    [event] = layer.receive(invite, UDP, 0.0)
    assert isinstance(event, RequestReceived) and event.flow == UDP
    tx = event.tx
    assert isinstance(tx, ServerTransaction) and tx.state == State.PROCEEDING
    assert [describe(m) for m in sent_now(layer)] == ["100"]  # §17.2.1 Trying, at once
    assert layer.receive(invite, UDP, 0.2) == []
    assert [describe(m) for m in sent_now(layer)] == ["100"]
    ringing = response_to(invite, 180, to_tag="bob1")
    layer.respond(tx, ringing, 0.3)
    assert sent_now(layer) == [ringing]
    assert layer.receive(invite, UDP, 0.4) == []
    assert sent_now(layer) == [ringing]
    busy = response_to(invite, 486, to_tag="bob1")
    layer.respond(tx, busy, 0.5)
    assert sent_now(layer) == [busy]
    assert layer.receive(invite, UDP, 0.6) == []
    assert sent_now(layer) == [busy]
    assert layer.absorbed_retransmissions == 3


def test_server_2xx_is_retransmitted_until_the_ack() -> None:
    layer = TransactionLayer()
    invite = make_request()
    [event] = layer.receive(invite, UDP, 0.0)
    sent_now(layer)
    ok = response_to(invite, 200, to_tag="bob1")
    layer.respond(event.tx, ok, 0.0)
    assert event.tx.state == State.ACCEPTED
    sent = [(0.0, m) for m in sent_now(layer)]
    more, events = step(layer, until=2.0)
    sent += more
    assert [t for t, m in sent if m is ok] == [0, 0.5, 1.5] and events == []
    ack = ack_for_2xx(invite, "bob1")
    [acked] = layer.receive(ack, UDP, 2.0)
    assert isinstance(acked, AckReceived) and acked.tx is event.tx and acked.request is ack
    assert layer.receive(ack, UDP, 2.1) == []  # a duplicate ACK is reported once
    # A retransmitted INVITE while Accepted gives no new event (RFC 6026 §8.7).
    assert layer.receive(invite, UDP, 2.2) == []
    sent_now(layer)
    sent, events = step(layer)
    assert sent == [] and events == []  # nothing more; Timer L quietly ends it
    assert layer.transactions == 0


def test_server_2xx_without_ack_times_out() -> None:
    layer = TransactionLayer()
    [event] = layer.receive(make_request(), UDP, 0.0)
    sent_now(layer)
    layer.respond(event.tx, response_to(event.request, 200, to_tag="bob1"), 0.0)
    sent = [(0.0, m) for m in sent_now(layer)]
    more, events = step(layer)
    sent += more
    assert [t for t, _ in sent] == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, type(e), e.tx) for t, e in events] == [(32.0, TransactionTimeout, event.tx)]
    assert layer.transactions == 0
    # An ACK arriving after that still reaches the UA, without a transaction.
    [late] = layer.receive(ack_for_2xx(event.request, "bob1"), UDP, 33.0)
    assert isinstance(late, AckReceived) and late.tx is None


def test_server_2xx_over_tcp_is_sent_once() -> None:
    layer = TransactionLayer()
    [event] = layer.receive(make_request(transport="TCP"), TCP, 0.0)
    layer.respond(event.tx, response_to(event.request, 200, to_tag="b"), 0.0)
    assert [describe(m) for m in sent_now(layer)] == ["100", "200"]
    sent, events = step(layer)
    assert sent == [] and [type(e) for _, e in events] == [TransactionTimeout]


def test_server_non_2xx_final_retransmits_until_ack_then_confirmed() -> None:
    layer = TransactionLayer()
    invite = make_request()
    [event] = layer.receive(invite, UDP, 0.0)
    sent_now(layer)
    layer.respond(event.tx, response_to(invite, 486, to_tag="b"), 0.0)
    assert [describe(m) for m in sent_now(layer)] == ["486"]
    sent, _ = step(layer, until=4.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5]  # Timer G
    ack = make_request("ACK", to_tag="b")  # same branch as the INVITE
    assert layer.receive(ack, UDP, 4.0) == []  # absorbed by the transaction
    assert event.tx.state == State.CONFIRMED
    assert layer.receive(ack, UDP, 4.1) == [] and layer.receive(invite, UDP, 4.2) == []
    assert sent_now(layer) == []
    sent, events = step(layer)
    assert sent == [] and events == [] and layer.transactions == 0  # Timer I


def test_server_non_2xx_final_without_ack_times_out_by_timer_h() -> None:
    layer = TransactionLayer()
    [event] = layer.receive(make_request(), UDP, 0.0)
    layer.respond(event.tx, response_to(event.request, 603, to_tag="b"), 1.0)
    _, events = step(layer)
    assert [(t, type(e)) for t, e in events] == [(33.0, TransactionTimeout)]
    assert layer.transactions == 0


def test_server_invite_left_ringing_is_answered_408() -> None:
    layer = TransactionLayer(Timers(c=60.0))
    [event] = layer.receive(make_request(), UDP, 0.0)
    layer.respond(event.tx, response_to(event.request, 180, to_tag="b"), 0.0)
    sent_now(layer)
    sent, events = step(layer, until=60.0)
    assert [describe(m) for _, m in sent] == ["408"] and sent[0][1].to.tag == "b"
    assert [(t, type(e)) for t, e in events] == [(60.0, TransactionTimeout)]
    layer.respond(event.tx, response_to(event.request, 200, to_tag="b"), 61.0)  # too late
    assert layer.ignored_responses == 1
    _, events = step(layer)
    assert events == [] and layer.transactions == 0  # Timer H reports nothing twice


# -- server non-INVITE ----------------------------------------------------------------------
def test_server_non_invite_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    info = make_request("INFO")
    [event] = layer.receive(info, UDP, 0.0)
    assert event.tx.state == State.TRYING and sent_now(layer) == []
    assert layer.receive(info, UDP, 0.5) == [] and sent_now(layer) == []
    ok = response_to(info, 200, to_tag="b")
    layer.respond(event.tx, ok, 0.6)
    assert event.tx.state == State.COMPLETED
    assert layer.receive(info, UDP, 1.5) == []
    assert sent_now(layer) == [ok, ok]
    _, events = step(layer)
    assert events == [] and layer.transactions == 0 and layer.next_deadline() is None


def test_options_over_udp_ends_with_its_final_and_a_retransmission_is_asked_again() -> None:
    layer = TransactionLayer()
    options = make_request("OPTIONS")
    [event] = layer.receive(options, UDP, 0.0)
    ok = response_to(options, 200, to_tag="b")
    layer.respond(event.tx, ok, 0.1)
    assert event.tx.state == State.TERMINATED and layer.transactions == 0
    assert layer.next_deadline() is None and sent_now(layer) == [ok]
    # the client did not get the 200 and retransmits: the TU answers it again
    [again] = layer.receive(options, UDP, 0.5)
    assert isinstance(again, RequestReceived) and again.tx is not event.tx


def test_server_non_invite_over_tcp_ends_with_its_final() -> None:
    layer = TransactionLayer()
    [event] = layer.receive(make_request("OPTIONS", transport="TCP"), TCP, 0.0)
    layer.respond(event.tx, response_to(event.request, 200), 0.0)
    assert event.tx.state == State.TERMINATED and layer.transactions == 0


def test_unanswered_server_non_invite_is_dropped() -> None:
    layer = TransactionLayer()
    layer.receive(make_request("OPTIONS"), UDP, 0.0)
    _, events = step(layer)
    assert events == [] and layer.transactions == 0


# -- CANCEL, server side -------------------------------------------------------------------
def test_cancel_while_proceeding_is_answered_and_reported() -> None:
    layer = TransactionLayer()
    invite = make_request()
    [event] = layer.receive(invite, UDP, 0.0)
    layer.respond(event.tx, response_to(invite, 180, to_tag="bob1"), 0.1)
    sent_now(layer)
    cancel = make_request("CANCEL")
    [cancelled] = layer.receive(cancel, UDP, 0.5)
    assert isinstance(cancelled, CancelReceived)
    assert cancelled.tx is event.tx and cancelled.request is cancel and cancelled.flow == UDP
    [ok] = sent_now(layer)
    assert ok.status == 200 and ok.cseq == (1, "CANCEL") and ok.to.tag == "bob1"
    # The UA ends the INVITE with 487; a retransmitted CANCEL gets the 200 again, silently.
    layer.respond(event.tx, response_to(invite, 487, to_tag="bob1"), 0.5)
    assert layer.receive(cancel, UDP, 0.6) == []
    assert [describe(m) for m in sent_now(layer)] == ["487", "200"]
    layer.receive(make_request("ACK", to_tag="bob1"), UDP, 0.7)
    assert event.tx.state == State.CONFIRMED
    _, events = step(layer)
    assert events == [] and layer.transactions == 0


def test_cancel_after_the_2xx_is_answered_200_and_changes_nothing() -> None:
    """§9.2: a CANCEL that matches a transaction is answered 200 even when it is too late;
    the call goes on, so the UA is not told."""
    layer = TransactionLayer()
    invite = make_request()
    [event] = layer.receive(invite, UDP, 0.0)
    ok = response_to(invite, 200, to_tag="bob1")
    layer.respond(event.tx, ok, 0.1)
    sent_now(layer)
    assert layer.receive(make_request("CANCEL"), UDP, 0.2) == []
    [answer] = sent_now(layer)
    assert answer.status == 200 and answer.cseq == (1, "CANCEL") and answer.to.tag == "bob1"
    assert event.tx.state == State.ACCEPTED
    sent, _ = step(layer, until=0.6)
    assert [m for _, m in sent] == [ok]  # still retransmitting the 2xx
    [acked] = layer.receive(ack_for_2xx(invite, "bob1"), UDP, 1.0)
    assert isinstance(acked, AckReceived) and acked.tx is event.tx


def test_cancel_matching_nothing_is_answered_481() -> None:
    layer = TransactionLayer()
    layer.receive(make_request(branch="z9hG4bKcall"), UDP, 0.0)
    sent_now(layer)
    assert layer.receive(make_request("CANCEL", branch="z9hG4bKelse"), UDP, 0.1) == []
    [answer] = sent_now(layer)
    assert answer.status == 481 and answer.cseq == (1, "CANCEL") and answer.to.tag


# -- CANCEL, client side -------------------------------------------------------------------
def test_cancel_waits_for_a_provisional_and_a_crossing_200_still_reaches_the_ua() -> None:
    layer = TransactionLayer()
    invite = make_request(branch="z9hG4bKout")
    tx = layer.request(invite, UDP, 0.0)
    sent_now(layer)
    layer.cancel(tx, 0.1, reason='SIP;cause=487;text="gone"')
    assert tx.cancel_requested and sent_now(layer) == []  # §9.1: not before a provisional
    ringing = response_to(invite, 180, to_tag="bob1")
    assert [e.response for e in layer.receive(ringing, UDP, 0.3)] == [ringing]
    [cancel] = sent_now(layer)
    assert cancel.method == "CANCEL" and cancel.top_via.branch == "z9hG4bKout"
    assert cancel.headers.get_all("Via") == [invite.headers.get_all("Via")[0]]
    assert str(cancel.uri) == str(invite.uri) and cancel.cseq == (1, "CANCEL")
    assert cancel.call_id == invite.call_id and cancel.to.tag is None
    assert cancel.from_.tag == "alice1"
    assert cancel.headers.get_all("Route") == invite.headers.get_all("Route")
    assert cancel.headers.get("Reason") == 'SIP;cause=487;text="gone"'
    assert tx.cancel_tx is not None and tx.cancel_tx.request is cancel
    # The callee answered before it saw the CANCEL: the 200 goes up (the UA ACKs and BYEs).
    ok = response_to(invite, 200, to_tag="bob1")
    assert [(type(e), e.response, e.tx) for e in layer.receive(ok, UDP, 0.4)] == [
        (ResponseReceived, ok, tx)
    ]
    assert tx.state == State.ACCEPTED
    # The CANCEL's own transaction is the layer's business.
    assert layer.receive(response_to(cancel, 200, to_tag="bob1"), UDP, 0.5) == []
    sent, events = step(layer)
    assert events == [] and layer.transactions == 0


def test_cancel_then_487() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request(), UDP, 0.0)
    layer.receive(response_to(tx.request, 100), UDP, 0.1)
    layer.cancel(tx, 1.0)
    assert [describe(m) for m in sent_now(layer)] == ["INVITE", "CANCEL"]
    layer.cancel(tx, 1.1)  # once is enough
    assert sent_now(layer) == []
    layer.receive(response_to(tx.cancel_tx.request, 200, to_tag="b"), UDP, 1.2)
    [ended] = layer.receive(response_to(tx.request, 487, to_tag="b"), UDP, 1.3)
    assert ended.response.status == 487 and tx.state == State.COMPLETED
    assert [describe(m) for m in sent_now(layer)] == ["ACK"]
    layer.cancel(tx, 1.4)  # after a final: no-op
    assert sent_now(layer) == []
    _, events = step(layer)
    assert events == [] and layer.transactions == 0


def test_cancelled_invite_without_final_gives_up_after_64_t1() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request(), UDP, 0.0)
    layer.receive(response_to(tx.request, 180, to_tag="b"), UDP, 0.1)
    layer.cancel(tx, 2.0)
    _, events = step(layer)
    assert [(t, type(e), e.tx) for t, e in events] == [(34.0, TransactionTimeout, tx)]
    assert layer.transactions == 0


def test_invite_ringing_too_long_is_cancelled_by_timer_c() -> None:
    layer = TransactionLayer(Timers(c=100.0))
    tx = layer.request(make_request(), TCP, 0.0)
    layer.receive(response_to(tx.request, 180, to_tag="b"), TCP, 1.0)
    layer.receive(response_to(tx.request, 183, to_tag="b"), TCP, 10.0)  # restarts Timer C
    sent_now(layer)
    sent, events = step(layer, until=109.0)
    assert sent == []
    sent, events = step(layer, until=110.0)
    assert [(t, describe(m)) for t, m in sent] == [(110.0, "CANCEL")] and events == []
    _, events = step(layer)
    assert [(t, type(e)) for t, e in events] == [(142.0, TransactionTimeout)]


# -- limits ----------------------------------------------------------------------------------
def test_overload_is_answered_503_with_retry_after() -> None:
    layer = TransactionLayer(max_transactions=2)
    first = make_request(branch="z9hG4bK1", call_id="c1")
    assert len(layer.receive(first, UDP, 0.0)) == 1
    assert len(layer.receive(make_request("OPTIONS", branch="z9hG4bK2"), UDP, 0.0)) == 1
    sent_now(layer)
    third = make_request(branch="z9hG4bK3", call_id="c3")
    assert layer.receive(third, UDP, 0.1) == []
    [busy] = sent_now(layer)
    assert busy.status == 503 and busy.headers.get("Retry-After") == "5"
    assert busy.call_id == "c3" and busy.to.tag
    assert layer.rejected_overload == 1 and layer.transactions == 2
    # Known transactions still work: a retransmission is answered, an ACK passes.
    assert layer.receive(first, UDP, 0.2) == [] and len(sent_now(layer)) == 1
    assert [type(e) for e in layer.receive(ack_for_2xx(first, "x"), UDP, 0.3)] == [AckReceived]


def test_requests_without_a_cookie_branch_match_by_dialog_fields() -> None:
    """RFC 2543 peers: Call-ID, CSeq, From tag and sent-by identify the transaction."""
    layer = TransactionLayer()
    invite = make_request(branch="old1")
    assert len(layer.receive(invite, UDP, 0.0)) == 1
    again = make_request(branch="old1")
    assert layer.receive(again, UDP, 0.1) == []
    [cancelled] = layer.receive(make_request("CANCEL", branch="old1"), UDP, 0.2)
    assert isinstance(cancelled, CancelReceived)


def test_malformed_messages_are_dropped() -> None:
    layer = TransactionLayer()
    for header in ("Via", "From", "CSeq"):
        request = make_request()
        request.headers.remove(header)
        assert layer.receive(request, UDP, 0.0) == []
        response = response_to(make_request(), 200)
        response.headers.remove(header)
        assert layer.receive(response, UDP, 0.0) == []
    assert layer.malformed == 6
    assert layer.transactions == 0 and sent_now(layer) == []


def test_programming_errors_raise() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError, match="send_stateless"):
        layer.request(make_request("ACK"), UDP, 0.0)
    with pytest.raises(ValueError, match="cookie"):
        layer.request(make_request(branch="nocookie"), UDP, 0.0)
    layer.request(make_request(), UDP, 0.0)
    with pytest.raises(ValueError, match="already exists"):
        layer.request(make_request(), UDP, 0.0)
    with pytest.raises(ValueError):
        Timers(t1=0)


def test_send_stateless_just_queues() -> None:
    layer = TransactionLayer()
    ack = ack_for_2xx(make_request(), "b")
    layer.send_stateless(ack, UDP)
    assert layer.take_outgoing() == [(ack, UDP)] and layer.transactions == 0


def test_rfc2543_ack_for_a_2xx_matches_by_its_branchless_key() -> None:
    layer = TransactionLayer()
    invite = make_request(branch="old1")
    [event] = layer.receive(invite, UDP, 0.0)
    layer.respond(event.tx, response_to(invite, 200, to_tag="b"), 0.0)
    [acked] = layer.receive(make_request("ACK", branch="old1", to_tag="b"), UDP, 0.2)
    assert isinstance(acked, AckReceived) and acked.tx is event.tx


def test_stopped_timers_do_not_pile_up() -> None:
    layer = TransactionLayer()
    tx = layer.request(make_request(transport="TCP"), TCP, 0.0)
    for i in range(5000):  # each provisional restarts Timer C, leaving a stale heap entry
        layer.receive(response_to(tx.request, 183, to_tag="b"), TCP, i * 0.01)
    assert len(layer._heap) < 1100
    assert layer.next_deadline() == pytest.approx(49.99 + 180.0)
    _, events = step(layer)
    assert [type(e) for _, e in events] == [TransactionTimeout] and layer.transactions == 0


# -- property --------------------------------------------------------------------------------
_ops = st.lists(
    st.tuples(
        st.sampled_from([
            "request", "response", "incoming", "retransmit", "respond", "cancel", "cancel_in",
            "ack_2xx", "ack_same", "poll",
        ]),
        st.integers(0, 3),  # which transaction / message (recent ones)
        st.sampled_from([100, 180, 200, 486]),
        st.sampled_from(["UDP", "TCP"]),
        st.one_of(st.floats(0, 2), st.floats(0, 70)),  # clock step
    ),
    min_size=5,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_random_interleavings_never_raise_and_leave_nothing_behind(ops: list) -> None:
    layer = TransactionLayer(Timers(c=60.0), max_transactions=3)
    now = 0.0
    clients: list[ClientTransaction] = []
    servers: list[ServerTransaction] = []
    incoming: list[Request] = []
    counter = 0
    for op, index, status, transport, dt in ops:
        flow = (transport, "192.0.2.7", 5060)
        counter += 1
        pick = -1 - index  # the most recent ones, so that ops hit live transactions
        if op == "request":
            method = "INVITE" if index % 2 else "OPTIONS"
            request = make_request(method, branch=f"z9hG4bKc{counter}", transport=transport,
                                   call_id=f"out{counter}")
            clients.append(layer.request(request, flow, now))
        elif op == "response" and clients:
            tx = clients[max(pick, -len(clients))]
            layer.receive(response_to(tx.request, status, to_tag="t"), tx.flow, now)
        elif op == "incoming":
            method = "INVITE" if index % 2 else "OPTIONS"
            request = make_request(method, branch=f"z9hG4bKs{counter}", transport=transport,
                                   call_id=f"in{counter}")
            incoming.append(request)
            events = layer.receive(request, flow, now)
            servers += [e.tx for e in events if isinstance(e, RequestReceived)]
        elif op == "retransmit" and incoming:
            layer.receive(incoming[max(pick, -len(incoming))], flow, now)
        elif op == "respond" and servers:
            tx = servers[max(pick, -len(servers))]
            layer.respond(tx, response_to(tx.request, status, to_tag="t"), now)
        elif op == "cancel" and clients:
            layer.cancel(clients[max(pick, -len(clients))], now)
        elif op == "cancel_in" and incoming:
            request = incoming[max(pick, -len(incoming))]
            cancel = make_request("CANCEL", branch=request.top_via.branch, transport=transport,
                                  call_id=request.call_id)
            layer.receive(cancel, flow, now)
        elif op in ("ack_2xx", "ack_same") and incoming:
            request = incoming[max(pick, -len(incoming))]
            branch = f"z9hG4bKa{counter}" if op == "ack_2xx" else request.top_via.branch
            ack = make_request("ACK", branch=branch, transport=transport,
                               call_id=request.call_id, to_tag="t")
            layer.receive(ack, flow, now)
        now += dt
        layer.poll(now)
        layer.take_outgoing()
        deadline = layer.next_deadline()
        assert deadline is None or deadline > now
    for _ in range(10000):
        deadline = layer.next_deadline()
        if deadline is None:
            break
        layer.poll(deadline)
    assert layer.transactions == 0
    assert layer._accepted == {} and layer._heap == []


def test_bye_and_cancel_pass_the_transaction_cap():
    """A full table must not keep calls up: BYE still gets through (up to 2x the cap)."""
    layer = TransactionLayer(max_transactions=1)
    flow = ("UDP", "192.0.2.1", 5060)

    def request(method: str, branch: str) -> Request:
        return parse_message(
            f"{method} sip:x@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{branch}"
            f"\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: c{branch}\r\n"
            f"CSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n".encode())

    assert isinstance(layer.receive(request("OPTIONS", "a1"), flow, 0.0)[0], RequestReceived)
    assert layer.receive(request("OPTIONS", "a2"), flow, 0.0) == []  # 503
    assert isinstance(layer.receive(request("BYE", "a3"), flow, 0.0)[0], RequestReceived)
    assert layer.receive(request("BYE", "a4"), flow, 0.0) == []  # beyond twice the cap
