"""Baseline for bench/fanout.py: WebRTC fan-out written the obvious aiortc way.

One publisher per stream (WHIP), any number of listeners (WHEP). Every listener gets
``MediaRelay.subscribe(publisher_track)``: the relay hands the *decoded* frames to each
listener's RTCRtpSender, and aiortc runs one Opus encoder per listener. Same HTTP shape
as the gateway (POST /whip/{stream}, POST /whep/{stream} -> 201 + Location + answer,
DELETE Location, GET /api/v1/stats), so the same load generator drives both.

    python bench/baseline_server.py --port 8090 [--ice-host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import secrets

import aioice.ice
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole, MediaRelay

log = logging.getLogger("baseline")


class Baseline:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.sources: dict[str, MediaStreamTrack] = {}
        self.source_ready: dict[str, asyncio.Event] = {}
        self.sessions: dict[str, tuple[str, RTCPeerConnection]] = {}
        self.drains: dict[str, MediaBlackhole] = {}

    def _ready(self, stream: str) -> asyncio.Event:
        return self.source_ready.setdefault(stream, asyncio.Event())

    def _new_pc(self, stream: str) -> tuple[str, RTCPeerConnection]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sid = secrets.token_urlsafe(9)
        self.sessions[sid] = (stream, pc)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close(sid)

        return sid, pc

    async def _close(self, sid: str) -> None:
        entry = self.sessions.pop(sid, None)
        if entry is not None:
            await entry[1].close()

    async def whip(self, request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        offer = await request.text()
        sid, pc = self._new_pc(stream)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio":
                return
            self.sources[stream] = track
            # Keep reading the source even with no listener, so frames never pile up.
            drain = MediaBlackhole()
            drain.addTrack(self.relay.subscribe(track))
            self.drains[stream] = drain
            asyncio.ensure_future(drain.start())
            self._ready(stream).set()

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._created("whip", stream, sid, pc)

    async def whep(self, request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        offer = await request.text()
        try:
            await asyncio.wait_for(self._ready(stream).wait(), 5.0)
        except TimeoutError:
            return web.Response(status=404, text=f"no publisher on {stream!r}")
        sid, pc = self._new_pc(stream)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        # The obvious way: decoded frames through the relay, aiortc encodes per sender.
        pc.addTrack(self.relay.subscribe(self.sources[stream]))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._created("whep", stream, sid, pc)

    def _created(self, kind: str, stream: str, sid: str, pc: RTCPeerConnection) -> web.Response:
        sdp = pc.localDescription.sdp
        resp = web.Response(status=201, text=sdp, content_type="application/sdp")
        resp.headers["Location"] = f"/{kind}/{stream}/{sid}"
        return resp

    async def delete(self, request: web.Request) -> web.Response:
        sid = request.match_info["session"]
        if sid not in self.sessions:
            return web.Response(status=404)
        await self._close(sid)
        return web.Response(status=200)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": len(self.sessions), "encoders_per_listener": True})

    async def shutdown(self, app: web.Application) -> None:
        for sid in list(self.sessions):
            await self._close(sid)


def make_app() -> web.Application:
    server = Baseline()
    app = web.Application()
    app.router.add_post("/whip/{stream}", server.whip)
    app.router.add_post("/whep/{stream}", server.whep)
    app.router.add_delete("/whip/{stream}/{session}", server.delete)
    app.router.add_delete("/whep/{stream}/{session}", server.delete)
    app.router.add_get("/api/v1/stats", server.stats)
    app.on_shutdown.append(server.shutdown)
    return app


def use_numpy_audio_level() -> None:
    import aiortc.rtp
    import numpy as np

    def compute_audio_level_dbov(frame) -> int:  # type: ignore[no-untyped-def]
        samples = np.frombuffer(frame.planes[0], dtype=np.int16).astype(np.int64)
        # not np.dot: BLAS would spin extra threads
        rms = math.sqrt(int((samples * samples).sum()) / (frame.samples * 32767.0 * 32767.0))
        return round(max(-127.0, min(0.0, 20 * math.log10(rms)))) if rms > 0 else -127

    aiortc.rtp.compute_audio_level_dbov = compute_audio_level_dbov  # looked up per frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--ice-host", default="127.0.0.1", help="ICE host candidate address")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--numpy-audio-level",
        action="store_true",
        help="tuned variant: replace aiortc's pure-Python per-frame audio level (RFC 6465) "
        "computation, run once per listener, by numpy",
    )
    args = parser.parse_args()
    if args.numpy_audio_level:
        use_numpy_audio_level()
    logging.basicConfig(level=args.log_level.upper())
    # aioice never offers 127.0.0.1 on its own: advertise exactly this address.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.ice_host]
    web.run_app(make_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
