"""Sans-IO Digest authentication: RFC test vectors, header syntax, client and server."""

import hashlib
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.sip.digest import (
    Challenge,
    Credentials,
    DigestError,
    DigestServer,
    answer_challenge,
    compute_response,
    ha1,
    parse_challenge,
    parse_credentials,
    pick_challenge,
)

# RFC 2617 §3.5
RFC2617_CHALLENGE = """Digest
                 realm="testrealm@host.com",
                 qop="auth,auth-int",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\""""
RFC2617_AUTHORIZATION = """Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\""""

# RFC 7616 §3.9.1
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"

SECRET = b"0123456789abcdef0123456789abcdef"
URI = "sip:room@127.0.0.1"
USERS = {"alice": "s3cret", "bob": "hunter2"}


def test_rfc2617_example():
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int") and challenge.algorithm == "MD5"
    creds = answer_challenge(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b"
    )
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert (creds.qop, creds.nc, creds.opaque) == ("auth", "00000001", challenge.opaque)
    sent = parse_credentials(RFC2617_AUTHORIZATION)
    assert compute_response(sent, "GET", "Circle Of Life") == sent.response
    assert parse_credentials(str(creds)) == replace(sent, algorithm="MD5")


@pytest.mark.parametrize(
    "algorithm, response",
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm, response):
    header = (
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    challenge = parse_challenge(header)
    creds = answer_challenge(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC7616_CNONCE
    )
    assert creds.response == response and creds.algorithm == algorithm
    assert compute_response(creds, "GET", "Circle of Life") == response


def test_sess_and_rfc2069_responses_match_the_formulas():
    def h(name, text):
        return hashlib.new(name, text.encode()).hexdigest()

    for algorithm, name in (("MD5-sess", "md5"), ("SHA-256-sess", "sha256")):
        ch = Challenge("r", "n", algorithm=algorithm, qop=("auth",))
        creds = answer_challenge(ch, "REGISTER", "sip:x", "u", "p", cnonce="c", nc=2)
        a1 = h(name, f"{h(name, 'u:r:p')}:n:c")
        assert creds.response == h(name, f"{a1}:n:00000002:c:auth:{h(name, 'REGISTER:sip:x')}")
    old = answer_challenge(Challenge("r", "n"), "INVITE", "sip:x", "u", "p")
    assert (old.qop, old.nc, old.cnonce) == (None, None, None)
    assert old.response == h("md5", f"{h('md5', 'u:r:p')}:n:{h('md5', 'INVITE:sip:x')}")
    assert "qop" not in str(old) and "nc=" not in str(old)


def test_parsing_is_lenient_where_the_grammar_allows():
    ch = parse_challenge(
        '  dIgEsT\tREALM = "a \\"quoted\\", realm\\\\",,  Nonce=abc/+=,'
        ' qop="auth" ,stale=true, ALGORITHM=sha-256, opaque="",domain="sip:x" ,'
    )
    assert ch == Challenge(
        realm='a "quoted", realm\\',
        nonce="abc/+=",
        algorithm="SHA-256",
        qop=("auth",),
        opaque="",
        stale=True,
    )
    assert not parse_challenge('Digest realm="r", nonce="n", stale=FALSE').stale
    quoted_alg = parse_challenge('Digest realm="r", nonce="n", algorithm="md5-SESS"')
    assert quoted_alg.algorithm == "MD5-sess"
    creds = parse_credentials(
        'Digest username="bob",realm="r",nonce="n",uri="sip:a@b;transport=udp",'
        "response=0123abcd,qop=AUTH,nc=0000000a,cnonce=xyz,algorithm=MD5"
    )
    assert (creds.qop, creds.nc, creds.cnonce, creds.uri) == (
        "auth",
        "0000000a",
        "xyz",
        "sip:a@b;transport=udp",
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        'Basic realm="r"',
        'Digestrealm="r", nonce="n"',
        'Digest, realm="r", nonce="n"',
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce="n", realm="s"',
        'Digest realm="r, nonce="n"',
        'Digest realm="r" nonce="n"',
        'Digest realm="r", nonce=',
        'Digest realm="r", nonce="n", stale',
        'Digest realm="r", nonce="n", Basic realm="x"',
        'Digest realm="r", nonce="n\\',
        'Digest realm="a\rb", nonce="n"',
        'Digest realm="r", nonce="n", algorithm="not a token"',
        'Digest realm="r", nonce="n", qop="auth;x"',
        "Digest " + "x" * 9000,
    ],
)
def test_bad_challenges_raise_digest_error(value):
    with pytest.raises(DigestError):
        parse_challenge(value)


