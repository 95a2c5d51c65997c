"""baresip, a real SIP phone, against the gateway: it dials in and records what it hears,
talks into a two-way route, is called by the gateway, and registers with digest auth."""

from __future__ import annotations

import asyncio
import random

import pytest
from audio_checks import assert_tone
from conftest import need_program
from peers.baresip import Baresip, read_wav, write_tone_wav
from test_rtp_output import api, publish_tone

from gateway.web.self_signed import make_self_signed
from gateway.webrtc.client import Listener


def rtp_range() -> tuple[int, int]:
    """Ports for baresip's RTP, outside the gateway's call range (20000-29999)."""
    low = random.randrange(30000, 39000, 20)
    return (low, low + 19)


def phone(tmp_path, name: str, freq: float, **kwargs) -> Baresip:
    wav = write_tone_wav(tmp_path / f"{name}.wav", freq, 40)
    return Baresip(tmp_path / name, rtp_ports=rtp_range(), audio_source=wav, user=name,
                   **kwargs)


def tls_files(tmp_path):  # type: ignore[no-untyped-def]
    """A certificate for 127.0.0.1, its key, and both in one file (baresip's own)."""
    cert, key = make_self_signed(tmp_path / "tls", ["127.0.0.1"])
    both = tmp_path / "tls" / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    return cert, key, both


def recorded_audio(bs: Baresip):
    files = bs.recorded()
    assert files, f"baresip recorded nothing\n{bs.log}"
    samples, rate = read_wav(files[0])
    return samples, rate


async def test_baresip_dials_a_stream_and_records_its_tone(gateway_factory, tmp_path):
    need_program("baresip")
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    pub = await publish_tone(gw, "room", 440)
    async with phone(tmp_path, "caller", 1000) as bs:
        call = await bs.dial(f"sip:room@127.0.0.1:{gw.gateway.sip.port}", seconds=4)
    assert call.established and not call.closed_by_peer, call.describe()
    samples, rate = recorded_audio(bs)
    assert rate == 8000
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=3.0)
    await asyncio.sleep(0.3)
    assert gw.gateway.sip.calls == {}  # baresip's BYE ended the call
    await pub.delete()


async def test_baresip_talks_through_a_two_way_route_to_a_whep_listener(gateway_factory,
                                                                        tmp_path):
    need_program("baresip")
    gw = await gateway_factory(
        sip={"port": 0, "routes": [{"match": "talk-(.+)", "listen": r"\1",
                                    "publish": r"phone-\1"}]},
        streams={"declared": ["room"]},
    )
    pub = await publish_tone(gw, "room", 440)  # what the phone hears
    listener = Listener(gw.url, "phone-room")
    await listener.negotiate()
    await listener.connected()
    async with phone(tmp_path, "talker", 660) as bs:
        call = await bs.dial(f"sip:talk-room@127.0.0.1:{gw.gateway.sip.port}", seconds=4)
    assert call.established, call.describe()
    heard = listener.audio()
    rate = listener.sample_rate
    assert_tone(heard[-3 * rate :], 660, rate=rate, min_seconds=2.5)  # browser hears the phone
    samples, phone_rate = recorded_audio(bs)
    assert_tone(samples[phone_rate // 2 :], 440, rate=phone_rate, min_seconds=3.0)  # and back
    await listener.delete()
    await pub.delete()


async def test_dial_out_to_baresip_plays_the_stream_and_delete_sends_bye(gateway_factory,
                                                                          tmp_path):
    need_program("baresip")
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    pub = await publish_tone(gw, "room", 440)
    async with phone(tmp_path, "callee", 1000) as bs:
        await bs.serve(seconds=30)
        status, call = await api(gw, "POST", "/api/v1/streams/room/outputs",
                                 {"type": "sip", "uri": f"sip:callee@127.0.0.1:{bs.sip_port}"})
        assert status == 201, call
        await bs.wait_event("CALL_ESTABLISHED", timeout=10)
        await asyncio.sleep(4)
        status, _ = await api(gw, "DELETE", f"/api/v1/streams/room/outputs/{call['id']}")
        assert status == 204
        closed = await bs.wait_event("CALL_CLOSED", timeout=5)
        assert "peer" in closed.param or "BYE" in closed.param.upper(), closed.param
    samples, rate = recorded_audio(bs)
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=3.0)
    await pub.delete()


async def test_phones_register_with_digest_call_through_and_are_called_by_name(gateway_factory,
                                                                                tmp_path):
    need_program("baresip")
    gw = await gateway_factory(
        sip={"port": 0, "users": {"alice": "wonder1and", "bob": "bu1lder"}, "auth_calls": True},
        streams={"declared": ["room"]},
    )
    port = gw.gateway.sip.port
    pub = await publish_tone(gw, "room", 440)
    registrar = f"127.0.0.1:{port}"
    async with phone(tmp_path, "bob", 1000, registrar=registrar, auth_pass="bu1lder",
                     answer=True) as bob:
        await bob.start(seconds=40)
        await bob.register()
        assert gw.gateway.sip.registrar.lookup("bob", gw.gateway.sip.endpoint.now())
        async with phone(tmp_path, "alice", 1000, registrar=registrar,
                         auth_pass="wonder1and") as alice:
            call = await alice.register_and_dial(f"sip:room@127.0.0.1:{port}", seconds=4)
        assert call.established, call.describe()
        samples, rate = recorded_audio(alice)
        assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=3.0)
        # the gateway calls bob by his registered name
        status, out = await api(gw, "POST", "/api/v1/streams/room/outputs",
                                {"type": "sip", "uri": "bob"})
        assert status == 201, out
        await bob.wait_event("CALL_ESTABLISHED", timeout=10)
        await asyncio.sleep(3)
        await api(gw, "DELETE", f"/api/v1/streams/room/outputs/{out['id']}")
        await bob.wait_event("CALL_CLOSED", timeout=5)
    samples, rate = recorded_audio(bob)
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=2.0)
    # a wrong password is refused: no call
    async with phone(tmp_path, "mallory", 1000, registrar=registrar, auth_user="alice",
                     auth_pass="guess") as mallory:
        with pytest.raises(AssertionError, match="registration failed"):
            await mallory.register(timeout=8)
        assert "401 Unauthorized" in mallory.log
    await pub.delete()


