"""WHEP listener: the stream's shared encoder's packets out to one WebRTC peer.

The packets were encoded once for every listener on the same codec, and one fan-out per
encoder sends them to every listener (gateway/egress/webrtc_fanout.py). aiortc does the
signalling, ICE, DTLS and RTCP; its RTCRtpSender holds an idle track and sends no RTP.
The listener's receiver reports, routed to that sender, also reach the listener's
feedback (API) and its shared encoder (in-band FEC for the worst listener's loss).
"""

from __future__ import annotations

import asyncio
import logging

from aiortc import MediaStreamTrack, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError

from ..codecs.spec import OPUS
from ..core.counters import OutputCounters
from ..models.info import ListenerInfo
from ..webrtc.aiortc_patches import on_receiver_reports
from ..webrtc.session import WebRTCSession
from .encoders import shared_encoder
from .feedback import ListenerFeedback
from .webrtc_fanout import ListenerPath, WebRTCFanout, listener_path

log = logging.getLogger(__name__)


class IdleTrack(MediaStreamTrack):
    """The track aiortc's sender announces and waits on: recv() never returns a frame,
    so the sender's RTP coroutine sleeps (the fan-out sends) until the sender stops."""

    kind = "audio"

    async def recv(self):  # type: ignore[no-untyped-def]
        if self.readyState == "live":
            ended = asyncio.get_running_loop().create_future()
            self.once("ended", lambda: ended.done() or ended.set_result(None))
            await ended
        raise MediaStreamError


class WebRTCEgress(WebRTCSession):
    role = "listener"

    def __init__(self, pc, stream, opus_bitrate: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(pc, stream)
        self.opus_bitrate = opus_bitrate
        self.track = IdleTrack()
        self.transceiver: RTCRtpTransceiver | None = None
        self.fanout: WebRTCFanout | None = None
        self.path: ListenerPath | None = None
        self.feedback: ListenerFeedback | None = None

    def prepare(self, transceiver: RTCRtpTransceiver) -> None:
        assert self.codec is not None
        transceiver.direction = "sendonly"
        transceiver.sender.replaceTrack(self.track)
        self.transceiver = transceiver
        bitrate = self.opus_bitrate if self.codec is OPUS else None
        self.fanout = WebRTCFanout.join(shared_encoder(self.stream, self.codec, bitrate))
        self.feedback = ListenerFeedback(self.id, self.codec.clock_rate)
        self.feedback.attach(self.fanout.encoder)
        on_receiver_reports(transceiver.sender, self._on_reports)
        self.stream.outputs.add(self)

    def _on_reports(self, blocks: list, rtt: float | None) -> None:
        if self.feedback is not None:
            self.feedback.reports(blocks, rtt)

    def connected(self) -> None:
        if self.fanout is None or self.path is not None or self.closed.is_set():
            return
        assert self.transceiver is not None and self.payload_type is not None
        try:
            self.path = listener_path(self.pc, self.transceiver, self.payload_type,
                                      self.red_payload_type)
        except ConnectionError as exc:  # closed again before this ran
            log.info("listener %s: not sending: %s", self.id, exc)
            return
        self.fanout.start_sending(self.path)
        dtls = self.transceiver.sender.transport
        dtls.on("statechange", lambda: dtls.state == "connected" or self._stop_sending())

    def _stop_sending(self) -> None:
        """DTLS closed or failed (a close_notify, or ICE consent expired): no more RTP."""
        if self.fanout is not None and self.path is not None:
            self.fanout.stop_sending(self.path)

    def release(self) -> None:
        self.stream.outputs.remove(self)  # its counts so far go to the stream's totals
        if self.feedback is not None:
            self.feedback.detach()
        if self.fanout is not None:
            self.fanout.leave(self.path)
            self.fanout = None
        self.track.stop()

    @property
    def packets_sent(self) -> int:
        return self.path.packets if self.path else 0

    @property
    def skipped(self) -> int:
        """Packets this listener missed because its fan-out fell a whole ring behind."""
        path, fanout = self.path, self.fanout
        return fanout.skipped(path) if path and fanout else 0

    def counters(self) -> OutputCounters:
        path = self.path
        if path is None:
            return OutputCounters()
        return OutputCounters(packets=path.packets, bytes=path.octets,
                              drops=self.skipped + path.drops, errors=path.errors)

    def info(self) -> ListenerInfo:
        return ListenerInfo(**self.fields(), packets_sent=self.packets_sent,
                            skipped=self.skipped,
                            reception=self.feedback.info() if self.feedback else None)
