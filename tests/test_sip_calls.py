"""SIP calls against the running gateway, with a scripted phone on real loopback sockets.

What a caller hears is checked by frequency; hold, codec changes, DTMF, vanished phones,
limits and malformed input are the cases third-party phones cannot be scripted into.
"""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
from audio_checks import assert_tone, dominant_frequency, rms_dbfs
from sip_phone import Phone, decode, sdp_port, tone_ulaw
from test_rtp_output import api, publish_tone

from gateway.codecs.g711 import ulaw_encode
from gateway.sip.dtmf import encode_event_packets
from gateway.webrtc.client import Listener


async def start(gateway_factory, **sip):
    return await gateway_factory(sip={"port": 0, **sip}, streams={"declared": ["room", "quiet"]})


async def test_dial_in_hears_the_stream_and_bye_ends_the_call(gateway_factory):
    gw = await start(gateway_factory)
    pub = await publish_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port)
    response = await phone.invite("room")
    assert response.status == 200 and b"PCMU/8000" in response.body
    packets = await phone.collect_rtp(2.0)
    assert 80 <= len(packets) <= 110, len(packets)  # 50 packets/s of 20 ms
    assert_tone(decode(packets)[4000:], 440, rate=8000, min_seconds=1.0)
    status, outputs = await api(gw, "GET", "/api/v1/streams/room/outputs")
    [call] = [o for o in outputs["outputs"] if o["type"] == "sip"]
    assert call["state"] == "active" and call["codec"] == "PCMU" and call["direction"] == "in"
    bye = await phone.bye("room")
    assert bye.status == 200
    await asyncio.sleep(0.2)
    assert gw.gateway.sip.calls == {}
    phone.drain_rtp()
    assert await phone.collect_rtp(0.5) == []
    await pub.delete()
    phone.close()


async def test_unknown_stream_is_404_and_a_stream_without_sender_connects(gateway_factory):
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    assert (await phone.invite("nosuchstream")).status == 404
    phone2 = Phone(gw.gateway.sip.port)
    assert (await phone2.invite("quiet")).status == 200
    silence = decode(await phone2.collect_rtp(1.0))
    assert len(silence) > 4000 and rms_dbfs(silence) < -60  # silence, not nothing
    pub = await publish_tone(gw, "quiet", 660)
    await asyncio.sleep(0.5)
    phone2.drain_rtp()
    assert_tone(decode(await phone2.collect_rtp(1.5)), 660, rate=8000, min_seconds=1.0)
    await pub.delete()
    phone.close()
    phone2.close()


async def test_hold_resume_and_codec_change_by_reinvite(gateway_factory):
    gw = await start(gateway_factory)
    pub = await publish_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port)
    assert (await phone.invite("room", formats="0 101")).status == 200
    assert len(await phone.collect_rtp(0.5)) > 15
    held = await phone.reinvite("room", formats="0 101", direction="sendonly")
    assert held.status == 200 and b"a=recvonly" in held.body
    await asyncio.sleep(0.1)
    phone.drain_rtp()
    assert await phone.collect_rtp(0.6) == []  # on hold: nothing sent
    resumed = await phone.reinvite("room", formats="8 101")
    assert resumed.status == 200 and b"PCMA/8000" in resumed.body
    packets = await phone.collect_rtp(1.5)
    assert packets and {p[0] for p in packets} == {8}
    assert_tone(decode(packets, pt=8), 440, rate=8000, min_seconds=1.0)
    await pub.delete()
    phone.close()


async def test_rtp_timeout_ends_a_vanished_phone_but_not_a_silent_stream(gateway_factory):
    gw = await start(gateway_factory, rtp_timeout_s=2.0)
    talker = Phone(gw.gateway.sip.port, "talker")
    vanished = Phone(gw.gateway.sip.port, "vanished")
    answer = await talker.invite("quiet")  # a stream nobody publishes: silence only
    assert (await vanished.invite("quiet")).status == 200
    gateway_rtp = ("127.0.0.1", sdp_port(answer))
    silence = [ulaw_encode(np.zeros(160, np.int16))] * 200
    sender = asyncio.create_task(talker.send_rtp(gateway_rtp, silence))
    bye = await vanished.expect_request("BYE", timeout=6.0)
    assert bye.call_id == vanished.call_id
    assert len(gw.gateway.sip.calls) == 1  # the phone that still sends RTP stays
    [left] = gw.gateway.sip.calls.values()
    assert left.peer.startswith("sip:talker@")
    assert gw.gateway.sip.stats["rtp_timeouts"] == 1
    sender.cancel()
    talker.close()
    vanished.close()


