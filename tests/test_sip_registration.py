"""The gateway registering upstream (gateway.sip.registration), against our own Registrar."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.digest import DigestServer, parse_credentials
from gateway.sip.message import Request, Response, Uri, parse_message, response_to
from gateway.sip.registrar import Registrar
from gateway.sip.registration import RegistrationClient, refresh_delay

REALM = "pbx.example"
SECRET = b"0123456789abcdef-upstream"
SRC = ("192.0.2.10", 5060)
CONTACT = "sip:gateway@192.0.2.10:5060"


def make_client(password: str = "s3cret", **kwargs) -> RegistrationClient:
    return RegistrationClient(
        registrar=Uri.parse(f"sip:{REALM}"),
        aor=Uri.parse(f"sip:gw@{REALM}"),
        contact=Uri.parse(CONTACT),
        username="gw",
        password=password,
        **kwargs,
    )


class Wire:
    """Carries the client's requests to a Registrar and records what went by."""

    def __init__(self, client: RegistrationClient, registrar: Registrar) -> None:
        self.client, self.registrar = client, registrar
        self.sent: list[Request] = []

    def poll(self, now: float) -> Request | None:
        request = self.client.poll(now)
        if request is not None:
            self.sent.append(request)
        return request

    def exchange(self, now: float, request: Request | None = None) -> Response:
        """Send ``request`` (or poll one), deliver the registrar's answer."""
        request = request if request is not None else self.poll(now)
        assert request is not None, f"nothing due at {now} (deadline {self.client.next_deadline()})"
        if request not in self.sent:
            self.sent.append(request)
        # On the wire, with the Via the transport layer adds.
        request.headers.add("Via", f"SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK{len(self.sent)}",
                            first=True)
        request = parse_message(bytes(request))
        response = self.registrar.handle(request, SRC, now)
        self.client.on_response(parse_message(bytes(response)), now)
        return response


def make_registrar(password: str = "s3cret", **kwargs) -> Registrar:
    return Registrar(REALM, {"gw": password}, SECRET, **kwargs)


def test_refresh_rule() -> None:
    assert refresh_delay(60) == 30.0  # half-way
    assert refresh_delay(300) == 270.0  # 30 s ahead
    assert refresh_delay(3600) == 3240.0  # capped at 90 %
    assert refresh_delay(10) == 5.0
    assert refresh_delay(1) == 0.5


def test_challenge_register_and_refresh() -> None:
    client = make_client(expires=60)
    wire = Wire(client, make_registrar())
    assert client.state == "unregistered" and client.next_deadline() == 0.0
    first = wire.poll(0.0)
    assert first is not None
    assert client.state == "registering"
    assert client.poll(0.0) is None  # one request outstanding at a time
    assert first.method == "REGISTER" and str(first.uri) == f"sip:{REALM}"
    h = first.headers
    assert h.get("Max-Forwards") == "70"
    assert first.to.uri == first.from_.uri == Uri.parse(f"sip:gw@{REALM}")
    assert first.from_.tag and first.to.tag is None
    assert first.cseq == (1, "REGISTER")
    assert h.get("Contact") == f"<{CONTACT}>;expires=60" and h.get("Expires") == "60"
    assert "Authorization" not in h and "Via" not in h

    assert wire.exchange(0.0, first).status == 401
    assert client.next_deadline() == 0.0  # the answer goes at once
    assert wire.exchange(1.0).status == 200
    second = wire.sent[1]
    credentials = parse_credentials(second.headers.get("Authorization"))
    assert credentials.username == "gw" and credentials.realm == REALM
    assert credentials.uri == f"sip:{REALM}"
    assert client.state == "registered" and client.registrations == 1
    assert client.registered_until == 61.0
    assert client.last_status == 200 and client.last_error is None
    [binding] = wire.registrar.lookup("gw", 2.0)
    assert str(binding.contact) == CONTACT and binding.source == SRC

    # Refresh half-way through the 60 s grant, counted from when the REGISTER left.
    assert client.next_deadline() == 31.0
    assert client.poll(30.99) is None
    # The refresh reuses the nonce (nc=2): no new challenge round trip.
    assert wire.exchange(31.0).status == 200
    assert parse_credentials(wire.sent[2].headers.get("Authorization")).nc == "00000002"
    assert client.registered_until == 91.0 < client.next_deadline() + 60
    assert client.next_deadline() == 61.0
    assert client.registrations == 2 and client.failures == 0
    assert_one_dialog(wire.sent)


def assert_one_dialog(requests: list[Request]) -> None:
    """RFC 3261 §10.2.4: one Call-ID and From tag, CSeq up by one each time."""
    assert len({r.call_id for r in requests}) == 1
    assert len({r.from_.tag for r in requests}) == 1
    assert [r.cseq[0] for r in requests] == list(range(1, len(requests) + 1))


