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
from conftest import free_port
from sip_phone import Phone, decode, heard, sdp_port, tone_ulaw
from stepping import RtpSink, send_tone, until
from test_fanout import l16, l16_listener
from test_rtp_output import api

from gateway.codecs.g711 import ulaw_encode
from gateway.sip.dtmf import encode_event_packets
from gateway.sip.endpoint import EndpointSettings, SipEndpoint


async def start(gateway_factory, stepped: bool = False, **sip):
    """A gateway with SIP; ``stepped``: on a stepped media clock (``phone.heard(gw, n)``)."""
    return await gateway_factory(stepped=stepped, sip={"port": 0, **sip},
                                 streams={"declared": ["room", "quiet"]})


def assert_in_sequence(packets: list[tuple[int, int, int, bytes]], samples: int = 160) -> None:
    """One packet per 20 ms frame: sequence numbers +1, timestamps +``samples`` (mod 2**n)."""
    seqs = [p[1] for p in packets]
    stamps = [p[2] for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))], seqs
    assert stamps == [(stamps[0] + samples * i) & 0xFFFFFFFF for i in range(len(stamps))], stamps


async def test_dial_in_hears_the_stream_and_bye_ends_the_call(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    send_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port)
    response = await phone.invite("room")
    assert response.status == 200 and b"PCMU/8000" in response.body
    packets = await phone.heard(gw, 100)
    assert len(packets) == 100  # a 20 ms packet per 20 ms frame
    assert_in_sequence(packets)
    assert_tone(decode(packets), 440, rate=8000, min_seconds=2.0)
    status, outputs = await api(gw, "GET", "/api/v1/streams/room/outputs")
    [call] = [o for o in outputs["outputs"] if o["type"] == "sip"]
    assert call["state"] == "active" and call["codec"] == "PCMU" and call["direction"] == "in"
    assert call["packets"] == 100
    bye = await phone.bye("room")
    assert bye.status == 200
    assert gw.gateway.sip.calls == {}
    assert await phone.heard(gw, 25) == []
    await phone.close()


async def test_unknown_stream_is_404_and_a_stream_without_sender_connects(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    phone = Phone(gw.gateway.sip.port)
    assert (await phone.invite("nosuchstream")).status == 404
    phone2 = Phone(gw.gateway.sip.port)
    assert (await phone2.invite("quiet")).status == 200
    silence = decode(await phone2.heard(gw, 50))
    assert len(silence) == 50 * 160 and rms_dbfs(silence) < -60  # silence, not nothing
    send_tone(gw, "quiet", 660)  # a sender arrives: the call hears it from the next frame
    assert_tone(decode(await phone2.heard(gw, 75)), 660, rate=8000, min_seconds=1.5)
    await phone.close()
    await phone2.close()


async def test_hold_resume_and_codec_change_by_reinvite(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    send_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port)
    assert (await phone.invite("room", formats="0 101")).status == 200
    assert len(await phone.heard(gw, 25)) == 25
    held = await phone.reinvite("room", formats="0 101", direction="sendonly")
    assert held.status == 200 and b"a=recvonly" in held.body
    assert await phone.heard(gw, 30) == []  # on hold: nothing sent
    resumed = await phone.reinvite("room", formats="8 101")
    assert resumed.status == 200 and b"PCMA/8000" in resumed.body
    packets = await phone.heard(gw, 75)
    assert len(packets) == 75 and {p[0] for p in packets} == {8}
    assert_tone(decode(packets, pt=8), 440, rate=8000, min_seconds=1.5)
    await phone.close()


@pytest.mark.parametrize("formats", ["0 101", "111"])
async def test_packets_sent_at_hang_up_are_the_packets_the_phone_received(gateway_factory,
                                                                          caplog, formats):
    """Across a re-INVITE (which replaces the call's RTP output), for PCMU and Opus: the
    hang-up log line and the API count what the phone got, not what it sent."""
    caplog.set_level("INFO", logger="gateway.sip.service")
    gw = await start(gateway_factory, stepped=True)
    send_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port)
    assert (await phone.invite("room", formats=formats)).status == 200
    received = await phone.heard(gw, 50)
    assert (await phone.reinvite("room", formats=formats)).status == 200
    received += await phone.heard(gw, 30)
    [call] = gw.gateway.sip.calls.values()
    assert (await phone.bye("room")).status == 200
    received += await phone.heard(gw, 15)
    assert len(received) == 80
    status, info = await api(gw, "GET", f"/api/v1/streams/room/outputs/{call.id}")
    assert status == 200 and info["state"] == "ended"
    assert info["packets"] == len(received)
    assert info["bytes"] == sum(len(p[3]) for p in received)
    assert f"{len(received)} packets sent, 0 received" in caplog.text, caplog.text
    await phone.close()


