"""Access control: API keys and signed tokens with scopes on WHIP, WHEP, the API and
dial-out; loopback-only without credentials; secrets kept out of logs and the API."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest
from sip_phone import Phone

from gateway.config import ConfigError, load
from gateway.webrtc.client import Listener, Publisher, ToneTrack

ADMIN = "admin-key-0123456789abcdef"
LISTENER = "listen-key-0123456789abcdef"
SECRET = "jwt-secret-0123456789abcdef0123456789"
AUTH = {
    "keys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
             {"name": "radio", "key": LISTENER, "scopes": ["listen:*"]}],
    "jwt_secret": SECRET,
}


def token(scope: str, expires_in: float = 60.0, secret: str = SECRET) -> str:
    claims = {"sub": "studio", "scope": scope, "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, secret, algorithm="HS256")


async def call(gw, method: str, path: str, tok: str | None = None, **kwargs):
    headers = kwargs.pop("headers", {})
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gw.url + path, headers=headers, **kwargs) as r:
            body = await r.text()
            return r.status, r.headers, body


OFFER = {"data": "v=0\r\n", "headers": {"Content-Type": "application/sdp"}}


async def test_without_a_token_everything_but_pages_and_health_is_401(gateway_factory):
    gw = await gateway_factory(auth=AUTH)
    for method, path, kwargs in [
        ("POST", "/whip/studio", OFFER),
        ("POST", "/whep/studio", OFFER),
        ("POST", "/api/v1/streams/studio/outputs", {"json": {"type": "rtp", "host": "127.0.0.1",
                                                            "port": 4000}}),
        ("POST", "/api/v1/streams/studio/outputs", {"json": {"type": "sip",
                                                            "uri": "sip:a@127.0.0.1"}}),
        ("GET", "/api/v1/streams", {}),
        ("GET", "/api/v1/recordings", {}),
        ("DELETE", "/api/v1/sessions/x", {}),
    ]:
        status, headers, body = await call(gw, method, path, **kwargs)
        assert status == 401, (method, path, body)
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert headers["Content-Type"].startswith("application/problem+json")
    for path in ("/", "/listen", "/healthz", "/static/style.css"):
        assert (await call(gw, "GET", path))[0] == 200, path


async def test_a_listen_token_listens_but_cannot_publish_or_dial(gateway_factory):
    gw = await gateway_factory(auth=AUTH)
    pub = Publisher(gw.url, "studio", ToneTrack(440))
    await pub.negotiate(token=token("publish:studio"))
    await pub.connected()
    lis = Listener(gw.url, "studio")
    await lis.negotiate(token=LISTENER)
    await lis.connected()
    status, _, body = await call(gw, "POST", "/whip/other", LISTENER, **OFFER)
    assert status == 403 and "publish:other" in body
    status, _, _ = await call(gw, "POST", "/api/v1/streams/studio/outputs", LISTENER,
                              json={"type": "sip", "uri": "sip:a@127.0.0.1"})
    assert status == 403
    status, _, _ = await call(gw, "GET", "/api/v1/streams/studio", LISTENER)
    assert status == 200
    # a publish token for one stream cannot publish another
    status, _, _ = await call(gw, "POST", "/whip/else", token("publish:studio"), **OFFER)
    assert status == 403
    # admin may do anything, including recording
    status, _, body = await call(gw, "POST", "/api/v1/streams/studio/outputs", ADMIN,
                                 json={"type": "recording"})
    assert status == 201, body
    # SSE feeds take ?token= (EventSource cannot send headers); the API does not
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/api/v1/streams/studio/levels?token={LISTENER}") as r:
            assert r.status == 200
        async with http.get(f"{gw.url}/api/v1/streams/studio?token={LISTENER}") as r:
            assert r.status == 401
    assert await lis.delete() == 200
    assert await pub.delete() == 200


@pytest.mark.parametrize("bad", [
    token("admin", expires_in=-10),  # expired
    token("admin")[:-3] + "AAA",  # tampered signature
    token("admin", secret="another-secret-0123456789abcdef01234"),  # forged
    "not-a-key-0123456789",
    # signed, but a scope that is not a string or a list of strings (an object's keys
    # once read as scopes: {"admin": 1} was admin; 5 and null were a 500)
    token({"admin": 1}),
    token(5),
    token(None),
    token(["listen:*", 7]),
])
async def test_expired_tampered_and_unknown_tokens_are_401(gateway_factory, bad):
    gw = await gateway_factory(auth=AUTH)
    status, headers, body = await call(gw, "GET", "/api/v1/stats", bad)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"], body


async def test_secrets_stay_out_of_logs_and_the_api(gateway_factory, caplog):
    gw = await gateway_factory(auth=AUTH, sip={"port": 0, "users": {"alice": "sip-pass-xyz"},
                                               "credentials": [{"user": "gw",
                                                                "password": "trunk-pass-xyz"}]})
    await call(gw, "GET", "/api/v1/stats", "wrong-key-0123456789")
    await call(gw, "GET", "/api/v1/stats", token("admin", expires_in=-5))
    texts = [caplog.text, repr(gw.gateway.config)]
    for path in ("/api/v1/sip", "/api/v1/stats", "/api/v1/streams"):
        texts.append((await call(gw, "GET", path, ADMIN))[2])
    for secret in (ADMIN, LISTENER, SECRET, "sip-pass-xyz", "trunk-pass-xyz"):
        assert not any(secret in t for t in texts), secret


def test_no_credentials_means_loopback_only_unless_insecure():
    with pytest.raises(ConfigError, match="refusing to serve HTTP on 0.0.0.0"):
        load(None, {"http": {"host": "0.0.0.0"}})
    assert load(None, {"http": {"host": "0.0.0.0", "allow_insecure": True}})
    assert load(None, {"http": {"host": "0.0.0.0"}, "auth": AUTH, "sip": {"enabled": False}})
    with pytest.raises(ConfigError, match="refusing to serve SIP on 0.0.0.0"):
        load(None, {"http": {"host": "0.0.0.0"}, "auth": AUTH, "sip": {"bind_host": "0.0.0.0"}})
    assert load(None, {"auth": AUTH, "sip": {"bind_host": "0.0.0.0",
                                             "allow_from": ["10.0.0.0/8"]}})
    with pytest.raises(ConfigError, match="auth.keys"):
        load(None, {"auth": {"keys": [{"key": "short", "scopes": ["admin"]}]}})
    with pytest.raises(ConfigError, match="bad scope"):
        load(None, {"auth": {"keys": [{"key": ADMIN, "scopes": ["root"]}]}})


async def test_sip_sources_outside_allow_from_are_dropped(gateway_factory):
    gw = await gateway_factory(sip={"port": 0, "allow_from": ["10.0.0.0/8"]},
                               streams={"declared": ["room"]})
    phone = Phone(gw.gateway.sip.port)
    await phone.send(phone.request("OPTIONS", "room"))
    with pytest.raises(TimeoutError):
        await phone.receive(0.5)
    assert gw.gateway.sip.endpoint.counters.forbidden == 1
    await phone.close()


async def test_a_session_is_ended_only_by_its_creator_or_an_admin(gateway_factory):
    gw = await gateway_factory(auth=AUTH)
    pub = Publisher(gw.url, "studio", ToneTrack(440))
    await pub.negotiate(token=token("publish:studio"))
    await pub.connected()
    lis = Listener(gw.url, "studio")
    await lis.negotiate(token=LISTENER)
    other = Listener(gw.url, "studio")
    await other.negotiate(token=token("listen:studio"))
    pub_id, lis_id, other_id = (c.location.rsplit("/", 1)[1] for c in (pub, lis, other))
    stream = gw.gateway.registry.streams["studio"]

    # a listen token sees only its own session id: the others' are capabilities
    status, _, body = await call(gw, "GET", "/api/v1/sessions", LISTENER)
    assert status == 200 and lis_id in body
    assert pub_id not in body and other_id not in body
    status, _, body = await call(gw, "GET", "/api/v1/streams/studio", LISTENER)
    assert status == 200 and pub_id not in body and other_id not in body
    status, _, body = await call(gw, "GET", "/api/v1/streams", LISTENER)
    assert status == 200 and pub_id not in body
    # ... and cannot end the publisher through WHEP, nor another listener
    assert (await call(gw, "DELETE", f"/whep/studio/{pub_id}", LISTENER))[0] == 404
    assert (await call(gw, "DELETE", f"/whep/studio/{other_id}", LISTENER))[0] == 403
    # a publish token of someone else cannot end the publisher either
    intruder = jwt.encode({"sub": "intruder", "scope": "publish:*",
                           "exp": int(time.time() + 60)}, SECRET, algorithm="HS256")
    status, _, body = await call(gw, "DELETE", f"/whip/studio/{pub_id}", intruder)
    assert status == 403, body
    assert (await call(gw, "DELETE", f"/whip/studio/{lis_id}", ADMIN))[0] == 404  # not a sender
    assert stream.source is gw.gateway.sessions[pub_id]
    assert {lis_id, other_id} <= set(gw.gateway.sessions)

    # the admin sees every id and may end any session; creators end their own
    status, _, body = await call(gw, "GET", "/api/v1/sessions", ADMIN)
    assert all(i in body for i in (pub_id, lis_id, other_id))
    assert (await call(gw, "DELETE", f"/whep/studio/{other_id}", ADMIN))[0] == 200
    assert await lis.delete() == 200
    assert await pub.delete() == 200
    assert stream.source is None
    await other.pc.close()


async def test_without_access_control_anyone_ends_any_session(gateway):
    pub = Publisher(gateway.url, "studio", ToneTrack(440))
    await pub.negotiate()
    pub_id = pub.location.rsplit("/", 1)[1]
    status, _, body = await call(gateway, "GET", "/api/v1/sessions")
    assert status == 200 and pub_id in body
    assert (await call(gateway, "DELETE", f"/whip/studio/{pub_id}"))[0] == 200
    await pub.pc.close()
