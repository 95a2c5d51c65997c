"""The gateway as a registrar (gateway.sip.registrar): digest, expiry, bindings, RFC 3261 §10.3."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.digest import Challenge, answer_challenge, parse_challenge
from gateway.sip.message import Headers, Request, Response, SipParseError, Uri, parse_message
from gateway.sip.registrar import Binding, Registrar, parse_delta, same_uri

REALM = "gw.example"
SECRET = b"0123456789abcdef-registrar"
SRC = ("198.51.100.7", 40123)


def make_registrar(**kwargs) -> Registrar:
    users = kwargs.pop("users", {"alice": "wonderland", "bob": "builder"})
    kwargs.setdefault("algorithms", ("SHA-256", "MD5"))  # both, so both are exercised
    return Registrar(REALM, users, SECRET, **kwargs)


def test_default_challenge_is_md5_alone() -> None:
    """baresip 1.0 fails on a second WWW-Authenticate header, whatever its order."""
    registrar = Registrar(REALM, {"alice": "x"}, SECRET)
    assert [c.algorithm for c in registrar.digest.challenges(0.0)] == ["MD5"]


def register(
    user: str = "alice",
    contacts: tuple[str, ...] = ("<sip:alice@10.0.0.5:5060>",),
    expires: int | str | None = None,
    call_id: str = "call-1",
    cseq: int = 1,
    authorization: str | None = None,
    uri: str = f"sip:{REALM}",
) -> Request:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc")
    headers.add("Max-Forwards", "70")
    headers.add("To", f"<sip:{user}@{REALM}>")
    headers.add("From", f"<sip:{user}@{REALM}>;tag=ft")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} REGISTER")
    for contact in contacts:
        headers.add("Contact", contact)
    if expires is not None:
        headers.add("Expires", str(expires))
    if authorization is not None:
        headers.add("Authorization", authorization)
    return Request("REGISTER", Uri.parse(uri), headers)


class Phone:
    """A client that answers challenges like a phone: it reuses the last nonce (nonce count
    rising) and answers a 401 once; every request takes the next CSeq."""

    def __init__(self, reg: Registrar, user: str = "alice", password: str = "wonderland",
                 auth_user: str | None = None, call_id: str = "call-1") -> None:
        self.reg, self.user, self.password = reg, user, password
        self.auth_user = auth_user or user
        self.call_id = call_id
        self.cseq = 0
        self.challenge: Challenge | None = None
        self.nc = 0

    def send(self, now: float, source=SRC, transport: str = "UDP", **kwargs) -> Response:
        """REGISTER, answer a 401 once, and return the final response."""
        response = self.reg.handle(self._request(**kwargs), source, now, transport)
        if response.status != 401:
            return response
        self.challenge = parse_challenge(response.headers.get_all("WWW-Authenticate")[0])
        self.nc = 0
        return self.reg.handle(self._request(**kwargs), source, now, transport)

    def _request(self, **kwargs) -> Request:
        self.cseq += 1
        kwargs.setdefault("call_id", self.call_id)
        if self.challenge is not None:
            self.nc += 1
            kwargs["authorization"] = str(answer_challenge(
                self.challenge, "REGISTER", f"sip:{REALM}", self.auth_user, self.password,
                nc=self.nc))
        return register(self.user, cseq=self.cseq, **kwargs)


def contact_expires(response: Response) -> dict[str, int]:
    out = {}
    for value in response.headers.get_all("Contact"):
        uri, _, params = value.partition(">;expires=")
        out[uri.lstrip("<")] = int(params)
    return out


def test_digest_round_trip_and_binding() -> None:
    reg = make_registrar()
    request = register(expires=120)
    challenge = reg.handle(request, SRC, 0.0)
    assert challenge.status == 401
    values = challenge.headers.get_all("WWW-Authenticate")
    assert [parse_challenge(v).algorithm for v in values] == ["SHA-256", "MD5"]
    assert not any(parse_challenge(v).stale for v in values)
    assert challenge.to.tag  # RFC 3261 §8.2.6.2
    assert reg.bindings_count == 0
    for nc, value in enumerate(values, 1):  # either algorithm is accepted
        credentials = answer_challenge(parse_challenge(value), "REGISTER", f"sip:{REALM}",
                                       "alice", "wonderland", nc=nc)
        request = register(expires=120, cseq=nc + 1, authorization=str(credentials))
        ok = reg.handle(request, SRC, 1.0)
        assert ok.status == 200, ok
        assert contact_expires(ok) == {"sip:alice@10.0.0.5:5060": 120}
        assert ok.call_id == "call-1" and ok.cseq == (nc + 1, "REGISTER")
        assert parse_message(bytes(ok)).status == 200
    [binding] = reg.lookup("alice", 2.0)
    assert binding == Binding(Uri.parse("sip:alice@10.0.0.5:5060"), SRC, 121.0, "call-1", 3, 1.0)
    assert reg.lookup("bob", 2.0) == []


def test_wrong_password_and_unknown_user_get_the_same_401() -> None:
    reg = make_registrar()
    wrong = Phone(reg, password="nope").send(0.0)
    unknown = Phone(reg, user="mallory", password="x").send(0.0)
    for response in (wrong, unknown):
        assert response.status == 401
        assert len(response.headers.get_all("WWW-Authenticate")) == 2
        assert not parse_challenge(response.headers.get("WWW-Authenticate")).stale
    assert reg.bindings_count == 0


def test_garbage_or_foreign_realm_credentials_are_challenged() -> None:
    reg = make_registrar()
    for auth in ("Digest", "Basic YWxpY2U6eA==", 'Digest username="alice", realm="other", '
                 'nonce="n", uri="sip:gw.example", response="00"'):
        assert reg.handle(register(authorization=auth), SRC, 0.0).status == 401


def test_stale_nonce_gets_stale_true_only_with_the_right_password() -> None:
    reg = make_registrar()
    first = reg.handle(register(), SRC, 0.0)
    challenge = parse_challenge(first.headers.get("WWW-Authenticate"))
    late = 1000.0  # past the nonce lifetime
    good = answer_challenge(challenge, "REGISTER", f"sip:{REALM}", "alice", "wonderland")
    response = reg.handle(register(cseq=2, authorization=str(good)), SRC, late)
    assert response.status == 401
    assert all(parse_challenge(v).stale for v in response.headers.get_all("WWW-Authenticate"))
    bad = answer_challenge(challenge, "REGISTER", f"sip:{REALM}", "alice", "wrong")
    response = reg.handle(register(cseq=3, authorization=str(bad)), SRC, late)
    assert not parse_challenge(response.headers.get("WWW-Authenticate")).stale


def test_credentials_for_another_request_uri_are_refused() -> None:
    reg = make_registrar()
    challenge = parse_challenge(reg.handle(register(), SRC, 0.0).headers.get("WWW-Authenticate"))
    credentials = answer_challenge(challenge, "REGISTER", "sip:elsewhere.example", "alice",
                                   "wonderland")
    assert reg.handle(register(cseq=2, authorization=str(credentials)), SRC, 0.0).status == 401


def test_digest_uri_may_carry_parameters_the_request_uri_lacks(caplog) -> None:
    """pyVoIP 1.6 answers for ``sip:host;transport=UDP`` while sending ``REGISTER sip:host``."""
    caplog.set_level("INFO", logger="gateway.sip.registrar")
    for digest_uri, status in ((f"sip:{REALM};transport=UDP", 200),
                               (f"sip:{REALM.upper()};lr;transport=udp", 200),
                               (f"sip:{REALM}:5060;transport=UDP", 401),  # port differs
                               (f"sip:alice@{REALM};transport=UDP", 401)):  # user differs
        reg = make_registrar()
        first = reg.handle(register(uri=f"sip:{REALM};transport=udp"), SRC, 0.0)
        challenge = parse_challenge(first.headers.get("WWW-Authenticate"))
        credentials = answer_challenge(challenge, "REGISTER", digest_uri, "alice", "wonderland")
        request = register(cseq=2, authorization=str(credentials))
        assert reg.handle(request, SRC, 0.0).status == status, digest_uri
    assert "uri does not match the Request-URI" in caplog.text
    assert "wonderland" not in caplog.text and credentials.response not in caplog.text


def test_every_refused_digest_is_logged_with_its_reason(caplog) -> None:
    caplog.set_level("INFO", logger="gateway.sip.registrar")
    reg = make_registrar()
    reg.handle(register(), SRC, 0.0)
    assert "refused" not in caplog.text  # the first, unauthenticated REGISTER is normal
    challenge = parse_challenge(reg.handle(register(), SRC, 0.0).headers.get("WWW-Authenticate"))
    wrong = answer_challenge(challenge, "REGISTER", f"sip:{REALM}", "alice", "looking-glass")
    assert reg.handle(register(cseq=2, authorization=str(wrong)), SRC, 0.0).status == 401
    assert "user 'alice'" in caplog.text and "bad response" in caplog.text
    assert "looking-glass" not in caplog.text and wrong.response not in caplog.text
    reg.handle(register(cseq=3, authorization='Digest username="alice", realm="other", '
                        'nonce="n", uri="sip:x", response="00"'), SRC, 0.0)
    assert "another realm 'other'" in caplog.text
    reg.handle(register(cseq=4, authorization="Digest nonsense"), SRC, 0.0)
    assert "unreadable Authorization" in caplog.text
    reg.handle(register(cseq=5, authorization="Basic YWxpY2U6d29uZGVybGFuZA=="), SRC, 0.0)
    assert "Authorization is not Digest" in caplog.text and "YWxp" not in caplog.text


def test_registering_someone_elses_aor_is_forbidden() -> None:
    reg = make_registrar()
    response = Phone(reg, user="bob", auth_user="alice", password="wonderland").send(0.0)
    assert response.status == 403
    assert reg.bindings_count == 0


def test_check_auth_for_an_invite() -> None:
    reg = make_registrar()
    invite = register()
    invite.method = "INVITE"
    invite.headers.set("CSeq", "1 INVITE")
    user, response = reg.check_auth(invite, 0.0)
    assert user is None and response is not None and response.status == 401
    challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
    credentials = answer_challenge(challenge, "INVITE", f"sip:{REALM}", "bob", "builder")
    invite.headers.add("Authorization", str(credentials))
    assert reg.check_auth(invite, 1.0) == ("bob", None)
    # Computed for REGISTER, the same credentials do not authenticate an INVITE.
    credentials = answer_challenge(challenge, "REGISTER", f"sip:{REALM}", "bob", "builder")
    invite.headers.set("Authorization", str(credentials))
    assert reg.check_auth(invite, 1.0)[0] is None


def test_non_register_is_a_caller_bug() -> None:
    reg = make_registrar()
    request = register()
    request.method = "OPTIONS"
    with pytest.raises(ValueError):
        reg.handle(request, SRC, 0.0)


def test_expires_header_contact_param_and_defaults() -> None:
    reg = make_registrar(default_expires=1800, max_expires=3000)
    phone = Phone(reg)
    response = phone.send(0.0, contacts=("<sip:a@10.0.0.1>;expires=100", "<sip:b@10.0.0.1>",
                                         "sip:c@10.0.0.1;expires=99999"), expires=200)
    assert response.status == 200
    # The param wins over the header; the header applies to the rest; the max caps.
    assert contact_expires(response) == {
        "sip:a@10.0.0.1": 100, "sip:b@10.0.0.1": 200, "sip:c@10.0.0.1": 3000,
    }
    response = phone.send(10.0, contacts=("<sip:d@10.0.0.1>",))
    assert contact_expires(response)["sip:d@10.0.0.1"] == 1800  # the default
    assert contact_expires(response)["sip:a@10.0.0.1"] == 90  # counted down
    assert reg.bindings_count == 4


def test_too_brief_gets_423_with_min_expires() -> None:
    reg = make_registrar(min_expires=120)
    phone = Phone(reg)
    for kwargs in ({"expires": 30}, {"contacts": ("<sip:a@10.0.0.1>;expires=119",)}):
        response = phone.send(0.0, **kwargs)
        assert response.status == 423
        assert response.headers.get("Min-Expires") == "120"
    assert reg.bindings_count == 0
    # A default below the minimum is raised to it rather than earning a 423.
    reg = make_registrar(min_expires=120, default_expires=60)
    assert contact_expires(Phone(reg).send(0.0)) == {"sip:alice@10.0.0.5:5060": 120}


def test_expires_zero_removes_one_and_star_removes_all() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    phone.send(0.0, contacts=("<sip:a@10.0.0.1>", "<sip:b@10.0.0.1>", "<sip:c@10.0.0.1>"))
    # The user part is case-sensitive: removing "B" (never bound) changes nothing.
    response = phone.send(1.0, contacts=("<sip:B@10.0.0.1>;expires=0",
                                         "<sip:b@10.0.0.1>;expires=0"))
    assert response.status == 200
    assert set(contact_expires(response)) == {"sip:a@10.0.0.1", "sip:c@10.0.0.1"}
    # A query (no Contact) lists the bindings and changes nothing.
    response = phone.send(2.0, contacts=())
    assert set(contact_expires(response)) == {"sip:a@10.0.0.1", "sip:c@10.0.0.1"}
    # "*" needs Expires: 0 and no other contact.
    assert phone.send(3.0, contacts=("*",)).status == 400
    assert phone.send(3.0, contacts=("*",), expires=60).status == 400
    assert phone.send(3.0, contacts=("*", "<sip:a@10.0.0.1>"), expires=0).status == 400
    response = phone.send(4.0, contacts=("*",), expires=0)
    assert response.status == 200 and response.headers.get_all("Contact") == []
    assert reg.lookup("alice", 4.0) == [] and reg.bindings_count == 0


def test_bad_expires_values_are_400() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    assert phone.send(0.0, expires="soon").status == 400
    assert phone.send(0.0, contacts=("<sip:a@10.0.0.1>;expires=-5",)).status == 400
    assert phone.send(0.0, contacts=("<sip:a@10.0.0.1>;expires",)).status == 400
    assert reg.bindings_count == 0


def test_bindings_expire_by_the_clock() -> None:
    reg = make_registrar(min_expires=60)
    phone = Phone(reg)
    phone.send(0.0, contacts=("<sip:a@10.0.0.1>;expires=60", "<sip:b@10.0.0.1>;expires=120"))
    assert [b.contact.user for b in reg.lookup("alice", 59.9)] == ["a", "b"]
    assert [b.contact.user for b in reg.lookup("alice", 60.0)] == ["b"]
    assert reg.bindings_count == 1  # the lookup dropped it
    assert reg.expire(119.0) == 0
    assert reg.expire(120.0) == 1
    assert reg.bindings_count == 0


def test_lookup_is_most_recent_first_and_keeps_the_source() -> None:
    reg = make_registrar()
    desk = Phone(reg, call_id="desk")
    desk.send(0.0, contacts=("<sip:alice@192.168.1.2>",), source=("203.0.113.1", 5060))
    Phone(reg, call_id="mobile").send(5.0, contacts=("<sip:alice@10.9.9.9:5070>",),
                                      source=("203.0.113.2", 61000))
    found = reg.lookup("alice", 6.0)
    assert [(str(b.contact), b.source, b.call_id) for b in found] == [
        ("sip:alice@10.9.9.9:5070", ("203.0.113.2", 61000), "mobile"),
        ("sip:alice@192.168.1.2", ("203.0.113.1", 5060), "desk"),
    ]
    # A refresh of the older one moves it to the front and updates where it came from.
    desk.send(7.0, contacts=("<sip:alice@192.168.1.2>",), source=("203.0.113.1", 5999))
    found = reg.lookup("alice", 8.0)
    assert [b.call_id for b in found] == ["desk", "mobile"]
    assert found[0].source == ("203.0.113.1", 5999)
    # ... and over which transport: requests to it go back over that TLS connection
    assert found[0].transport == "UDP"
    desk.send(9.0, contacts=("<sip:alice@192.168.1.2;transport=tls>",),
              source=("203.0.113.1", 40000), transport="TLS")
    assert reg.lookup("alice", 9.5)[0].transport == "TLS"


def test_connections_of_live_tcp_and_tls_bindings_are_in_use() -> None:
    reg = make_registrar(min_expires=60)
    Phone(reg, call_id="udp").send(0.0, contacts=("<sip:alice@10.0.0.1>;expires=60",))
    Phone(reg, call_id="tcp").send(0.0, contacts=("<sip:alice@10.0.0.2>;expires=60",),
                                   source=("203.0.113.1", 40000), transport="TCP")
    Phone(reg, call_id="tls").send(0.0, contacts=("<sip:alice@10.0.0.3>;expires=120",),
                                   source=("203.0.113.2", 40001), transport="TLS")
    assert reg.stream_sources(59.0) == {("TCP", "203.0.113.1", 40000),
                                        ("TLS", "203.0.113.2", 40001)}
    assert reg.stream_sources(60.0) == {("TLS", "203.0.113.2", 40001)}  # expired: free


def test_cseq_ordering_within_a_call_id() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    phone.send(0.0, expires=600)  # CSeq 1 (401), 2 (200)
    [binding] = reg.lookup("alice", 1.0)
    assert binding.cseq == 2
    # A replayed older request (same Call-ID, lower or equal CSeq) fails and changes nothing.
    for cseq in (1, 2):
        phone.cseq = cseq - 1  # the next request takes this CSeq
        response = phone.send(10.0, expires=0)
        assert response.status == 500, cseq
        assert response.headers.get("CSeq") == f"{cseq} REGISTER"
    assert reg.lookup("alice", 11.0) == [binding]
    phone.cseq = 0
    response = phone.send(10.0, contacts=("*",), expires=0)
    assert response.status == 500
    assert reg.lookup("alice", 11.0) == [binding]
    # A higher CSeq, or any CSeq with another Call-ID (the phone rebooted), wins.
    other = Phone(reg, call_id="after-reboot")
    assert other.send(20.0, expires=0).status == 200
    assert reg.lookup("alice", 21.0) == []
    phone.cseq = 10
    assert phone.send(30.0).status == 200
    assert [b.cseq for b in reg.lookup("alice", 31.0)] == [11]


def test_the_same_contact_twice_in_one_register_is_not_out_of_order() -> None:
    reg = make_registrar()
    response = Phone(reg).send(0.0, contacts=("<sip:a@10.0.0.1>;expires=100",
                                              "<sip:a@10.0.0.1>;expires=200"))
    assert response.status == 200
    assert contact_expires(response) == {"sip:a@10.0.0.1": 200}


def test_bindings_are_bounded_oldest_refresh_dropped() -> None:
    reg = make_registrar(max_bindings_per_user=3)
    for i in range(10):
        response = Phone(reg, call_id=f"c{i}").send(float(i), contacts=(f"<sip:a@10.0.0.{i}>",))
        assert response.status == 200
        assert reg.bindings_count <= 3
    assert [b.contact.host for b in reg.lookup("alice", 10.0)] == [
        "10.0.0.9", "10.0.0.8", "10.0.0.7",
    ]
    # One request with more contacts than allowed is refused as a whole.
    contacts = tuple(f"<sip:b@10.0.1.{i}>" for i in range(4))
    assert Phone(reg, call_id="many").send(20.0, contacts=contacts).status == 403
    assert reg.bindings_count == 3


def test_atomic_update_when_one_contact_fails() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    phone.send(0.0, contacts=("<sip:a@10.0.0.1>",))
    response = phone.send(1.0, contacts=("<sip:a@10.0.0.1>;expires=0",
                                         "<sip:b@10.0.0.1>;expires=5"))
    assert response.status == 423
    assert [b.contact.user for b in reg.lookup("alice", 2.0)] == ["a"]


def test_malformed_requests_get_400() -> None:
    reg = make_registrar()
    request = register()
    request.headers.set("CSeq", "1 INVITE")
    assert reg.handle(request, SRC, 0.0).status == 400
    request = register(contacts=("<sip:broken",))
    assert reg.handle(request, SRC, 0.0).status == 400
    request = register()
    request.headers.set("To", "<not a uri")
    assert reg.handle(request, SRC, 0.0).status == 400
    request.headers.remove("Call-ID")
    with pytest.raises(SipParseError):  # nothing to match a response to
        reg.handle(request, SRC, 0.0)


def test_uri_comparison_and_delta_parsing() -> None:
    assert same_uri(Uri.parse("sip:a@HOST.example;transport=UDP"),
                    Uri.parse("SIP:a@host.example;transport=udp"))
    assert not same_uri(Uri.parse("sip:A@h"), Uri.parse("sip:a@h"))
    assert not same_uri(Uri.parse("sip:a@h"), Uri.parse("sip:a@h:5060"))
    assert not same_uri(Uri.parse("sip:a@h;transport=tcp"), Uri.parse("sip:a@h"))
    assert same_uri(Uri.parse("sip:a@h;ob"), Uri.parse("sip:a@h"))
    assert parse_delta("7 (maintenance);duration=60") == 7
    assert parse_delta("99999999999999") == 2**32 - 1
    assert parse_delta("x") is None and parse_delta(None) is None and parse_delta("-1") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["alice", "bob", "mallory"]),
    st.lists(st.sampled_from(["<sip:a@10.0.0.1>", "<sip:b@10.0.0.1>;expires=0",
                              "<sip:c@10.0.0.1>;expires=30", "<sip:d@10.0.0.1>;expires=900",
                              "*", "<sip:e@[2001:db8::1]:5062>"]), max_size=4),
    st.one_of(st.none(), st.sampled_from([0, 1, 60, 3600, 10**12, "x"])),
    st.integers(1, 5), st.floats(0, 500),
), max_size=12))
def test_random_registers_never_raise_and_stay_bounded(steps) -> None:
    reg = make_registrar(max_bindings_per_user=2)
    now = 0.0
    for user, contacts, expires, cseq, step in steps:
        now += step
        phone = Phone(reg, user=user, password={"alice": "wonderland"}.get(user, "builder"))
        phone.cseq = cseq - 1
        response = phone.send(now, contacts=tuple(contacts), expires=expires)
        assert response.status in (200, 400, 401, 403, 423, 500)
        assert reg.bindings_count <= 4
        for binding in reg.lookup("alice", now) + reg.lookup("bob", now):
            assert now < binding.expires_at <= now + 3600