async def test_stun_keepalives_on_the_call_ports_are_answered_and_not_malformed(
        gateway_factory):
    """RFC 7983: first byte 0-3 is STUN. A Binding request on the RTP or RTCP port gets a
    Binding success naming its source (read here by aioice's codec); an ICE check signed
    with credentials the gateway never issued is counted but not answered."""
    from aioice import stun as aioice_stun

    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    answer = await phone.invite("quiet", formats="0")
    rtp_port = sdp_port(answer)
    loop = asyncio.get_running_loop()
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp.bind(("127.0.0.1", 0))
    rtcp.setblocking(False)
    for sock, port, fingerprint in ((phone.rtp, rtp_port, True), (rtcp, rtp_port + 1, False)):
        request = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
        if fingerprint:
            request.add_fingerprint()
        await loop.sock_sendto(sock, bytes(request), ("127.0.0.1", port))
        while True:  # the RTP port also carries the call's audio
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 2.0)
            if data[0] < 4:
                break
        response = aioice_stun.parse_message(data)  # verifies the FINGERPRINT
        assert response.message_class == aioice_stun.Class.RESPONSE
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
        assert ("FINGERPRINT" in response.attributes) == fingerprint
    ice_check = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST,
                                    attributes={"USERNAME": "them:us", "PRIORITY": 1})
    ice_check.add_message_integrity(b"a password we never issued")
    await loop.sock_sendto(rtcp, bytes(ice_check), ("127.0.0.1", rtp_port))
    await loop.sock_sendto(rtcp, b"\x00\x01 not stun at all", ("127.0.0.1", rtp_port))
    await asyncio.sleep(0.3)
    with pytest.raises(BlockingIOError):
        rtcp.recv(2048)  # the signed check got no answer
    [call] = gw.gateway.sip.calls.values()
    media = call.info().media
    assert (media.stun_in, media.malformed_in, media.rtcp_in) == (3, 1, 0), media
    assert (await phone.bye("quiet")).status == 200
    rtcp.close()
    await phone.close()


async def test_rtp_timeout_ends_a_vanished_phone_but_not_a_silent_stream(gateway_factory):
    gw = await start(gateway_factory, rtp_timeout_s=0.5)
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
    await talker.close()
    await vanished.close()


async def test_dtmf_star_number_hash_switches_the_caller_to_another_stream(gateway_factory):
    gw = await start(gateway_factory, stepped=True, dtmf_streams={"2": "quiet"})
    send_tone(gw, "room", 440)
    send_tone(gw, "quiet", 880)
    phone = Phone(gw.gateway.sip.port)
    answer = await phone.invite("room")
    assert_tone(decode(await phone.heard(gw, 50)), 440, rate=8000, min_seconds=1.0)
    [call] = gw.gateway.sip.calls.values()
    dest = ("127.0.0.1", sdp_port(answer))
    timestamp = 1000
    for digit in "*2#":
        packets = encode_event_packets(digit)
        for i, (marker, _duration, payload) in enumerate(packets):
            await phone.send_rtp(dest, [payload], pt=101, timestamp=timestamp, seq=10 * timestamp
                                 + i, marker_first=marker, ptime=0)
        timestamp += 2000
    await until(lambda: call.media.packets == 3 * len(packets))  # the media port read them
    heard = decode(await phone.heard(gw, 50))
    assert abs(dominant_frequency(heard, 8000) - 880) < 20
    assert call.stream.name == "quiet" and [d["digit"] for d in call.digits] == list("*2#")
    # what the phone was sent counts on the stream it was heard from, each packet once
    room, quiet = gw.gateway.registry.get("room"), gw.gateway.registry.get("quiet")
    assert room.outputs.get(call.id) is None and quiet.outputs.get(call.id) is call
    on_room = room.outputs.totals()["sip"].packets
    on_quiet = quiet.outputs.totals()["sip"].packets
    assert on_room >= 50 and on_quiet >= 50 and on_room + on_quiet == call.sent()["packets"]
    await phone.close()


