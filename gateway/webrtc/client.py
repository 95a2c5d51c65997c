"""Minimal WHIP/WHEP clients on aiortc, for tests, benchmarks and scripting."""

from __future__ import annotations

import asyncio
import fractions
import ssl
import time
from collections.abc import Callable

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from ..core.audio import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE


class ToneTrack(MediaStreamTrack):
    """A paced mono sine (or any generator of int16 chunks) as a WebRTC audio track."""

    kind = "audio"

    def __init__(
        self,
        freq: float = 440.0,
        amplitude: float = 0.3,
        generator: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self._generator = generator
        self._index = 0
        self._start: float | None = None
        self.sent_at: list[float] = []  # wall time each frame was handed to the sender

    def samples(self, index: int) -> np.ndarray:
        if self._generator is not None:
            return self._generator(index)
        n = np.arange(index * FRAME_SAMPLES, (index + 1) * FRAME_SAMPLES)
        tone = np.sin(2 * np.pi * self.freq * n / SAMPLE_RATE) * self.amplitude * 32767
        return tone.astype(np.int16)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._index * FRAME_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = AudioFrame.from_ndarray(
            self.samples(self._index).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._index * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._index += 1
        self.sent_at.append(time.monotonic())
        return frame


class WebRTCClient:
    """One WHIP or WHEP session held by this process."""

    def __init__(self, base_url: str, kind: str, stream: str) -> None:
        self.url = f"{base_url.rstrip('/')}/{kind}/{stream}"
        self.base_url = base_url.rstrip("/")
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None
        self.answer_codec: str | None = None
        self.answer: str | None = None
        self.token: str | None = None
        #: Trust for an HTTPS gateway (e.g. its self-signed certificate); None: the system's.
        self.ssl: ssl.SSLContext | None = None

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None)

    def offer_sdp(self) -> str:
        """The offer to POST (a subclass may add what aiortc cannot offer, e.g. RED)."""
        return self.pc.localDescription.sdp

    async def negotiate(self, token: str | None = None,
                        http: aiohttp.ClientSession | None = None) -> None:
        """POST the offer (on a new connection, or on ``http``'s kept-alive ones)."""
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self.token = token
        headers = {"Content-Type": "application/sdp", **self._auth()}
        own = http is None
        http = http or self._session()
        try:
            async with http.post(self.url, data=self.offer_sdp(), headers=headers) as r:
                body = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"{self.url}: {r.status} {body}")
                self.location = r.headers["Location"]
                self.answer = body
        finally:
            if own:
                await http.close()
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: not connected ({self.pc.connectionState})")
            await asyncio.sleep(0.02)

    async def delete(self) -> int:
        status = 0
        if self.location:
            async with self._session() as http:
                async with http.delete(self.base_url + self.location,
                                       headers=self._auth()) as r:
                    status = r.status
        await self.pc.close()
        return status


class Publisher(WebRTCClient):
    def __init__(self, base_url: str, stream: str, track: MediaStreamTrack) -> None:
        super().__init__(base_url, "whip", stream)
        self.track = track
        self.pc.addTransceiver(track, direction="sendonly")


class Listener(WebRTCClient):
    """Receives and keeps every decoded sample, with the arrival time and RTP timestamp
    (`pts`) of each frame: a gap in the timestamps is a frame lost, however late the
    others arrive."""

    def __init__(self, base_url: str, stream: str, codecs: list[str] | None = None) -> None:
        super().__init__(base_url, "whep", stream)
        transceiver = self.pc.addTransceiver("audio", direction="recvonly")
        if codecs:
            from aiortc import RTCRtpSender

            caps = RTCRtpSender.getCapabilities("audio").codecs
            wanted = [c for name in codecs for c in caps if c.mimeType.lower() == name.lower()]
            transceiver.setCodecPreferences(wanted)
        self.chunks: list[np.ndarray] = []
        self.arrivals: list[float] = []
        self.pts: list[int] = []
        self.frames = 0
        self.sample_rate = 0
        self.paused = False
        self._task: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._task = asyncio.ensure_future(self._consume(track))

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                if self.paused:
                    await asyncio.sleep(0.05)
                    continue
                frame = await track.recv()
                pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                self.chunks.append(pcm.astype(np.int16))
                self.sample_rate = frame.sample_rate
                self.arrivals.append(time.monotonic())
                self.pts.append(frame.pts or 0)
                self.frames += 1
        except MediaStreamError:
            pass

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)

    async def delete(self) -> int:
        if self._task:
            self._task.cancel()
        return await super().delete()
