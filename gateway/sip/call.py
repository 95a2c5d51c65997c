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
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.core.ids import new_id

from ..codecs.spec import CodecSpec
from ..core.counters import OutputCounters, SenderStats
from ..core.stream import Stream
from ..egress.feedback import ListenerFeedback
from ..egress.rtp import RtpOutput, RtpOutputs
from ..models.info import SipCallInfo, SipSenderInfo
from ..rtp.feedback import blocks_about
from ..rtp.rtcp import RtcpPacket
from .dialog import Dialog
from .dtmf import DigitCommands
from .media import CallMedia
from .sdes import Crypto

if TYPE_CHECKING:
    from .message import Request
    from .transaction import ClientTransaction, ServerTransaction

log = logging.getLogger(__name__)

class SipSource:
    """The phone's audio as a stream's sender (a FrameSource)."""

    kind = "sip"

    def __init__(self, call: SipCall) -> None:
        self.call = call
        self.id = call.id

    def stats(self) -> SenderStats | None:
        return self.call.media.stats()

    def pull(self) -> np.ndarray | None:
        return self.call.media.pull()

    def info(self) -> SipSenderInfo:
        return SipSenderInfo(id=self.id, kind="sip", peer=self.call.peer,
                             **vars(self.call.media.info()))

    async def close(self, reason: str = "") -> None:
        await self.call.hangup(reason or "replaced")


