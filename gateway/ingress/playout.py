"""From arriving RTP payloads to one canonical frame per media clock tick.

Shared by every ingress that receives RTP (WebRTC, plain RTP, SIP): the jitter buffer
orders and bounds, decoders turn payloads into 48 kHz samples, a small sample queue
re-cuts any packet time to 20 ms frames, and losses are concealed.

A lost packet is, best first: decoded from the in-band FEC of the packet after it
(Opus, when that packet is in the jitter buffer), concealed by the codec's own PLC
(libopus, G.711 Appendix I style), or, for codecs without one (G.722, L16), the last
packet repeated at falling gain. While the sender's Opus packets carry FEC the jitter
buffer keeps a missing packet's successor in reach (``keep_successor``). Reception
statistics (RFC 3550 A.1, A.3, A.8) are kept on the side for the receiver reports sent
back.
"""

from __future__ import annotations

import enum
import time

import numpy as np

from ..codecs.spec import CodecSpec
from ..codecs.transcode import Decoder, make_decoder
from ..core.audio import FRAME_SAMPLES, SAMPLE_RATE
from ..core.counters import SenderCounters, SenderStats
from ..models.info import PlayoutInfo
from ..rtp.feedback import SourceReception
from ..rtp.jitter import JitterBuffer, Pop
from ..rtp.packet import ReceiverStats
from ..rtp.rtcp import ReportBlock
from .concealment import Concealer
from .red import RedSplitter


class Concealment(enum.Enum):
    """How far loss handling may go (the gateway uses FEC; the others are baselines for
    tests and benchmarks)."""

    FEC = "fec"  # in-band FEC, else the codec's PLC, else fade-repeat
    PLC = "plc"  # the codec's PLC, else fade-repeat
    FADE = "fade"  # fade-repeat only (the gateway before FEC and PLC)


#: A trim waits this many packets for a quiet one (5 s of 20 ms packets).
TRIM_PATIENCE = 250
#: The shortest packet the jitter buffer's capacity is counted in (10 ms).
MIN_PACKET_SAMPLES = FRAME_SAMPLES // 2
#: A packet below this RMS (-40 dBFS) is a pause: dropping it is not heard.
QUIET_RMS = 328.0
#: The cross-fade over a trim's seam: 2.5 ms.
SEAM_SAMPLES = 120
_RAMP = np.linspace(0.0, 1.0, SEAM_SAMPLES)


def _quiet(pcm: np.ndarray) -> bool:
    x = pcm.astype(np.float32)
    return bool(len(x)) and float(np.dot(x, x)) < QUIET_RMS * QUIET_RMS * len(x)


