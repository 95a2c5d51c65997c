"""Bad requests get a readable 4xx and disturb no one else."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from audio_checks import active, assert_tone

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

CASES = [
    ("post", "/whip/x", "application/sdp", "", 400, "empty"),
    ("post", "/whip/x", "application/sdp", "hello world", 400, "v="),
    ("post", "/whip/x", "application/sdp", "v=0\r\nm=audio\r\n", 400, "malformed"),
    ("post", "/whep/x", "application/sdp", VIDEO_ONLY, 400, "no audio"),
    ("post", "/whip/x", "application/sdp", NO_ICE, 400, "ICE"),
    ("post", "/whip/x", "application/sdp", ONLY_ISAC, 400, "codec"),
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
    await asyncio.sleep(4)
    assert len(gateway.gateway.sessions) == before
    assert_tone(active(lis.audio()), 440)
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
