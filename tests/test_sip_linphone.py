"""linphone, a real SIP phone, calls a stream: it negotiates Opus, hears the stream's tone,
and its STUN keepalives on the call's RTP and RTCP ports count as STUN, not malformed RTP;
over TLS with SRTP it hears the stream and is heard, and without SRTP a gateway that
requires it answers 488."""

from __future__ import annotations

import re

from audio_checks import assert_tone
from conftest import need_program
from peers.baresip import read_wav, write_tone_wav
from peers.linphone import Linphone
from test_rtp_output import api, publish_tone

from gateway.web.self_signed import make_self_signed
from gateway.webrtc.client import Listener


async def test_linphone_calls_a_stream_over_opus_and_its_stun_keepalives_are_stun(
        gateway_factory, tmp_path):
    need_program("linphonec")
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    pub = await publish_tone(gw, "room", 440)
    phone = Linphone(tmp_path / "linphone",
                     play=write_tone_wav(tmp_path / "mic.wav", 660, 20, rate=48000))
    call = await phone.call(f"sip:room@127.0.0.1:{gw.gateway.sip.port}", seconds=4)
    assert call.connected and call.ended, call.describe()
    [ended] = gw.gateway.sip.ended
    status, info = await api(gw, "GET", f"/api/v1/streams/room/outputs/{ended.id}")
    assert status == 200 and info["state"] == "ended", info
    assert info["codec"] == "opus" and info["packets"] >= 150, info
    media = info["media"]
    assert media["remote"] == f"127.0.0.1:{phone.rtp_port}", media
    assert media["packets_in"] >= 150 and media["stun_in"] >= 2, media  # RTP and RTCP ports
    assert media["malformed_in"] == 0, media
    samples, rate = read_wav(call.recording)
    assert rate == 48000
    assert_tone(samples[rate:], 440, rate=rate, min_seconds=2.5)
    await pub.delete()


async def test_linphone_over_tls_with_mandatory_srtp_both_ways(gateway_factory, tmp_path):
    """A second real TLS+SRTP phone (after baresip): linphone verifies the gateway's
    certificate, offers SDES SRTP and refuses a call without it. It hears the stream
    through SRTP, and a WHEP listener hears the phone's 660 Hz that the gateway
    decrypted; no packet fails authentication either way."""
    need_program("linphonec")
    cert, key = make_self_signed(tmp_path / "tls", ["localhost", "127.0.0.1"])
    gw = await gateway_factory(
        sip={"port": 0, "tls_port": 0, "tls_cert": str(cert), "tls_key": str(key),
             "srtp": "required",
             "routes": [{"match": "talk-(.+)", "listen": r"\1", "publish": r"phone-\1"}]},
        streams={"declared": ["room"]})
    pub = await publish_tone(gw, "room", 440)
    listener = Listener(gw.url, "phone-room")
    await listener.negotiate()
    await listener.connected()
    phone = Linphone(tmp_path / "linphone", tls_ca=cert, srtp=True,
                     play=write_tone_wav(tmp_path / "mic.wav", 660, 20, rate=48000))
    tls_port = gw.gateway.sip.endpoint.tls_port
    call = await phone.call(f"sip:talk-room@localhost:{tls_port};transport=tls", seconds=4)
    assert call.connected and call.ended, call.describe()
    [ended] = gw.gateway.sip.ended
    media = ended.info().media
    assert media.srtp == "AES_CM_128_HMAC_SHA1_80", media
    assert media.packets_in >= 150 and media.srtp_failed == 0, media
    assert "SIP/2.0 200 OK" in call.log and "transport=TLS" in call.log
    samples, rate = read_wav(call.recording)
    assert_tone(samples[rate:], 440, rate=rate, min_seconds=2.5)  # the stream, decrypted
    heard = listener.audio()
    assert_tone(heard[-3 * listener.sample_rate:], 660, rate=listener.sample_rate,
                min_seconds=2.5)  # the phone, decrypted by the gateway
    await listener.delete()
    await pub.delete()


async def test_linphone_without_srtp_gets_488_from_a_gateway_that_requires_it(
        gateway_factory, tmp_path):
    need_program("linphonec")
    cert, key = make_self_signed(tmp_path / "tls", ["localhost", "127.0.0.1"])
    gw = await gateway_factory(
        sip={"port": 0, "tls_port": 0, "tls_cert": str(cert), "tls_key": str(key),
             "srtp": "required"}, streams={"declared": ["room"]})
    phone = Linphone(tmp_path / "linphone", tls_ca=cert)
    tls_port = gw.gateway.sip.endpoint.tls_port
    call = await phone.call(f"sip:room@localhost:{tls_port};transport=tls", seconds=1,
                            timeout=5)
    assert not call.connected, call.describe()
    assert re.search(r"SIP/2\.0 488 ", call.log), call.log[-3000:]
    assert gw.gateway.sip.calls == {} and not gw.gateway.sip.ended