async def test_baresip_dials_over_tls_and_records_the_tone(gateway_factory, tmp_path):
    """SIP over TLS with a real phone that verifies the gateway's certificate."""
    need_program("baresip")
    cert, key, both = tls_files(tmp_path)
    gw = await gateway_factory(sip={"port": 0, "tls_port": 0, "tls_cert": str(cert),
                                    "tls_key": str(key)}, streams={"declared": ["room"]})
    endpoint = gw.gateway.sip.endpoint
    pub = await publish_tone(gw, "room", 440)
    async with phone(tmp_path, "secure", 1000,
                     extra_config=[f"sip_cafile {cert}", f"sip_certificate {both}"]) as bs:
        dialing = asyncio.create_task(
            bs.dial(f"sip:room@127.0.0.1:{endpoint.tls_port};transport=tls", seconds=4))
        for _ in range(100):  # while the call is up, its connection is a TLS one
            if gw.gateway.sip.calls:
                break
            await asyncio.sleep(0.1)
        calls = list(gw.gateway.sip.calls.values())
        assert calls and calls[0].flow is not None and calls[0].flow[0] == "TLS", calls
        assert [key[0] for key in endpoint._connections] == ["TLS"]
        call = await dialing
    assert call.established and not call.closed_by_peer, call.describe()
    samples, rate = recorded_audio(bs)
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=3.0)
    await asyncio.sleep(0.3)
    assert gw.gateway.sip.calls == {}  # baresip's BYE (over TLS) ended the call
    await pub.delete()