def test_stale_nonce_is_answered_at_once() -> None:
    # Long grants outlive the registrar's 300 s nonces: the refresh meets stale=TRUE.
    client = make_client(expires=600)
    wire = Wire(client, make_registrar())
    wire.exchange(0.0)
    wire.exchange(0.0)
    assert client.state == "registered"
    assert client.next_deadline() == 540.0  # min(max(300, 570), 540)
    response = wire.exchange(540.0)
    assert response.status == 401 and "stale=TRUE" in response.headers.get("WWW-Authenticate")
    assert client.next_deadline() == 540.0 and client.state == "registered"
    assert wire.exchange(540.0).status == 200
    assert client.registered_until == 1140.0 and client.failures == 0
    assert_one_dialog(wire.sent)


def test_503_with_retry_after() -> None:
    client = make_client(expires=60)
    request = client.poll(100.0)
    assert request is not None
    client.on_response(response_to(request, 503, headers=[("Retry-After", "7")]), 100.5)
    assert client.state == "failed" and client.failures == 1
    assert client.last_status == 503 and "503" in (client.last_error or "")
    assert client.next_deadline() == 107.5
    assert client.poll(107.4) is None
    request = client.poll(107.5)
    assert request is not None and request.cseq[0] == 2
    assert client.state == "registering"
    # A Retry-After longer than the backoff is honoured; a shorter one does not shorten it.
    client.on_response(response_to(request, 503, headers=[("Retry-After", "60 (later)")]), 108.0)
    assert client.next_deadline() == 168.0
    request = client.poll(168.0)
    assert request is not None
    client.on_response(response_to(request, 500, headers=[("Retry-After", "1")]), 168.0)
    assert client.next_deadline() == 168.0 + 20  # third failure: 5 * 2**2


def test_wrong_password_backs_off_exponentially() -> None:
    client = make_client(password="wrong", retry_min=5.0, retry_max=300.0)
    wire = Wire(client, make_registrar(password="s3cret"))
    now = 0.0
    delays = []
    for cycle in range(1, 10):
        assert wire.exchange(now).status == 401  # no credentials yet
        assert client.next_deadline() == now
        assert wire.exchange(now).status == 401  # our answer is refused
        assert client.state == "failed" and client.failures == cycle
        assert "rejected" in (client.last_error or "")
        deadline = client.next_deadline()
        assert deadline is not None
        delays.append(deadline - now)
        assert client.poll(deadline - 0.01) is None
        now = deadline
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert len(wire.sent) == 18
    assert client.registrations == 0 and client.registered_until is None
    assert_one_dialog(wire.sent)
    # Once the password is fixed upstream, the next try succeeds and the backoff resets.
    wire.registrar.users["gw"] = "wrong"
    wire.exchange(now)
    assert wire.exchange(now).status == 200
    assert client.state == "registered" and client.last_error is None
    request = client.poll(client.next_deadline())
    client.on_timeout(now + 400)
    assert request is not None and client.next_deadline() == now + 400 + 5


def test_stale_challenge_after_a_rejected_answer_still_retries() -> None:
    server = DigestServer(REALM, SECRET)
    client = make_client()

    def challenge(request: Request, stale: bool) -> Response:
        values = [("WWW-Authenticate", str(c)) for c in server.challenges(0.0, stale)]
        return response_to(request, 401, headers=values)

    request = client.poll(0.0)
    assert request is not None
    client.on_response(challenge(request, False), 0.0)
    request = client.poll(0.0)
    assert request is not None and "Authorization" in request.headers
    client.on_response(challenge(request, True), 0.0)  # second 401, but stale
    assert client.state == "registering" and client.next_deadline() == 0.0
    request = client.poll(0.0)
    assert request is not None
    client.on_response(challenge(request, False), 0.0)  # now a real rejection
    assert client.state == "failed"


def test_423_retries_with_min_expires() -> None:
    client = make_client(expires=60)
    wire = Wire(client, make_registrar(min_expires=120))
    assert wire.exchange(0.0).status == 401
    response = wire.exchange(0.0)
    assert response.status == 423 and response.headers.get("Min-Expires") == "120"
    assert client.next_deadline() == 0.0 and client.failures == 0
    assert wire.exchange(0.0).status == 200
    assert wire.sent[-1].headers.get("Expires") == "120"
    assert wire.sent[-1].headers.get("Contact") == f"<{CONTACT}>;expires=120"
    assert client.registered_until == 120.0
    assert client.next_deadline() == refresh_delay(120) == 90.0
    assert client.expires == 120  # later refreshes keep asking for what is allowed