@pytest.mark.parametrize(
    "missing_or_bad",
    [
        'username="u", realm="r", nonce="n", uri="sip:x"',
        'username="u", realm="r", nonce="n", response="x"',
        'realm="r", nonce="n", uri="sip:x", response="x"',
        'username="u", realm="r", nonce="n", uri="sip:x", response="x", qop=auth, nc=00000001',
        'username="u", realm="r", nonce="n", uri="sip:x", response="x", qop=auth, cnonce="c"',
        'username="u", realm="r", nonce="n", uri="sip:x", response="x", qop=auth, cnonce="c", nc=1',
        'username="u", realm="r", nonce="n", uri="sip:x", response="x", algorithm=MD5-sess',
    ],
)
def test_bad_credentials_raise_digest_error(missing_or_bad):
    with pytest.raises(DigestError):
        parse_credentials("Digest " + missing_or_bad)


def test_writing_quotes_only_what_must_be_quoted():
    ch = Challenge(
        'r"\\', "n", algorithm="SHA-256", qop=("auth", "auth-int"), opaque="o", stale=True
    )
    assert str(ch) == (
        'Digest realm="r\\"\\\\", nonce="n", opaque="o", stale=TRUE, algorithm=SHA-256, '
        'qop="auth,auth-int"'
    )
    creds = Credentials("u", "r", "n", "sip:x", "abc", "MD5", "c", "00000001", "auth", "o")
    assert creds.to_header() == (
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="abc", '
        'algorithm=MD5, cnonce="c", opaque="o", qop=auth, nc=00000001'
    )


def test_values_that_would_inject_header_lines_are_refused():
    with pytest.raises(DigestError):
        Credentials("u\r\nVia: evil", "r", "n", "sip:x", "abc")
    with pytest.raises(DigestError):
        answer_challenge(Challenge("r", "n", qop=("auth",)), "INVITE", "sip:x", "u", "p", "c\n")
    with pytest.raises(DigestError):
        Challenge("r", "n", qop="auth")  # a string, not a tuple of options


def test_client_refuses_what_it_cannot_answer():
    with pytest.raises(DigestError, match="auth-int"):
        answer_challenge(Challenge("r", "n", qop=("auth-int",)), "INVITE", URI, "u", "p")
    with pytest.raises(DigestError, match="unsupported algorithm"):
        answer_challenge(Challenge("r", "n", algorithm="SHA-512-256"), "INVITE", URI, "u", "p")
    with pytest.raises(DigestError):
        answer_challenge(Challenge("r", "n", algorithm="MD5-sess"), "INVITE", URI, "u", "p")
    with pytest.raises(DigestError):
        answer_challenge(Challenge("r", "n", qop=("auth",)), "INVITE", URI, "u", "p", nc=0)
    a, b = (
        answer_challenge(Challenge("r", "n", qop=("auth",)), "INVITE", URI, "u", "p") for _ in "ab"
    )
    assert a.cnonce != b.cnonce and len(a.cnonce) == 32


def test_pick_challenge_takes_the_first_usable():
    offered = [
        Challenge("r", "n", algorithm="SHA-512-256", qop=("auth",)),
        Challenge("r", "n", algorithm="SHA-256", qop=("auth-int",)),
        Challenge("r", "n", algorithm="MD5", qop=("auth",)),
    ]
    assert pick_challenge(offered) is offered[2]
    with pytest.raises(DigestError, match="SHA-512-256"):
        pick_challenge(offered[:2])