async def test_two_way_route_publishes_the_callers_audio(gateway_factory):
    gw = await start(gateway_factory, stepped=True,
                     routes=[{"match": "talk-(.+)", "listen": r"\1", "publish": r"phone-\1"}])
    phone = Phone(gw.gateway.sip.port)
    answer = await phone.invite("talk-room")
    assert answer.status == 200
    [call] = gw.gateway.sip.calls.values()
    assert call.publish_to is not None and call.publish_to.name == "phone-room"
    listener = await l16_listener(gw, "phone-room")
    dest = ("127.0.0.1", sdp_port(answer))
    for i, payload in enumerate(tone_ulaw(660, 2.0)):  # a packet, then the tick that plays it
        await phone.send_rtp(dest, [payload], seq=1 + i, timestamp=160 * i, ptime=0)
        await until(lambda i=i: call.media.packets == i + 1)
        await gw.step(1)
    heard = l16(listener.drain())
    assert len(heard) == 100 * 960
    played = heard[10 * 960 :]  # after the jitter buffer's depth
    assert_tone(played, 660, min_seconds=1.5)
    levels = [rms_dbfs(frame) for frame in played.reshape(-1, 960)]
    assert max(levels) - min(levels) < 1.0, levels  # every packet played: none concealed
    listener.close()
    await phone.close()


async def test_limits_calls_size_rate_and_malformed_input(gateway_factory):
    gw = await start(gateway_factory, stepped=True, max_calls=1, max_message_bytes=4000,
                     rate_limit_per_s=5, rate_limit_burst=10)
    send_tone(gw, "room", 440)
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
    # every phone here shares 127.0.0.1, hence one bucket: at most its burst of 10 is
    # answered (what is left of it after the requests above, plus a refill of 5/s)
    assert answered >= 1, "the rate limit answered nothing of the flood"
    assert answered <= 10, f"{answered} of the flood answered: more than the burst"
    info = gw.gateway.sip.info()
    assert info.rate_limited >= 40 - answered and info.messages_malformed >= 2
    # the call is undisturbed (no sync: its OPTIONS would meet the empty bucket)
    assert_tone(decode(await first.heard(gw, 50, sync=False)), 440, rate=8000, min_seconds=1.0)
    await asyncio.sleep(0.3)  # the bucket refills (5/s): the BYE of first.close() gets in
    for p in (first, second, big, bad, flood):
        await p.close()


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
    await phone.close()


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
    assert info.tcp_connections_timed_out == 2, info
    assert info.tcp_connections_refused == 1, info
    assert info.tcp_connections == 1, info
    for w in (silent_w, dribble_w, talker_w):
        w.close()


async def test_one_address_cannot_take_every_tcp_connection_and_unused_ones_are_closed(
        gateway_factory):
    """Connections from one address are capped below the total; an accepted connection
    idle past tcp_idle_timeout_s is closed unless a call or a registration uses it."""
    gw = await start(gateway_factory, max_tcp_connections=10, max_tcp_connections_per_host=2,
                     tcp_idle_timeout_s=0.5)
    port = gw.gateway.sip.port
    sip = gw.gateway.sip

    async def talk(host: str, n: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
        writer.write(tcp_options(port, writer.get_extra_info("sockname")[1], n))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).startswith(
            b"SIP/2.0 200")
        return reader, writer

    idle_r, idle_w = await talk("127.0.0.1", 1)
    used_r, used_w = await talk("127.0.0.1", 2)
    refused_r, refused_w = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(refused_r.read(), 2) == b""  # a third from 127.0.0.1
    other_r, other_w = await talk("127.0.0.2", 3)  # another address still gets in
    # as if a call or a registration used the second one
    used = ("TCP", *used_w.get_extra_info("sockname")[:2])
    service_in_use = sip.endpoint.in_use
    sip.endpoint.in_use = lambda: service_in_use() | {used}
    started = time.monotonic()
    assert await asyncio.wait_for(idle_r.read(), 3) == b""  # closed by the gateway
    assert 0.4 <= time.monotonic() - started <= 2.0
    assert await asyncio.wait_for(other_r.read(), 3) == b""
    await asyncio.sleep(1.0)
    used_w.write(tcp_options(port, used[2], 4))  # idle four times the timeout: still open
    assert (await asyncio.wait_for(used_r.readuntil(b"\r\n\r\n"), 3)).startswith(b"SIP/2.0 200")
    info = sip.info()
    assert (info.tcp_connections_refused, info.tcp_connections_idle_closed) == (1, 2), info
    assert info.tcp_connections == 1, info
    again_r, again_w = await talk("127.0.0.1", 5)  # a slot from 127.0.0.1 is free again
    for w in (idle_w, used_w, refused_w, other_w, again_w):
        w.close()