def test_423_without_a_larger_min_expires_fails() -> None:
    client = make_client(expires=60)
    request = client.poll(0.0)
    assert request is not None
    client.on_response(response_to(request, 423, headers=[("Min-Expires", "30")]), 0.0)
    assert client.state == "failed" and client.next_deadline() == 5.0


def test_unregister() -> None:
    client = make_client(expires=60)
    wire = Wire(client, make_registrar())
    wire.exchange(0.0)
    wire.exchange(0.0)
    assert wire.registrar.bindings_count == 1
    request = client.unregister(10.0)
    assert request.headers.get("Expires") == "0"
    assert request.headers.get("Contact") == f"<{CONTACT}>;expires=0"
    assert "Authorization" in request.headers  # the known nonce saves a round trip
    assert wire.exchange(10.0, request).status == 200
    assert wire.registrar.bindings_count == 0
    assert client.state == "unregistered" and client.registered_until is None
    assert client.next_deadline() is None and client.poll(1000.0) is None
    assert_one_dialog(wire.sent)


def test_unregister_answers_a_challenge_then_stops() -> None:
    client = make_client(expires=60)
    wire = Wire(client, make_registrar())
    request = client.unregister(0.0)  # never registered, no nonce yet
    assert wire.exchange(0.0, request).status == 401
    assert wire.exchange(0.0).status == 200
    assert wire.sent[-1].headers.get("Expires") == "0"
    assert client.next_deadline() is None
    # A failing unregistration is not retried either.
    client = make_client()
    request = client.unregister(0.0)
    client.on_response(response_to(request, 503), 0.0)
    assert client.state == "unregistered" and client.next_deadline() is None


def test_granted_expiry_sources() -> None:
    def granted(*headers: tuple[str, str]) -> float | None:
        client = make_client(expires=300)
        request = client.poll(0.0)
        assert request is not None
        client.on_response(response_to(request, 200, headers=headers), 0.0)
        return client.registered_until

    other = ("Contact", "<sip:someone@198.51.100.1>;expires=40")
    ours = ("Contact", f"<{CONTACT}>;expires=100")
    assert granted(other, ours, ("Expires", "200")) == 100.0
    assert granted(other, ("Expires", "200")) == 200.0
    assert granted(("Expires", "9000")) == 300.0  # never longer than we asked
    assert granted(other) == 300.0
    assert granted(("Contact", "<sip:broken"), ("Expires", "junk")) == 300.0
    assert granted(("Contact", f"<{CONTACT}>;expires=0")) is None  # not registered


def test_stray_and_provisional_responses_are_ignored() -> None:
    client = make_client(expires=60)
    request = client.poll(0.0)
    assert request is not None
    client.on_response(response_to(request, 100), 0.0)
    client.on_response(response_to(request, 180), 0.0)
    assert client.state == "registering" and client.poll(1.0) is None
    client.on_response(response_to(request, 503), 1.0)
    retry = client.poll(6.0)
    assert retry is not None
    late = response_to(request, 200)  # for CSeq 1, after we moved on to CSeq 2
    client.on_response(late, 6.5)
    assert client.state == "registering"
    foreign = response_to(retry, 200)
    foreign.headers.set("Call-ID", "someone-else")
    client.on_response(foreign, 6.5)
    assert client.state == "registering"
    client.on_response(response_to(retry, 200), 7.0)
    assert client.state == "registered"
    client.on_response(response_to(retry, 503), 7.0)  # a duplicate: nothing outstanding
    assert client.state == "registered" and client.failures == 1


def test_timeouts() -> None:
    client = make_client()
    request = client.poll(0.0)
    assert request is not None
    client.on_timeout(32.0)
    assert client.state == "failed" and client.last_status == 408
    assert client.next_deadline() == 37.0
    assert client.poll(37.0) is not None
    # If the transport never reports back, the client does not wait forever.
    assert client.next_deadline() == 37.0 + RegistrationClient.STUCK_AFTER
    assert client.poll(100.99) is None and client.failures == 1
    assert client.poll(101.0) is None  # now counted as timed out
    assert client.failures == 2 and client.next_deadline() == 111.0
    assert client.poll(111.0) is not None


def test_proxy_and_registrar_challenges_are_both_answered() -> None:
    proxy = DigestServer("proxy.example", SECRET)
    registrar = DigestServer(REALM, SECRET)
    client = make_client()
    request = client.poll(0.0)
    assert request is not None
    values = [("Proxy-Authenticate", str(c)) for c in proxy.challenges(0.0)]
    client.on_response(response_to(request, 407, headers=values), 0.0)
    request = client.poll(0.0)
    assert request is not None
    assert parse_credentials(request.headers.get("Proxy-Authorization")).realm == "proxy.example"
    values = [("WWW-Authenticate", str(c)) for c in registrar.challenges(0.0)]
    client.on_response(response_to(request, 401, headers=values), 0.0)
    request = client.poll(0.0)
    assert request is not None
    assert parse_credentials(request.headers.get("Proxy-Authorization")).nc == "00000002"
    assert parse_credentials(request.headers.get("Authorization")).realm == REALM
    client.on_response(response_to(request, 200), 0.0)
    assert client.state == "registered"