# --- server ------------------------------------------------------------------------------


def sip_login(server, now, username="alice", password="s3cret", index=0, **kw):
    """What a phone does: read the challenge header, answer with an INVITE's credentials."""
    header = str(server.challenges(now)[index])
    creds = answer_challenge(parse_challenge(header), "INVITE", URI, username, password, **kw)
    return parse_credentials(str(creds))


def test_server_round_trip_over_sip():
    server = DigestServer("gateway", SECRET)
    challenges = server.challenges(1000.0)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.realm == "gateway" for c in challenges)
    for index in (0, 1):
        creds = sip_login(server, 1000.0, index=index)
        result = server.verify(creds, "INVITE", USERS.get, 1010.0, uri=URI)
        assert result and result.username == "alice" and not result.stale


def test_server_rejections():
    server = DigestServer("gateway", SECRET, nonce_lifetime=60)
    good = sip_login(server, 0.0)

    def check(creds, now=1.0, method="INVITE", **kw):
        return server.verify(creds, method, USERS.get, now, **kw)

    assert check(sip_login(server, 0.0, password="wrong")).reason == "bad response"
    assert check(good, method="BYE").reason == "bad response"
    assert check(sip_login(server, 0.0, username="carol")).reason == "unknown user"
    stale = check(good, now=61.0)
    assert (stale.ok, stale.reason, stale.stale) == (False, "stale nonce", True)
    expired_and_wrong = check(sip_login(server, 0.0, password="wrong"), now=61.0)
    assert (expired_and_wrong.reason, expired_and_wrong.stale) == ("bad response", False)
    assert check(good, now=-5.0).stale  # the clock went back: ask for a fresh nonce

    flipped = good.nonce[:5] + ("A" if good.nonce[5] != "A" else "B") + good.nonce[6:]
    for nonce in (flipped, good.nonce[:-1], "dcd98b7102dd2f0e8b11d0f600bfb0c093", "é" * 43):
        assert check(replace(good, nonce=nonce)).reason == "foreign nonce"
    other_secret = DigestServer("gateway", b"another secret, 16+ bytes")
    assert check(sip_login(other_secret, 0.0)).reason == "foreign nonce"
    other_realm = DigestServer("elsewhere", SECRET)
    assert check(sip_login(other_realm, 0.0)).reason == "wrong realm"
    assert check(replace(sip_login(other_realm, 0.0), realm="gateway")).reason == "foreign nonce"

    assert check(good, uri="sip:other@127.0.0.1").reason == "uri mismatch"
    assert check(replace(good, qop="auth-int")).reason == "unsupported qop"
    md5_only = DigestServer("gateway", SECRET, algorithms=("MD5",))
    assert not md5_only.verify(good, "INVITE", USERS.get, 1.0)  # good is SHA-256
    assert md5_only.verify(good, "INVITE", USERS.get, 1.0).reason == "unsupported algorithm"
    assert check(replace(good, response=good.response.upper()))  # hex case does not matter
    assert check(replace(good, response="ü" * 64)).reason == "bad response"
    assert str(server.challenges(61.0, stale=True)[0]).count("stale=TRUE") == 1


def test_nonce_counts_cannot_be_replayed_but_may_arrive_out_of_order():
    server = DigestServer("gateway", SECRET)
    ch = server.challenges(0.0)[0]

    def send(nc):
        creds = answer_challenge(ch, "INVITE", URI, "alice", "s3cret", cnonce="c", nc=nc)
        return server.verify(creds, "INVITE", USERS.get, 1.0)

    assert send(1) and send(3) and send(2)
    replay = send(2)
    assert (replay.ok, replay.reason, replay.stale) == (False, "replayed nonce count", True)
    assert send(100) and not send(30) and send(99)
    assert not send(100)