async def test_two_connections_with_one_key_are_each_counted_once():
    """A phone connecting from one port to the shared port and to a worker's own has two
    connections under one (transport, host, port) key; closing both frees both slots."""
    def connect(local_port: int, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", local_port))
        sock.connect(("127.0.0.1", port))
        return sock

    endpoint = SipEndpoint(EndpointSettings(port=0, own_port=0, transports=("tcp",),
                                            max_connections_per_host=3), lambda event: None)
    await endpoint.start()
    try:
        for _ in range(4):  # more rounds than the per-host cap: a leak would lock it out
            local = free_port()
            pair = [connect(local, endpoint.port), connect(local, endpoint.own_port)]
            await until(lambda: len(endpoint._accepted) == 2)
            for sock in pair:
                sock.close()
            await until(lambda: not endpoint._accepted and not endpoint._accepted_by_host)
        assert endpoint.counters.connections_refused == 0
    finally:
        await endpoint.close()


async def test_media_latches_to_where_the_phones_rtp_comes_from(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    send_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port)
    nat = RtpSink()  # the NAT's outside port
    answer = await phone.invite("room")  # SDP names phone.rtp_port; RTP comes from `nat`
    [call] = gw.gateway.sip.calls.values()
    for i in range(5):
        header = bytes([0x80, 0]) + i.to_bytes(2, "big") + (160 * i).to_bytes(4, "big") + b"abcd"
        nat.sock.sendto(header + bytes(160), ("127.0.0.1", sdp_port(answer)))
    await until(lambda: call.media.packets == 5)
    assert await phone.heard(gw, 25) == []  # nothing to the address in the SDP any more
    assert len(nat.drain()) == 25  # all of it to where the RTP came from
    nat.close()
    await phone.close()


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
    await phone.close()


async def test_wideband_codecs_when_the_phone_offers_them(gateway_factory):
    from gateway.codecs.spec import G722, OPUS
    from gateway.codecs.transcode import make_decoder

    gw = await start(gateway_factory, stepped=True)
    send_tone(gw, "room", 440)
    for formats, spec, rtpmap in (("0 9 101", G722, b"G722/8000"),
                                  ("0 111", OPUS, b"opus/48000/2")):
        phone = Phone(gw.gateway.sip.port)
        answer = await phone.invite("room", formats=formats)
        assert answer.status == 200 and rtpmap in answer.body, answer.body
        packets = await phone.heard(gw, 75)
        assert len(packets) == 75 and {p[0] for p in packets} == {spec.payload_type}
        assert_in_sequence(packets, spec.clock_rate // 50)
        decoder = make_decoder(spec)
        pcm = np.concatenate([decoder.decode(p[3]) for p in packets])
        assert_tone(pcm[9600:], 440, min_seconds=1.0)  # decoded at 48 kHz
        await phone.bye("room")
        await phone.close()


async def test_calls_on_one_stream_and_codec_share_one_encoder(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    send_tone(gw, "room", 440)
    phones = [Phone(gw.gateway.sip.port, f"p{i}") for i in range(6)]
    for phone in phones:
        assert (await phone.invite("room", formats="0")).status == 200
    status, stream = await api(gw, "GET", "/api/v1/streams/room")
    pcmu = [e for e in stream["encoders"] if e["codec"] == "PCMU"]
    assert len(pcmu) == 1, stream["encoders"]  # six calls, one encoder
    assert stream["listeners_by_kind"]["sip"] == 6
    got = await heard(gw, phones, 50)
    assert [p[3] for p in got[0]] == [p[3] for p in got[5]]  # the same payloads for all
    for phone, packets in zip(phones, got, strict=True):
        assert len(packets) == 50
        assert_tone(decode(packets), 440, rate=8000, min_seconds=1.0)
        await phone.close()


async def test_advertised_address_is_what_sdp_and_contact_say(gateway_factory):
    gw = await start(gateway_factory, stepped=True, advertised_host="192.0.2.10")
    phone = Phone(gw.gateway.sip.port)
    answer = await phone.invite("quiet")
    assert answer.status == 200
    assert b"c=IN IP4 192.0.2.10" in answer.body
    assert answer.contact is not None and answer.contact.uri.host == "192.0.2.10"
    # bound to loopback all the same: the phone still gets its RTP (from 127.0.0.1)
    assert len(await phone.heard(gw, 25)) == 25
    await phone.close()


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
    await phone.close()


async def test_offerless_reinvite_gets_the_current_sdp_and_keeps_the_call(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    phone = Phone(gw.gateway.sip.port)
    first = await phone.invite("quiet")
    await phone.send(phone.request("INVITE", "quiet", in_dialog=True))
    refresh = await phone.final()
    assert refresh.status == 200 and refresh.body == first.body
    await phone.ack("quiet", refresh)
    assert len(gw.gateway.sip.calls) == 1 and len(await phone.heard(gw, 25)) == 25
    await phone.close()