async def test_dtmf_star_number_hash_switches_the_caller_to_another_stream(gateway_factory):
    gw = await start(gateway_factory, dtmf_streams={"2": "quiet"})
    a = await publish_tone(gw, "room", 440)
    b = await publish_tone(gw, "quiet", 880)
    phone = Phone(gw.gateway.sip.port)
    answer = await phone.invite("room")
    assert_tone(decode(await phone.collect_rtp(1.0)), 440, rate=8000, min_seconds=0.8)
    dest = ("127.0.0.1", sdp_port(answer))
    timestamp = 1000
    for digit in "*2#":
        packets = encode_event_packets(digit)
        for i, (marker, _duration, payload) in enumerate(packets):
            await phone.send_rtp(dest, [payload], pt=101, timestamp=timestamp, seq=10 * timestamp
                                 + i, marker_first=marker)
        timestamp += 2000
    await asyncio.sleep(0.3)
    phone.drain_rtp()
    heard = decode(await phone.collect_rtp(1.0))
    assert abs(dominant_frequency(heard, 8000) - 880) < 20
    [call] = gw.gateway.sip.calls.values()
    assert call.stream.name == "quiet" and [d["digit"] for d in call.digits] == list("*2#")
    await a.delete()
    await b.delete()
    phone.close()


