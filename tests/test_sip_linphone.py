"""linphone, a real SIP phone, calls a stream: it negotiates Opus, hears the stream's tone,
and its STUN keepalives on the call's RTP and RTCP ports count as STUN, not malformed RTP."""

from __future__ import annotations

from audio_checks import assert_tone
from conftest import need_program
from peers.baresip import read_wav, write_tone_wav
from peers.linphone import Linphone
from test_rtp_output import api, publish_tone


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
