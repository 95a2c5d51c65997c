"""Bad requests get a readable 4xx and disturb no one else."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import aiohttp
import pytest
from audio_checks import active, assert_tone
from test_webrtc_relay import sound

from gateway.webrtc.client import Listener, Publisher, ToneTrack

GOOD_HEADER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
VIDEO_ONLY = (
    GOOD_HEADER + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\na=mid:0\r\n"
)
NO_ICE = (
    GOOD_HEADER + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)
ONLY_ISAC = (
    GOOD_HEADER + "m=audio 9 UDP/TLS/RTP/SAVPF 103\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:103 ISAC/16000\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\na=mid:0\r\n"
    "a=sendonly\r\na=rtcp-mux\r\n"
)
# one payload type, two codecs: the publisher's packets would be decoded as the wrong one
TWO_CODECS_ONE_TYPE = ONLY_ISAC.replace("103", "96", 1).replace(
    "a=rtpmap:103 ISAC/16000", "a=rtpmap:96 opus/48000/2\r\na=rtpmap:96 G722/8000")
# passes the gateway's own checks, fails inside aiortc (a clock rate of 0)
ZERO_RATE = ONLY_ISAC.replace("103", "0").replace("ISAC/16000", "PCMU/0")

CASES = [
    ("post", "/whip/x", "application/sdp", "", 400, "empty"),
    ("post", "/whip/x", "application/sdp", "hello world", 400, "v="),
    ("post", "/whip/x", "application/sdp", "v=0\r\nm=audio\r\n", 400, "malformed"),
    ("post", "/whep/x", "application/sdp", VIDEO_ONLY, 400, "no audio"),
    ("post", "/whip/x", "application/sdp", NO_ICE, 400, "ICE"),
    ("post", "/whip/x", "application/sdp", ONLY_ISAC, 400, "codec"),
    ("post", "/whep/x", "application/sdp", ZERO_RATE, 400, "cannot use this offer"),
    ("post", "/whip/x", "application/sdp", TWO_CODECS_ONE_TYPE, 400, "payload type 96 to two"),
    ("post", "/whip/x", "application/json", '{"sdp": "v=0"}', 415, "application/sdp"),
    ("post", "/whep/x", "text/plain", "v=0", 415, "application/sdp"),
    ("post", "/whip/x", "application/sdp", "v=0\r\n" + "a=x\r\n" * 40000, 413, "larger"),
    ("post", "/whip/..%2Fetc", "application/sdp", VIDEO_ONLY, 400, "invalid stream name"),
    ("delete", "/whip/x/nosuchsession", None, None, 404, "no such session"),
    ("delete", "/whep/x/nosuchsession", None, None, 404, "no such session"),
    ("delete", "/api/v1/sessions/nosuch", None, None, 404, "no such session"),
    ("get", "/api/v1/streams/nosuch", None, None, 404, "no stream"),
    ("patch", "/whip/x/abc", "application/trickle-ice-sdpfrag", "a=x", 405, "trickle"),
    ("get", "/whip/x", None, None, 405, ""),
]


@pytest.mark.parametrize(("method", "path", "ctype", "body", "status", "words"), CASES)
async def test_bad_request_gets_readable_problem(gateway, method, path, ctype, body, status, words):
    headers = {"Content-Type": ctype} if ctype else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gateway.url + path, data=body, headers=headers) as r:
            assert r.status == status, await r.text()
            assert r.content_type == "application/problem+json"
            problem = await r.json()
    assert problem["status"] == status
    assert words.lower() in (problem.get("detail", "") + problem["title"]).lower(), problem
    assert "x" not in gateway.gateway.registry.streams  # a refused offer leaves no stream


async def test_garbage_does_not_disturb_a_live_session(gateway):
    pub = Publisher(gateway.url, "live", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()
    lis = Listener(gateway.url, "live")
    await lis.negotiate()
    await lis.connected()
    before = len(gateway.gateway.sessions)

    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            for method, path, ctype, body, status, _words in CASES:
                # also aim every bad offer at the live stream itself
                path = path.replace("/x", "/live")
                headers = {"Content-Type": ctype} if ctype else {}
                url = gateway.url + path
                async with http.request(method, url, data=body, headers=headers) as r:
                    assert r.status == status or (path.startswith("/whip/live") and r.status == 409)
    assert len(gateway.gateway.sessions) == before
    during = len(active(lis.audio()))  # heard while the garbage came
    audio = await sound(lis, during / 48000 + 1.0)
    assert_tone(audio, 440, min_seconds=1.0)
    assert_tone(audio[during:], 440, min_seconds=1.0)  # and still heard after it
    assert lis.pc.connectionState == "connected"
    await pub.delete()
    await lis.delete()


async def test_options_advertises_sdp(gateway):
    async with aiohttp.ClientSession() as http:
        async with http.options(gateway.url + "/whip/x") as r:
            assert r.status == 204
            assert r.headers["Accept-Post"] == "application/sdp"


async def test_unknown_stream_when_dynamic_streams_are_off(gateway_factory):
    gw = await gateway_factory(streams={"allow_dynamic": False, "declared": ["main"]})
    lis = Listener(gw.url, "other")
    with pytest.raises(RuntimeError, match="404"):
        await lis.negotiate()
    await lis.pc.close()
    ok = Listener(gw.url, "main")
    await ok.negotiate()
    await ok.delete()


def _recording_id(rel: str) -> str:
    import base64

    return base64.urlsafe_b64encode(rel.encode()).decode().rstrip("=")


@pytest.mark.parametrize("rid", [
    _recording_id("s/" + "a" * 260 + ".wav"),  # file name too long (ENAMETOOLONG)
    "A" * 5000,
    "a.b",
])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_odd_recording_ids_are_404_and_touch_no_file(gateway, rid, method):
    (gateway.gateway.recordings.store.directory / "s").mkdir(parents=True)  # a stream's folder
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{gateway.url}/api/v1/recordings/{rid}") as r:
            assert r.status == 404, await r.text()
            assert r.content_type == "application/problem+json"
            assert "recording" in (await r.json())["detail"]


@pytest.mark.parametrize("path", ["/api/v1/streams/x/outputs", "/api/v1/streams/x/inputs"])
@pytest.mark.parametrize("body", [
    "[" * 60000, '{"a":' * 12000,
    # not JSON, though Python reads it: NaN passes every bound (a dial-out rang forever)
    '{"type": "sip", "uri": "sip:a@127.0.0.1", "timeout_s": NaN}',
    '{"host": "127.0.0.1", "port": 5004, "ttl": Infinity}'])
async def test_pathological_json_bodies_are_400(gateway, path, body):
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + path, data=body,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, await r.text()
            problem = await r.json()
    assert problem["errors"][0]["field"] == "body", problem
    assert not gateway.gateway.rtp_outputs.outputs and not gateway.gateway.rtp_inputs


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/streams/x/levels"])
async def test_feeds_closed_at_once_by_their_clients_log_no_error(gateway, path, caplog):
    """A client that resets its event feed before the first byte: nothing to log (each
    was an ERROR with a traceback, so any token could fill the log)."""
    gateway.gateway.registry.get_or_create("x")
    port = int(gateway.url.rsplit(":", 1)[1])
    for _ in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        writer.close()  # linger 0: a reset
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as http:  # and the feed still serves
        async with http.get(gateway.url + path) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_refused_offer_leaves_the_stream_to_an_offer_still_under_way(gateway,
                                                                              monkeypatch):
    """Offer A creates the stream and fails while offer B for the same stream is still
    being answered: the stream stays, with B as its sender."""
    from gateway.webrtc import session as sessions

    real_answer = sessions.WebRTCSession.answer

    async def answer(self, offer):  # A fails late inside aiortc; B answers later still
        if "a=x-fail" in offer:
            await asyncio.sleep(0.2)
            raise RuntimeError("failed deep inside aiortc")
        await asyncio.sleep(0.4)
        return await real_answer(self, offer)

    monkeypatch.setattr(sessions.WebRTCSession, "answer", answer)
    gw = gateway.gateway
    a, b = Publisher(gateway.url, "x", ToneTrack(440)), Publisher(gateway.url, "x", ToneTrack(440))
    offers = []
    for pub, extra in ((a, "a=x-fail\r\n"), (b, "")):
        await pub.pc.setLocalDescription(await pub.pc.createOffer())
        offers.append(pub.pc.localDescription.sdp + extra)
    first = asyncio.create_task(gw.open_session("x", "publisher", offers[0], None))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(gw.open_session("x", "publisher", offers[1], None))
    refused, opened = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(refused, Exception) and not isinstance(opened, Exception), opened
    stream = gw.registry.streams.get("x")
    assert stream is not None and stream.source is gw.sessions[opened.id]
    for pub in (a, b):
        await pub.pc.close()