async def test_two_way_route_publishes_the_callers_audio(gateway_factory):
    gw = await start(gateway_factory, routes=[{"match": "talk-(.+)", "listen": r"\1",
                                               "publish": r"phone-\1"}])
    listener = Listener(gw.url, "phone-room", ["PCMU"])
    phone = Phone(gw.gateway.sip.port)
    answer = await phone.invite("talk-room")
    assert answer.status == 200
    await listener.negotiate()
    await listener.connected()
    await phone.send_rtp(("127.0.0.1", sdp_port(answer)), tone_ulaw(660, 3.0))
    heard = listener.audio()
    assert_tone(heard[len(heard) // 3 :], 660, rate=listener.sample_rate, min_seconds=1.0)
    [call] = gw.gateway.sip.calls.values()
    assert call.publish_to is not None and call.publish_to.name == "phone-room"
    await listener.delete()
    phone.close()


async def test_limits_calls_size_rate_and_malformed_input(gateway_factory):
    gw = await start(gateway_factory, max_calls=1, max_message_bytes=4000,
                     rate_limit_per_s=5, rate_limit_burst=10)
    pub = await publish_tone(gw, "room", 440)
    first = Phone(gw.gateway.sip.port)
    assert (await first.invite("room")).status == 200
    second = Phone(gw.gateway.sip.port)
    refused = await second.invite("room")
    assert refused.status == 503 and refused.headers.get("Retry-After")
    big = Phone(gw.gateway.sip.port)
    await big.send(big.request("OPTIONS", "room", extra=f"X-Pad: {'a' * 5000}\r\n"))
    assert (await big.final()).status == 413
    bad = Phone(gw.gateway.sip.port)
    await bad.send(b"OPTIONS sip:room@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch="
                   b"z9hG4bKx\r\nCSeq: banana\r\n\r\n")
    await bad.send(b"\x00\xffgarbage" * 10)
    flood = Phone(gw.gateway.sip.port)
    for _ in range(40):
        await flood.send(flood.request("OPTIONS", "room"))
    answered = 0
    try:
        while True:
            await flood.receive(0.5)
            answered += 1
    except TimeoutError:
        pass
    assert 1 <= answered < 40  # every phone here shares 127.0.0.1, hence one bucket
    info = gw.gateway.sip.info()
    assert info["rate_limited"] >= 40 - answered and info["messages_malformed"] >= 2
    first.drain_rtp()
    assert_tone(decode(await first.collect_rtp(1.0)), 440, rate=8000, min_seconds=0.8)
    await pub.delete()
    for p in (first, second, big, bad, flood):
        p.close()


async def test_options_over_tcp_and_replies_follow_rport(gateway_factory):
    gw = await start(gateway_factory)
    port = gw.gateway.sip.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    local = writer.get_extra_info("sockname")[1]
    writer.write(
        f"OPTIONS sip:room@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{local};branch=z9hG4bKtcp1\r\n"
        "From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:room@127.0.0.1>\r\nCall-ID: tcp1\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"SIP/2.0 200") and b"Allow: INVITE" in head
    writer.close()
    # A phone behind NAT writes a private address it cannot be reached at; rport fixes it.
    phone = Phone(port)
    await phone.send(phone.request("OPTIONS", "room", via_host="10.9.9.9"))
    reply = await phone.final()
    via = reply.top_via
    assert reply.status == 200
    assert via.params["received"] == "127.0.0.1" and via.params["rport"] == str(phone.port)
    phone.close()


def tcp_options(port: int, local: int, n: int) -> bytes:
    return (
        f"OPTIONS sip:room@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{local};branch=z9hG4bKidle{n}\r\n"
        f"From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:room@127.0.0.1>\r\nCall-ID: idle{n}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode()
    )


async def test_tcp_clients_that_say_nothing_or_dribble_are_closed_but_idle_dialogs_stay(
    gateway_factory,
):
    """Silent and slow connections would hold the connection cap; a connection that has
    carried a message stays open while idle (a call's BYE may come over it later)."""
    gw = await start(gateway_factory, tcp_message_timeout_s=0.5, max_tcp_connections=3)
    port = gw.gateway.sip.port

    async def connect():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return reader, writer, writer.get_extra_info("sockname")[1]

    silent_r, silent_w, _ = await connect()
    dribble_r, dribble_w, dribble_port = await connect()
    talker_r, talker_w, talker_port = await connect()
    talker_w.write(tcp_options(port, talker_port, 1))
    assert (await asyncio.wait_for(talker_r.readuntil(b"\r\n\r\n"), 3)).startswith(b"SIP/2.0 200")
    # the cap is full: a fourth connection is closed at once
    extra_r, extra_w, _ = await connect()
    assert await asyncio.wait_for(extra_r.read(), 2) == b""
    extra_w.close()
    # a message trickling in, a piece every 0.1 s: closed 0.5 s after its first byte
    message = tcp_options(port, dribble_port, 2)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        for i in range(0, len(message), 4):
            dribble_w.write(message[i : i + 4])
            await dribble_w.drain()
            await asyncio.sleep(0.1)
    assert 0.4 <= time.monotonic() - started <= 2.0  # not reset by each piece (6 s of them)
    assert await asyncio.wait_for(silent_r.read(), 2) == b""  # closed by the gateway
    await asyncio.sleep(1.0)  # the talker is now idle for twice the timeout: still open
    talker_w.write(tcp_options(port, talker_port, 3))
    assert (await asyncio.wait_for(talker_r.readuntil(b"\r\n\r\n"), 3)).startswith(b"SIP/2.0 200")
    info = gw.gateway.sip.info()
    assert info["tcp_connections_timed_out"] == 2, info
    assert info["tcp_connections_refused"] == 1, info
    assert info["tcp_connections"] == 1, info
    for w in (silent_w, dribble_w, talker_w):
        w.close()


async def test_media_latches_to_where_the_phones_rtp_comes_from(gateway_factory):
    gw = await start(gateway_factory)
    pub = await publish_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port)
    nat = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the NAT's outside port
    nat.bind(("127.0.0.1", 0))
    nat.setblocking(False)
    answer = await phone.invite("room")  # SDP names phone.rtp_port; RTP comes from `nat`
    loop = asyncio.get_running_loop()
    for i in range(5):
        header = bytes([0x80, 0]) + i.to_bytes(2, "big") + (160 * i).to_bytes(4, "big") + b"abcd"
        await loop.sock_sendto(nat, header + bytes(160), ("127.0.0.1", sdp_port(answer)))
    await asyncio.sleep(0.2)
    got = 0
    try:
        async with asyncio.timeout(0.5):
            while True:
                await loop.sock_recv(nat, 2048)
                got += 1
    except TimeoutError:
        pass
    assert got >= 15
    await pub.delete()
    nat.close()
    phone.close()


@pytest.mark.parametrize("body", [
    "v=0\r\nm=video 9 RTP/AVP 96\r\n",  # no audio
    "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 18\r\n",  # G.729 only
    "garbage",
])
async def test_unusable_offers_get_488_and_leave_nothing_behind(gateway_factory, body):
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    await phone.send(phone.request("INVITE", "room", body))
    response = await phone.final()
    assert response.status == 488
    await phone.send(phone.request("ACK", "room", cseq=1))
    assert gw.gateway.sip.calls == {} and gw.gateway.sip.ports.in_use == set()
    phone.close()


async def test_wideband_codecs_when_the_phone_offers_them(gateway_factory):
    from gateway.codecs.spec import G722, OPUS
    from gateway.codecs.transcode import make_decoder

    gw = await start(gateway_factory)
    pub = await publish_tone(gw, "room", 440)
    for formats, spec, rtpmap in (("0 9 101", G722, b"G722/8000"),
                                  ("0 111", OPUS, b"opus/48000/2")):
        phone = Phone(gw.gateway.sip.port)
        answer = await phone.invite("room", formats=formats)
        assert answer.status == 200 and rtpmap in answer.body, answer.body
        packets = sorted(await phone.collect_rtp(1.5), key=lambda p: p[1])
        decoder = make_decoder(spec)
        pcm = np.concatenate([decoder.decode(p[3]) for p in packets if p[0] == spec.payload_type])
        assert_tone(pcm[9600:], 440, min_seconds=1.0)  # decoded at 48 kHz
        await phone.bye("room")
        phone.close()
    await pub.delete()


async def test_calls_on_one_stream_and_codec_share_one_encoder(gateway_factory):
    gw = await start(gateway_factory)
    pub = await publish_tone(gw, "room", 440)
    phones = [Phone(gw.gateway.sip.port, f"p{i}") for i in range(6)]
    for phone in phones:
        assert (await phone.invite("room", formats="0")).status == 200
    status, stream = await api(gw, "GET", "/api/v1/streams/room")
    pcmu = [e for e in stream["encoders"] if e["codec"] == "PCMU"]
    assert len(pcmu) == 1, stream["encoders"]  # six calls, one encoder
    assert stream["listeners_by_kind"]["sip"] == 6
    for phone in phones:
        assert_tone(decode(await phone.collect_rtp(0.6)), 440, rate=8000, min_seconds=0.5)
        phone.close()
    await pub.delete()


async def test_advertised_address_is_what_sdp_and_contact_say(gateway_factory):
    gw = await start(gateway_factory, advertised_host="192.0.2.10")
    phone = Phone(gw.gateway.sip.port)
    answer = await phone.invite("quiet")
    assert answer.status == 200
    assert b"c=IN IP4 192.0.2.10" in answer.body
    assert answer.contact is not None and answer.contact.uri.host == "192.0.2.10"
    # bound to loopback all the same: the phone still gets its RTP (from 127.0.0.1)
    assert len(await phone.collect_rtp(0.5)) > 10
    phone.close()


async def test_sip_info_dtmf_is_received(gateway_factory):
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    assert (await phone.invite("quiet")).status == 200
    body = "Signal=5\r\nDuration=160\r\n"
    await phone.send(phone.request("INFO", "quiet", body, in_dialog=True).replace(
        b"application/sdp", b"application/dtmf-relay"))
    assert (await phone.final()).status == 200
    [call] = gw.gateway.sip.calls.values()
    assert [d["digit"] for d in call.digits] == ["5"]
    phone.close()


async def test_offerless_reinvite_gets_the_current_sdp_and_keeps_the_call(gateway_factory):
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    first = await phone.invite("quiet")
    await phone.send(phone.request("INVITE", "quiet", in_dialog=True))
    refresh = await phone.final()
    assert refresh.status == 200 and refresh.body == first.body
    await phone.ack("quiet", refresh)
    assert len(gw.gateway.sip.calls) == 1 and len(await phone.collect_rtp(0.5)) > 10
    phone.close()
