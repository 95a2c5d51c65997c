"""What WHIP and WHEP sessions share: SDP checks, a peer connection, a lifecycle."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.sdp import SessionDescription

from ..codecs.spec import CODECS, CodecSpec
from ..core.stream import Stream

log = logging.getLogger(__name__)


class OfferError(ValueError):
    """The SDP offer cannot be used; the message says why (sent back as a 400)."""


def check_offer(sdp: str) -> SessionDescription:
    """Parse an offer and require at least one audio section we can use."""
    if not sdp.strip():
        raise OfferError("empty SDP offer")
    if not sdp.lstrip().startswith("v="):
        raise OfferError("SDP offer must start with 'v='")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises a mix of ValueError/IndexError/KeyError
        raise OfferError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
    audio = [m for m in parsed.media if m.kind == "audio"]
    if not audio:
        raise OfferError("SDP offer has no audio section")
    if not any(m.port for m in audio):
        raise OfferError("SDP offer's audio section is rejected (port 0)")
    if not any(m.ice.usernameFragment and m.dtls for m in audio):
        raise OfferError("SDP offer lacks ICE credentials or a DTLS fingerprint")
    if not any(codec_spec(c.mimeType) for m in audio for c in m.rtp.codecs):
        offered = sorted({c.mimeType.split("/")[-1] for m in audio for c in m.rtp.codecs})
        raise OfferError(
            f"no audio codec in common: offer has {', '.join(offered) or 'none'}; "
            "gateway speaks opus, G722, PCMU, PCMA"
        )
    if not any(m.rtcp_mux for m in audio):
        raise OfferError("SDP offer must use a=rtcp-mux (RTP and RTCP on one port)")
    return parsed


def codec_spec(mime_type: str) -> CodecSpec | None:
    return CODECS.get(mime_type.split("/")[-1].lower())


def audio_transceiver(pc: RTCPeerConnection) -> RTCRtpTransceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            return transceiver
    raise OfferError("SDP offer has no audio section")


class WebRTCSession:
    """One WHIP or WHEP resource: a peer connection bound to a stream."""

    kind = "webrtc"
    role = "session"

    def __init__(self, pc: RTCPeerConnection, stream: Stream) -> None:
        self.id = secrets.token_urlsafe(12)
        self.pc = pc
        self.stream = stream
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.codec: CodecSpec | None = None
        pc.on("connectionstatechange", self._on_state)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("%s %s on %s: %s", self.role, self.id, self.stream.name, state)
        if state in ("failed", "closed"):
            await self.close(f"connection {state}")

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        transceiver = audio_transceiver(self.pc)
        # aiortc keeps the codecs both sides have, in the offer's order of preference
        codecs = [c for c in transceiver._codecs if codec_spec(c.mimeType)]
        if not codecs:
            raise OfferError("no audio codec in common (gateway speaks opus, G722, PCMU, PCMA)")
        self.codec = codec_spec(codecs[0].mimeType)
        self.prepare(transceiver)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    def prepare(self, transceiver: RTCRtpTransceiver) -> None:
        """Hook: attach tracks or taps before the answer is created."""

    async def close(self, reason: str = "closed") -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        self.release()
        log.info(
            "%s %s on stream %s ended after %.1f s: %s",
            self.role,
            self.id,
            self.stream.name,
            time.time() - self.started,
            reason,
        )
        await self.pc.close()

    def release(self) -> None:
        """Hook: detach from the stream."""

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "role": self.role,
            "stream": self.stream.name,
            "codec": self.codec.name if self.codec else None,
            "state": self.pc.connectionState,
            "since": self.started,
        }