def test_unanswerable_challenge_fails() -> None:
    client = make_client()
    request = client.poll(0.0)
    assert request is not None
    client.on_response(response_to(request, 401, headers=[
        ("WWW-Authenticate", 'Digest realm="x", nonce="n", algorithm=SHA-512-256'),
        ("WWW-Authenticate", "Basic realm=x"),
    ]), 0.0)
    assert client.state == "failed" and "challenge" in (client.last_error or "")
    client.on_response(response_to(request, 401), 0.0)  # nothing outstanding: ignored
    request = client.poll(5.0)
    assert request is not None
    client.on_response(response_to(request, 401), 5.0)  # no challenge at all
    assert client.state == "failed" and client.next_deadline() == 15.0


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        make_client(expires=0)
    with pytest.raises(ValueError):
        make_client(retry_min=10.0, retry_max=5.0)
    with pytest.raises(ValueError):
        make_client(call_id="two words")
    assert make_client(call_id="fixed@gw").poll(0.0).call_id == "fixed@gw"  # type: ignore[union-attr]


# -- property: any sequence of responses and clock steps ------------------------------------

_SERVER = DigestServer(REALM, SECRET)
_text = st.text(st.characters(blacklist_characters="\r\n"), max_size=30)
_header_values = {
    "WWW-Authenticate": st.one_of(
        st.builds(lambda s: str(_SERVER.challenges(0.0, s)[0]), st.booleans()),
        st.just('Digest realm="r", nonce="n", qop="auth-int"'),
        _text,
    ),
    "Proxy-Authenticate": st.builds(lambda s: str(_SERVER.challenges(0.0, s)[1]), st.booleans()),
    "Contact": st.one_of(
        st.builds(lambda n: f"<{CONTACT}>;expires={n}", st.integers(0, 10**12)),
        st.sampled_from(["*", "<sip:broken", f"<{CONTACT}>;expires=x", "<sip:x@y>;expires=5"]),
    ),
    "Expires": st.one_of(st.integers(0, 10**12).map(str), _text),
    "Min-Expires": st.one_of(st.integers(0, 10**12).map(str), _text),
    "Retry-After": st.one_of(st.integers(0, 10**12).map(str), _text),
    "Call-ID": st.sampled_from(["other-call"]),
    "CSeq": st.sampled_from(["1 REGISTER", "999 REGISTER", "junk", "2 INVITE"]),
}
_headers = st.lists(
    st.sampled_from(sorted(_header_values)).flatmap(
        lambda name: st.tuples(st.just(name), _header_values[name])
    ),
    max_size=4,
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("response"), st.sampled_from(
            [100, 180, 200, 202, 302, 401, 403, 404, 407, 408, 423, 480, 500, 503, 603]
        ), _headers, st.floats(0, 100)),
        st.tuples(st.just("timeout"), st.just(0), st.just([]), st.floats(0, 100)),
        st.tuples(st.just("poll"), st.just(0), st.just([]), st.floats(0, 1000)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_steps)
def test_random_responses_keep_the_client_sane(steps) -> None:
    client = make_client(expires=60)
    now = 0.0
    sent: list[Request] = []
    last: Request | None = None
    for kind, status, headers, step in steps:
        now += step
        if kind == "poll":
            if client._sent_at is None and now >= (client.next_deadline() or math.inf):
                last = client.poll(now)
                assert last is not None  # a deadline that has come always yields a request
            else:
                last = client.poll(now) or last
            if last is not None and (not sent or last is not sent[-1]):
                sent.append(last)
        elif kind == "timeout":
            client.on_timeout(now)
        elif last is not None:
            response = response_to(last, status)
            for name, value in headers:
                response.headers.set(name, value)
            client.on_response(response, now)
        deadline = client.next_deadline()
        assert deadline is not None and math.isfinite(deadline)
        longest = max(RegistrationClient.STUCK_AFTER, RegistrationClient.MAX_RETRY_AFTER,
                      refresh_delay(client.expires))
        assert deadline <= now + longest
        assert client.state in ("unregistered", "registering", "registered", "failed")
    if sent:
        assert len({r.call_id for r in sent}) == 1
        assert [r.cseq[0] for r in sent] == list(range(1, len(sent) + 1))