class SipCall:
    """A call in either direction, listed among its stream's outputs (type "sip")."""

    kind = "sip"

    def __init__(self, direction: str, peer: str, stream: Stream, media: CallMedia,
                 outputs: RtpOutputs) -> None:
        self.id = new_id(8)
        self.direction = direction  # "in" (dial-in) or "out" (dial-out)
        self.peer = peer  # the phone's URI
        self.stream = stream  # what the phone hears
        self.publish_to: Stream | None = None  # where the phone's audio goes, if anywhere
        self.media = media
        self.outputs = outputs
        self.output: RtpOutput | None = None
        #: What earlier outputs of this call sent (one is replaced on re-INVITE or switch).
        self._sent_before = OutputCounters()
        #: What it sent while it heard other streams (DTMF switch): counted on those.
        self._sent_elsewhere = OutputCounters()
        self.source: SipSource | None = None
        self.state = "calling" if direction == "out" else "ringing"
        self.status: int | None = None  # last SIP status seen (dial-out)
        self.end_reason = ""
        self.cancelled = False  # hung up (DELETE, dial timeout) before it was answered
        self.dialog: Dialog | None = None
        self.flow: tuple[str, str, int] | None = None  # where in-dialog requests go
        self.invite_tx: ClientTransaction | ServerTransaction | None = None
        #: Dial-out: the ACK of the answer, sent again for each retransmission of the 2xx
        #: (RFC 3261 §13.2.2.4: the first one may have been lost).
        self.ack: Request | None = None
        self.codec: CodecSpec | None = None
        self.payload_type: int | None = None
        self.on_hold = False
        #: Our 2xx named an address the phone has not proven yet: media waits for its ACK,
        #: or for its RTP (then it goes where that comes from), so an INVITE naming
        #: somebody else's address cannot make the gateway stream at them.
        self.awaiting_ack = False
        self.local_sdp = ""  # our last SDP (offer or answer), for offerless re-INVITEs
        self.sdp_session = secrets.randbits(31)
        self.offered_key: Crypto | None = None  # dial-out: our SDES key, until the answer
        self.sdp_version = 1
        self.started = time.time()
        self.answered: float | None = None
        self.digits: deque[dict[str, Any]] = deque(maxlen=32)
        self.commands = DigitCommands()
        self.hangup_handler = None  # set by the service: async (call, reason) -> None
        #: The phone's receiver reports about what it hears (API, and the encoder's FEC).
        self.feedback = ListenerFeedback(self.id, 8000)
        media.on_rtcp = self._rtcp

    # -- media -----------------------------------------------------------------------
    def start_sending(self, spec: CodecSpec, payload_type: int, sockaddr: tuple,
                      ptime: int = 20, bitrate: int | None = None) -> None:
        """(Re)start the stream → phone packets with this codec, from the call's socket."""
        self.stop_sending()
        family = socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET
        output = RtpOutput(self.stream, spec, ptime, sockaddr[0], family, sockaddr,
                           payload_type=payload_type, bitrate=bitrate, kind="sip")
        output.sock = self.media.sock
        output.rtcp_sock = self.media.rtcp_sock
        output.report_blocks = self.media.report_blocks
        output.srtp = self.media.srtp
        self.media.reception.clock_rate = spec.clock_rate
        if self.media.remote is not None:
            self._retarget(output, self.media.remote)
        self.output = output
        self._gate()
        self.codec, self.payload_type = spec, payload_type
        self.outputs.attach(output)
        self.feedback.clock_rate = spec.clock_rate
        self.feedback.attach(output.group.encoder if output.group is not None else None)

    def _retarget(self, output: RtpOutput, address: tuple) -> None:
        output.retarget(address)
        if self.media.rtcp_remote is not None:  # the phone's RTCP comes from elsewhere
            output.rtcp_sockaddr = self.media.rtcp_remote

    def _rtcp(self, packets: list[RtcpPacket], address: tuple) -> None:
        """The phone's RTCP: its reports about our stream, and where its RTCP comes from."""
        output = self.output
        if output is None:
            return
        if address[0] == output.sockaddr[0]:  # the phone's own host: no reflection elsewhere
            self.media.rtcp_remote = output.rtcp_sockaddr = address
        blocks = blocks_about(packets, output.ssrc)
        if blocks:
            self.feedback.reports(blocks, wall=time.time())

    def stop_sending(self) -> None:
        self.feedback.detach()
        if self.output is not None:
            self.outputs.detach(self.output)
            self._sent_before.add(self.output.counters())
            self.output = None

    def sent(self) -> dict[str, int]:
        """Packets and bytes sent to the phone (and drops, errors) over the whole call."""
        return asdict(self._sent_total())

    def _sent_total(self) -> OutputCounters:
        total = replace(self._sent_before)
        if self.output is not None:
            total.add(self.output.counters())
        return total

    def counters(self) -> OutputCounters:
        """What it sent to the phone from the stream it hears now."""
        total, elsewhere = self._sent_total(), self._sent_elsewhere
        return OutputCounters(total.packets - elsewhere.packets, total.bytes - elsewhere.bytes,
                              total.drops - elsewhere.drops, total.errors - elsewhere.errors)

    def latched(self, address: tuple) -> None:
        if self.output is not None and self.output.sockaddr[:2] != address[:2]:
            log.info("sip call %s: media latched to %s:%d (SDP said %s:%d)", self.id,
                     address[0], address[1], *self.output.sockaddr[:2])
            self._retarget(self.output, address)
        self._gate()

    def acked(self) -> None:
        self.awaiting_ack = False
        self._gate()

    def hold(self, on_hold: bool) -> None:
        self.on_hold = on_hold
        self._gate()

    def _gate(self) -> None:
        """Send unless on hold, or unless the destination is not yet proven (no ACK, no
        RTP from the phone)."""
        if self.output is not None:
            self.output.paused = self.on_hold or (self.awaiting_ack and self.media.remote is None)

    def switch_to(self, stream: Stream) -> None:
        """Hear another stream (DTMF): a new output on that stream's shared encoder."""
        if stream is self.stream:
            return
        old = self.stream
        old.outputs.remove(self)
        self._sent_elsewhere.add(self.counters())
        self.stream = stream
        stream.outputs.add(self)
        if self.output is not None and self.codec is not None and self.payload_type is not None:
            self.start_sending(self.codec, self.payload_type, self.output.sockaddr,
                               self.output.ptime, self.output.bitrate)
        log.info("sip call %s switched from %s to %s", self.id, old.name, stream.name)

    def note_digit(self, digit: str) -> str | None:
        """Record a DTMF digit; the collected command when one completes (`*12#` → "12")."""
        now = time.monotonic()
        self.digits.append({"digit": digit, "at": time.time()})
        return self.commands.feed(digit, now)

    # -- the Output protocol ---------------------------------------------------------
    async def close(self, reason: str = "") -> None:
        await self.hangup(reason or "stopped")

    async def hangup(self, reason: str) -> None:
        if self.hangup_handler is not None:
            await self.hangup_handler(self, reason)

    def info(self) -> SipCallInfo:
        return SipCallInfo(
            id=self.id,
            type="sip",
            direction=self.direction,  # type: ignore[arg-type]
            state=self.state,
            status=self.status,
            uri=self.peer,
            stream=self.stream.name,
            publish=self.publish_to.name if self.publish_to else None,
            codec=self.codec.name if self.codec else None,
            payload_type=self.payload_type,
            on_hold=self.on_hold,
            **self.sent(),
            media=self.media.info(),
            reception=self.feedback.info(),
            dtmf=list(self.digits),
            since=self.started,
            answered=self.answered,
            end_reason=self.end_reason or None,
        )