class Playout:
    def __init__(self, codecs: dict[int, CodecSpec], min_depth: int = 1, max_depth: int = 3,
                 concealment: Concealment = Concealment.FEC, burst_s: float = 0.0):
        self.codecs = dict(codecs)  # payload type -> codec
        self.jitter = JitterBuffer(min_depth=min_depth, max_depth=max_depth, defer_trim=True)
        self.concealment = concealment
        self.last_packet: float | None = None  # monotonic time of the last packet
        self.unknown_payload = 0
        self.frames = 0
        self.delay_ms_max = 0.0
        self.delay_ms_avg = 0.0
        self._decoders: dict[int, Decoder] = {}
        self._fifo = np.zeros(0, dtype=np.int16)
        self._conceal = Concealer()
        self._last: Decoder | None = None  # decoder of the last packet played
        self.fec_recovered = 0  # lost packets decoded from their successor's in-band FEC
        self.plc_concealed = 0  # packets' worth of audio made by the codec's own PLC
        self._trim_wait = 0  # packets played since a trim fell due
        #: Samples (48 kHz) in the last packet played: the jitter buffer's depth is in
        #: packets, so its delay is this many times its depth (senders may pack 180 ms).
        self.packet_samples = FRAME_SAMPLES
        #: Audio the jitter buffer holds at least, whatever the packet length, for
        #: senders that send that much at once (else twice its maximum depth).
        self.burst_s = burst_s
        self._packets_of(FRAME_SAMPLES)
        #: RED (RFC 2198) payload types: split, primary played, copies fill losses.
        self.red_payload_types: set[int] = set()
        self.red = RedSplitter(self.codecs)
        #: The current source's reception statistics, for receiver reports.
        self.source = SourceReception(self.clock_rate())

    def push(self, seq: int, payload_type: int, payload: bytes, ssrc: int,
             timestamp: int = 0) -> None:
        """One arrived packet (called per packet on the event loop)."""
        now = time.monotonic()
        self.source.packet(ssrc, seq, timestamp, now)
        if payload_type in self.red_payload_types:
            self._push_red(seq, payload, ssrc, now)
            return
        self._push_media(seq, payload_type, payload, ssrc, now)

    def _push_media(self, seq: int, payload_type: int, payload: bytes, ssrc: int,
                    now: float) -> None:
        if payload_type not in self.codecs:
            self.unknown_payload += 1
            return
        self.last_packet = now
        self.jitter.push(seq, (payload_type, payload, now), ssrc)

    def _push_red(self, seq: int, payload: bytes, ssrc: int, now: float) -> None:
        split = self.red.split(payload)
        if split is None:
            return
        payload_type, primary, copies = split
        if payload_type not in self.codecs:  # an unknown codec, or RED in RED
            self.unknown_payload += 1
            return
        self._push_media(seq, payload_type, primary, ssrc, now)
        for distance, block_type, data in copies:
            self.jitter.fill((seq - distance) & 0xFFFF, (block_type, data, self.last_packet),
                             ssrc)

    def pull(self) -> np.ndarray | None:
        """This tick's frame, or None if nothing is there to play."""
        while len(self._fifo) < FRAME_SAMPLES:
            got = self.jitter.pop()
            if got is Pop.EMPTY:
                return None
            if got is Pop.LOST:
                pcm = self._lost()
            else:
                pt, payload, arrived = got
                decoder = self._last = self._decoder(pt)
                pcm = decoder.decode(payload)
                if len(pcm) != self.packet_samples and len(pcm):
                    self._packets_of(len(pcm))
                if self.jitter.trim_due:
                    pcm = self._trim(pcm)
                elif self._trim_wait:
                    self._trim_wait = 0
                self._conceal.remember(pcm)
                self.jitter.keep_successor = (getattr(decoder, "fec_seen", False)
                                              and self.concealment is Concealment.FEC)
                self._note_delay(time.monotonic() - arrived)
            self._fifo = pcm if not len(self._fifo) else np.concatenate((self._fifo, pcm))
        frame, self._fifo = self._fifo[:FRAME_SAMPLES], self._fifo[FRAME_SAMPLES:]
        self.frames += 1
        return frame

    @property
    def red_recovered(self) -> int:
        """Lost packets played from a RED copy (counted by the jitter buffer as it plays
        them: a copy that came too late or was replaced by its packet does not count)."""
        return self.jitter.stats.recovered

    def _trim(self, pcm: np.ndarray) -> np.ndarray:
        """Give back the packet of excess depth at a quiet packet (``pcm``, just decoded):
        the next packet is played in its place. Speech pauses often, so this nearly
        always drops a pause; audio that never pauses is trimmed after TRIM_PATIENCE
        packets anyway. Either way the seam is cross-faded from ``pcm``'s start, the
        continuation of what played last."""
        self._trim_wait += 1
        if self._trim_wait <= TRIM_PATIENCE and not _quiet(pcm):
            return pcm
        got = self.jitter.trim()
        if got is None:
            return pcm
        self._trim_wait = 0
        pt, payload, _ = got
        decoder = self._last = self._decoder(pt)
        following = decoder.decode(payload).copy()
        n = min(SEAM_SAMPLES, len(pcm), len(following))
        ramp = _RAMP[:n] if n == SEAM_SAMPLES else np.linspace(0.0, 1.0, n)
        following[:n] = np.round(pcm[:n] * (1.0 - ramp) + following[:n] * ramp)
        return following

    def _lost(self) -> np.ndarray:
        """One lost packet's worth of audio, by the best means at hand."""
        decoder = self._last
        if decoder is not None and self.concealment is not Concealment.FADE:
            recover = getattr(decoder, "recover", None)
            if recover is not None and self.concealment is Concealment.FEC:
                following = self.jitter.peek()
                if following is not None and self._decoders.get(following[0]) is decoder:
                    pcm = recover(following[1])
                    if pcm is not None:
                        self.fec_recovered += 1
                        self._conceal.remember(pcm)
                        return pcm
            conceal = getattr(decoder, "conceal", None)
            if conceal is not None:
                self.plc_concealed += 1
                return conceal()
        return self._conceal.conceal()

    def clock_rate(self) -> int:
        """The RTP clock of the codecs (one per input; WebRTC sets them later: Opus)."""
        spec = next(iter(self.codecs.values()), None)
        return spec.clock_rate if spec is not None else 48000

    @property
    def reception(self) -> ReceiverStats | None:
        """The current source's ReceiverStats (None before its first packet)."""
        return self.source.stats

    @property
    def reports_sent(self) -> int:
        return self.source.reports

    def report_blocks(self, now: float | None = None) -> list[ReportBlock]:
        """The block for the next receiver report (starts a new fraction-lost interval);
        empty before the first packet. ``now`` is monotonic."""
        return self.source.report_blocks(time.monotonic() if now is None else now)

    def on_sender_report(self, ssrc: int, ntp_timestamp: int, now: float | None = None) -> None:
        """The source's SR: our next report echoes it (LSR, DLSR) so it measures the RTT."""
        self.source.sender_report(ssrc, ntp_timestamp, time.monotonic() if now is None else now)

    def _decoder(self, pt: int) -> Decoder:
        decoder = self._decoders.get(pt)
        if decoder is None:
            decoder = self._decoders[pt] = make_decoder(self.codecs[pt])
        return decoder

    def _note_delay(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self.delay_ms_max = max(self.delay_ms_max, ms)
        self.delay_ms_avg += (ms - self.delay_ms_avg) / 16.0

    def stats(self) -> SenderStats:
        jitter = self.jitter.stats
        return SenderStats(
            SenderCounters(jitter.received, jitter.lost, jitter.late, jitter.concealed,
                           jitter.underruns, self.fec_recovered, self.red_recovered,
                           self.plc_concealed),
            delay_s=self.delay_ms_avg / 1000, delay_max_s=self.delay_ms_max / 1000,
            jitter_target_s=self.jitter_target_ms / 1000, last_packet=self.last_packet)

    def _packets_of(self, samples: int) -> None:
        """Packets are ``samples`` long now: the jitter buffer holds at least ``burst_s``
        of them, counted as 10 ms each if shorter (a chunk's short tail, or a hostile
        1-sample packet, must not let it hold minutes)."""
        self.packet_samples = samples
        self.jitter.capacity = max(2 * self.jitter.max_depth, -(-round(
            self.burst_s * SAMPLE_RATE) // max(samples, MIN_PACKET_SAMPLES)))

    @property
    def jitter_target_ms(self) -> int:
        """The delay the jitter buffer aims for: its depth in packets, in time."""
        return self.jitter.kept_depth * self.packet_samples // (SAMPLE_RATE // 1000)

    def info(self) -> PlayoutInfo:
        stats = self.jitter.stats
        return PlayoutInfo(
            frames=self.frames,
            packets=stats.received,
            lost=stats.lost,
            late=stats.late,
            concealed=stats.concealed,
            underruns=stats.underruns,
            fec_recovered=self.fec_recovered,
            red_recovered=self.red_recovered,
            plc_concealed=self.plc_concealed,
            unknown_payload=self.unknown_payload,
            red_malformed=self.red.malformed,
            jitter_target_ms=self.jitter_target_ms,
            delay_ms_avg=round(self.delay_ms_avg, 1),
            delay_ms_max=round(self.delay_ms_max, 1),
            interarrival_jitter_ms=round(self.reception.jitter_seconds * 1000, 2)
            if self.reception is not None else None,
            receiver_reports=self.reports_sent,
        )