async def test_baresip_over_tls_with_mandatory_srtp_both_ways(gateway_factory, tmp_path):
    """TLS signalling, SRTP media (SDES) both ways: the phone hears the stream and a WHEP
    listener hears the phone; the gateway's own packets and reports are SRTP and the
    phone's authenticate."""
    need_program("baresip")
    cert, key, both = tls_files(tmp_path)
    gw = await gateway_factory(
        sip={"port": 0, "tls_port": 0, "tls_cert": str(cert), "tls_key": str(key),
             "srtp": "required",
             "routes": [{"match": "talk-(.+)", "listen": r"\1", "publish": r"phone-\1"}]},
        streams={"declared": ["room"]})
    endpoint = gw.gateway.sip.endpoint
    pub = await publish_tone(gw, "room", 440)
    listener = Listener(gw.url, "phone-room")
    await listener.negotiate()
    await listener.connected()
    async with phone(tmp_path, "srtp", 660, account_params=["mediaenc=srtp-mand"],
                     extra_config=[f"sip_cafile {cert}", f"sip_certificate {both}",
                                   "module srtp.so"]) as bs:
        dialing = asyncio.create_task(
            bs.dial(f"sip:talk-room@127.0.0.1:{endpoint.tls_port};transport=tls", seconds=4))
        for _ in range(100):
            if gw.gateway.sip.calls:
                break
            await asyncio.sleep(0.1)
        calls = list(gw.gateway.sip.calls.values())
        assert calls, bs.log
        media = calls[0].media
        call = await dialing
    assert call.established, call.describe()
    assert media.srtp is not None and media.srtp.suite.startswith("AES_CM_128_HMAC_SHA1")
    assert media.packets > 100 and media.srtp_failed == 0
    heard = listener.audio()
    rate = listener.sample_rate
    assert_tone(heard[-3 * rate :], 660, rate=rate, min_seconds=2.5)  # the phone, decrypted
    samples, phone_rate = recorded_audio(bs)
    assert_tone(samples[phone_rate // 2 :], 440, rate=phone_rate, min_seconds=3.0)
    await listener.delete()
    await pub.delete()


async def test_dial_out_to_baresip_over_tls_with_srtp(gateway_factory, tmp_path):
    """The gateway calls a phone over TLS (verifying its certificate) and offers SRTP,
    as ``sip.srtp = "required"`` asks: the phone hears the stream through SRTP."""
    need_program("baresip")
    cert, key, both = tls_files(tmp_path)
    gw = await gateway_factory(
        sip={"port": 0, "tls_port": 0, "tls_cert": str(cert), "tls_key": str(key),
             "tls_ca": str(cert), "srtp": "required"},
        streams={"declared": ["room"]})
    pub = await publish_tone(gw, "room", 440)
    async with phone(tmp_path, "callee", 1000, answer=True,
                     account_params=["mediaenc=srtp-mand"],
                     extra_config=[f"sip_cafile {cert}", f"sip_certificate {both}",
                                   "module srtp.so"]) as bs:
        await bs.serve(seconds=30)
        status, call = await api(gw, "POST", "/api/v1/streams/room/outputs", {
            # baresip listens for TLS one port above its UDP/TCP port
            "type": "sip", "uri": f"sip:callee@127.0.0.1:{bs.sip_port + 1};transport=tls"})
        assert status == 201, call
        await bs.wait_event("CALL_ESTABLISHED", timeout=10)
        media = gw.gateway.sip.calls[call["id"]].media
        assert media.srtp is not None
        await asyncio.sleep(4)
        status, _ = await api(gw, "DELETE", f"/api/v1/streams/room/outputs/{call['id']}")
        assert status == 204
        await bs.wait_event("CALL_CLOSED", timeout=5)
    samples, rate = recorded_audio(bs)
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=3.0)
    await pub.delete()


async def test_a_phone_registered_over_tls_is_called_by_name_over_its_connection(
        gateway_factory, tmp_path):
    """Dialling a registered user goes back over the TLS connection the phone registered
    on (RFC 5626 §5.3), not UDP to that connection's port: the phone hears the stream."""
    need_program("baresip")
    cert, key, both = tls_files(tmp_path)
    gw = await gateway_factory(
        sip={"port": 0, "tls_port": 0, "tls_cert": str(cert), "tls_key": str(key),
             "users": {"bob": "bu1lder"}},
        streams={"declared": ["room"]})
    endpoint = gw.gateway.sip.endpoint
    pub = await publish_tone(gw, "room", 440)
    async with phone(tmp_path, "bob", 1000, answer=True, auth_pass="bu1lder",
                     registrar=f"127.0.0.1:{endpoint.tls_port};transport=tls",
                     extra_config=[f"sip_cafile {cert}", f"sip_certificate {both}"]) as bob:
        await bob.start(seconds=40)
        await bob.register()
        [binding] = gw.gateway.sip.registrar.lookup("bob", endpoint.now())
        assert binding.transport == "TLS"
        status, out = await api(gw, "POST", "/api/v1/streams/room/outputs",
                                {"type": "sip", "uri": "bob"})
        assert status == 201, out
        await bob.wait_event("CALL_ESTABLISHED", timeout=10)
        call = gw.gateway.sip.calls[out["id"]]
        assert call.flow is not None and call.flow[:3] == ("TLS", *binding.source)
        assert [k for k in endpoint._connections if k[0] == "TLS"] == [
            ("TLS", *binding.source)]  # no second connection
        await asyncio.sleep(3)
        await api(gw, "DELETE", f"/api/v1/streams/room/outputs/{out['id']}")
        await bob.wait_event("CALL_CLOSED", timeout=5)
    samples, rate = recorded_audio(bob)
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=2.0)
    await pub.delete()