def test_replay_memory_is_bounded():
    server = DigestServer("gateway", SECRET, replay_window=8)
    for i in range(50):
        assert server.verify(sip_login(server, float(i)), "INVITE", USERS.get, 50.0)
    assert len(server._seen) == 8
    off = DigestServer("gateway", SECRET, replay_window=0)
    creds = sip_login(off, 0.0)
    assert off.verify(creds, "INVITE", USERS.get, 1.0) and off.verify(
        creds, "INVITE", USERS.get, 1.0
    )


def test_rfc2069_clients_and_stored_ha1():
    server = DigestServer("gateway", SECRET, algorithms=("MD5", "SHA-256-sess"))
    nonce = server.challenges(0.0)[0].nonce
    old_phone = answer_challenge(Challenge("gateway", nonce), "REGISTER", URI, "bob", "hunter2")
    assert server.verify(old_phone, "REGISTER", USERS.get, 1.0)
    strict = DigestServer("gateway", SECRET, algorithms=("MD5",), allow_rfc2069=False)
    assert strict.verify(old_phone, "REGISTER", USERS.get, 1.0).reason == "qop required"

    table = {(u, a): ha1(a, u, "gateway", p) for u, p in USERS.items() for a in ("MD5", "SHA-256")}

    def lookup(user, algorithm):
        return table.get((user, algorithm))

    for index in (0, 1):
        creds = sip_login(server, 0.0, username="bob", password="hunter2", index=index)
        assert server.verify(creds, "INVITE", None, 1.0, ha1_lookup=lookup)
    creds = sip_login(server, 0.0, username="carol", password="x")
    assert server.verify(creds, "INVITE", None, 1.0, ha1_lookup=lookup).reason == "unknown user"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": b"short"},
        {"algorithms": ()},
        {"algorithms": ("SHA-512",)},
        {"nonce_lifetime": 0},
        {"realm": "a\nb"},
    ],
)
def test_server_configuration_is_checked(kwargs):
    with pytest.raises(DigestError):
        DigestServer(**{"realm": "gateway", "secret": SECRET, **kwargs})


# --- properties --------------------------------------------------------------------------

NEAR_MISS = st.lists(
    st.sampled_from(
        [
            "Digest ",
            "digest",
            "Basic ",
            "realm",
            "nonce",
            "qop",
            "nc",
            "uri",
            "username",
            "response",
            "cnonce",
            "algorithm",
            "stale",
            "opaque",
            "=",
            ",",
            '"',
            "\\",
            " ",
            "\t",
            "\r\n",
            "auth",
            "MD5-sess",
            "SHA-256",
            "00000001",
            "é",
            "\x00",
            "x",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), NEAR_MISS))
@example(RFC2617_CHALLENGE)
@example(RFC2617_AUTHORIZATION)
def test_parsers_raise_only_digest_error(value):
    for parse in (parse_challenge, parse_credentials):
        try:
            parsed = parse(value)
        except DigestError:
            continue
        assert parse(str(parsed)) == parsed


TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    realm=TEXT,
    nonce=TEXT,
    opaque=st.none() | TEXT,
    algorithm=st.sampled_from(["MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "X-Custom"]),
    qop=st.lists(st.sampled_from(["auth", "auth-int", "token"]), unique=True).map(tuple),
    stale=st.booleans(),
    username=TEXT,
    uri=TEXT,
    cnonce=TEXT,
    nc=st.integers(1, 2**32 - 1),
)
def test_written_headers_parse_back_to_the_same_values(
    realm, nonce, opaque, algorithm, qop, stale, username, uri, cnonce, nc
):
    ch = Challenge(realm, nonce, algorithm, qop, opaque, stale)
    assert parse_challenge(ch.to_header()) == ch
    creds = Credentials(
        username, realm, nonce, uri, "ab" * 16, algorithm, cnonce, f"{nc:08x}", "auth", opaque
    )
    assert parse_credentials(creds.to_header()) == creds
