"""What WHIP and WHEP sessions share: SDP checks, a peer connection, a lifecycle."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiortc import (
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from gateway.core.ids import new_id

from ..codecs.spec import CODECS, OPUS, CodecSpec
from ..core.stream import Stream
from ..models.info import SessionInfo
from ..rtp.red import primary_payload_types
from .aiortc_patches import (
    forget_reports,
    gather_on_shared_ports,
    negotiated_codecs,
    set_negotiated_codecs,
)
from .udp_mux import SharedUdpPort

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
    for m in audio:
        named: dict[int, tuple[str, int | None]] = {}
        for c in m.rtp.codecs:  # two codecs on one type: packets decoded as the wrong one
            codec = (c.mimeType.lower(), c.clockRate)
            if named.setdefault(c.payloadType, codec) != codec:
                raise OfferError(f"SDP offer maps payload type {c.payloadType} to two codecs")
    return parsed


def codec_spec(mime_type: str) -> CodecSpec | None:
    return CODECS.get(mime_type.split("/")[-1].lower())


def offered_red(offer: SessionDescription, mid: str | None,
                primary_pt: int) -> RTCRtpCodecParameters | None:
    """The offer's ``red/48000/2`` for the audio section ``mid`` if its fmtp makes every
    block Opus at ``primary_pt`` (``a=fmtp:63 111/111``, as browsers offer it; a peer
    that sends RED checks the answer's fmtp names its send codec), else None."""
    for media in offer.media:
        if media.kind != "audio" or media.rtp.muxId != mid:
            continue
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() != "audio/red" or codec.clockRate != OPUS.clock_rate:
                continue
            fmtp = ";".join(k if v is None else f"{k}={v}" for k, v in codec.parameters.items())
            types = primary_payload_types(fmtp)
            if types and all(pt == primary_pt for pt in types):
                return copy.deepcopy(codec)
    return None


def audio_transceiver(pc: RTCPeerConnection) -> RTCRtpTransceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            return transceiver
    raise OfferError("SDP offer has no audio section")


def drop_listeners(pc: RTCPeerConnection) -> None:
    """Forget the event handlers of a closed peer connection and of its transports and
    tracks, so that reference counting frees the session at once.

    Each handler is a bound method or closure that refers back to its emitter's owner
    (the peer connection's own handlers on its ICE and DTLS transports, the session's
    on the peer connection): cycles that only a full collection frees, ~550 objects per
    closed session, and none at all once frozen (gateway/heap.py)."""
    emitters: list[Any] = [pc, pc.sctp]
    for transceiver in pc.getTransceivers():
        for dtls in (transceiver.sender.transport, transceiver.receiver.transport):
            ice = getattr(dtls, "transport", None)
            emitters += [dtls, ice, getattr(ice, "iceGatherer", None)]
        emitters += [transceiver.sender.track, transceiver.receiver.track]
    for emitter in emitters:
        if emitter is not None:
            emitter.remove_all_listeners()
    forget_reports(pc)


class WebRTCSession:
    """One WHIP or WHEP resource: a peer connection bound to a stream."""

    kind = "webrtc"
    role = "session"
    #: Use RED (RFC 2198) with Opus when the peer offers it (``webrtc.red``).
    red_allowed = True
    #: Host address -> the shared port (``webrtc.udp_port``) its candidates name.
    udp_ports: Mapping[str, SharedUdpPort] = {}

    def __init__(self, pc: RTCPeerConnection, stream: Stream) -> None:
        self.id = new_id(12)
        self.pc = pc
        self.stream = stream
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.codec: CodecSpec | None = None
        self.payload_type: int | None = None  # the codec's number in this session's SDP
        self.red_payload_type: int | None = None  # RED's, when negotiated (Opus inside)
        #: The identity of the principal that created it (None with access control off).
        self.owner: str | None = None
        pc.on("connectionstatechange", self._on_state)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("%s %s on %s: %s", self.role, self.id, self.stream.name, state)
        if state == "connected":
            self.connected()
        elif state in ("failed", "closed"):
            await self.close(f"connection {state}")

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        transceiver = audio_transceiver(self.pc)
        codecs = [c for c in negotiated_codecs(transceiver) if codec_spec(c.mimeType)]
        if not codecs:
            raise OfferError("no audio codec in common (gateway speaks opus, G722, PCMU, PCMA)")
        self.codec = codec_spec(codecs[0].mimeType)
        self.payload_type = codecs[0].payloadType
        if self.red_allowed and self.codec is OPUS:
            self._negotiate_red(offer_sdp, transceiver)
        self.prepare(transceiver)
        if self.udp_ports:
            gather_on_shared_ports(self.pc, self.udp_ports)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    def _negotiate_red(self, offer_sdp: str, transceiver: RTCRtpTransceiver) -> None:
        """Answer the offer's RED first: a browser publisher then sends RED (the answer's
        first codec is its send codec), and a listener is told RED may come."""
        assert self.payload_type is not None
        red = offered_red(SessionDescription.parse(offer_sdp), transceiver.mid,
                          self.payload_type)
        if red is None:
            return
        others = [c for c in negotiated_codecs(transceiver)
                  if c.payloadType != red.payloadType]
        set_negotiated_codecs(transceiver, [red, *others])
        self.red_payload_type = red.payloadType

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
        drop_listeners(self.pc)

    def connected(self) -> None:
        """Hook: ICE and DTLS are up (media may flow)."""

    def release(self) -> None:
        """Hook: detach from the stream."""

    def info(self) -> SessionInfo:
        return SessionInfo(**self.fields())

    def fields(self) -> dict[str, Any]:
        """What every session reports; a publisher or listener adds its own counters."""
        return {
            "id": self.id,
            "kind": self.kind,
            "role": self.role,
            "stream": self.stream.name,
            "codec": self.codec.name if self.codec else None,
            "red": self.red_payload_type is not None,
            "state": self.pc.connectionState,
            "since": self.started,
        }
