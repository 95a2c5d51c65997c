"""One SIP call's media wiring: which stream the phone hears, which one it feeds.

Signalling lives in ``service``; this object connects the call's RTP socket to the
forwarding core: an RTP output on the stream's shared encoder (sent from the call's own
socket), and, on two-way routes, the phone's decoded audio as a stream's sender.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from ..codecs.spec import CodecSpec
from ..core.stream import Stream
from ..egress.rtp import RtpOutput, RtpOutputs
from .dialog import Dialog
from .dtmf import DigitCommands
from .media import CallMedia

if TYPE_CHECKING:
    from .transaction import ClientTransaction, ServerTransaction

log = logging.getLogger(__name__)


class SipSource:
    """The phone's audio as a stream's sender (a FrameSource)."""

    kind = "sip"

    def __init__(self, call: SipCall) -> None:
        self.call = call
        self.id = call.id

    @property
    def playout(self) -> Any:
        """The call's jitter buffer and decoder (what WebRTC and RTP senders also expose)."""
        return self.call.media.playout

    def pull(self) -> np.ndarray | None:
        return self.call.media.pull()

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "sip", "peer": self.call.peer, **self.call.media.info()}

    async def close(self, reason: str = "") -> None:
        await self.call.hangup(reason or "replaced")


class SipCall:
    """A call in either direction, listed among its stream's outputs (type "sip")."""

    kind = "sip"

    def __init__(self, direction: str, peer: str, stream: Stream, media: CallMedia,
                 outputs: RtpOutputs) -> None:
        self.id = secrets.token_urlsafe(8)
        self.direction = direction  # "in" (dial-in) or "out" (dial-out)
        self.peer = peer  # the phone's URI
        self.stream = stream  # what the phone hears
        self.publish_to: Stream | None = None  # where the phone's audio goes, if anywhere
        self.media = media
        self.outputs = outputs
        self.output: RtpOutput | None = None
        self.source: SipSource | None = None
        self.state = "calling" if direction == "out" else "ringing"
        self.status: int | None = None  # last SIP status seen (dial-out)
        self.end_reason = ""
        self.cancelled = False  # hung up (DELETE, dial timeout) before it was answered
        self.dialog: Dialog | None = None
        self.flow: tuple[str, str, int] | None = None  # where in-dialog requests go
        self.invite_tx: ClientTransaction | ServerTransaction | None = None
        self.codec: CodecSpec | None = None
        self.payload_type: int | None = None
        self.on_hold = False
        self.local_sdp = ""  # our last SDP (offer or answer), for offerless re-INVITEs
        self.sdp_session = secrets.randbits(31)
        self.sdp_version = 1
        self.started = time.time()
        self.answered: float | None = None
        self.digits: deque[dict[str, Any]] = deque(maxlen=32)
        self.commands = DigitCommands()
        self.hangup_handler = None  # set by the service: async (call, reason) -> None

    # -- media -----------------------------------------------------------------------
    def start_sending(self, spec: CodecSpec, payload_type: int, sockaddr: tuple,
                      ptime: int = 20, bitrate: int | None = None) -> None:
        """(Re)start the stream → phone packets with this codec, from the call's socket."""
        self.stop_sending()
        family = socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET
        output = RtpOutput(self.stream, spec, ptime, sockaddr[0], family, sockaddr,
                           payload_type=payload_type, bitrate=bitrate, kind="sip")
        output.sock = self.media.sock
        output.paused = self.on_hold
        if self.media.remote is not None:
            output.retarget(self.media.remote)
        self.output = output
        self.codec, self.payload_type = spec, payload_type
        self.outputs.attach(output)

    def stop_sending(self) -> None:
        if self.output is not None:
            self.outputs.detach(self.output)
            self.output = None

    def latched(self, address: tuple) -> None:
        if self.output is not None and self.output.sockaddr[:2] != address[:2]:
            log.info("sip call %s: media latched to %s:%d (SDP said %s:%d)", self.id,
                     address[0], address[1], *self.output.sockaddr[:2])
            self.output.retarget(address)

    def hold(self, on_hold: bool) -> None:
        self.on_hold = on_hold
        if self.output is not None:
            self.output.paused = on_hold

    def switch_to(self, stream: Stream) -> None:
        """Hear another stream (DTMF): a new output on that stream's shared encoder."""
        if stream is self.stream:
            return
        old = self.stream
        old.remove_listener(self)  # type: ignore[arg-type]
        self.stream = stream
        stream.add_listener(self)  # type: ignore[arg-type]
        if self.output is not None and self.codec is not None and self.payload_type is not None:
            self.start_sending(self.codec, self.payload_type, self.output.sockaddr,
                               self.output.ptime, self.output.bitrate)
        log.info("sip call %s switched from %s to %s", self.id, old.name, stream.name)

    def note_digit(self, digit: str) -> str | None:
        """Record a DTMF digit; the collected command when one completes (`*12#` → "12")."""
        now = time.monotonic()
        self.digits.append({"digit": digit, "at": time.time()})
        return self.commands.feed(digit, now)

    # -- listener protocol ---------------------------------------------------------
    async def close(self, reason: str = "") -> None:
        await self.hangup(reason or "stopped")

    async def hangup(self, reason: str) -> None:
        if self.hangup_handler is not None:
            await self.hangup_handler(self, reason)

    def info(self) -> dict[str, Any]:
        output = self.output
        return {
            "id": self.id,
            "type": "sip",
            "direction": self.direction,
            "state": self.state,
            "status": self.status,
            "uri": self.peer,
            "stream": self.stream.name,
            "publish": self.publish_to.name if self.publish_to else None,
            "codec": self.codec.name if self.codec else None,
            "payload_type": self.payload_type,
            "on_hold": self.on_hold,
            "packets": output.packets if output else 0,
            "bytes": output.octets if output else 0,
            "drops": output.drops if output else 0,
            "errors": output.errors if output else 0,
            "media": self.media.info(),
            "dtmf": list(self.digits),
            "since": self.started,
            "answered": self.answered,
            "end_reason": self.end_reason or None,
        }
