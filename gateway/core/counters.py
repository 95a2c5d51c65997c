"""Counters of outputs, senders and the gateway, as plain values that can be summed.

Objects that come and go (an RTP output, a WebRTC listener, a sender) report what they
counted as one of these; when one ends, its values are added to totals kept by something
that outlives it (its stream, or the gateway), so a sum never goes down.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class OutputCounters:
    """What an output sent (a recording: wrote)."""

    packets: int = 0  # recording: 20 ms frames (Opus packets) written
    bytes: int = 0  # payload bytes sent; recording: audio bytes written
    drops: int = 0  # full socket buffer; webrtc: packets skipped; recording: frames skipped
    errors: int = 0  # send errors; recording: 1 once it failed

    def add(self, other: OutputCounters) -> None:
        self.packets += other.packets
        self.bytes += other.bytes
        self.drops += other.drops
        self.errors += other.errors


@dataclass(slots=True)
class SenderCounters:
    """What a sender's playout (jitter buffer) counted."""

    packets: int = 0
    lost: int = 0
    late: int = 0
    concealed: int = 0
    underruns: int = 0
    fec_recovered: int = 0  # lost packets decoded from the next packet's in-band FEC
    red_recovered: int = 0  # lost packets played from a RED copy (counted in lost too)
    plc_concealed: int = 0  # lost packets' worth of audio made by the codec's own PLC

    def add(self, other: SenderCounters) -> None:
        self.packets += other.packets
        self.lost += other.lost
        self.late += other.late
        self.concealed += other.concealed
        self.underruns += other.underruns
        self.fec_recovered += other.fec_recovered
        self.red_recovered += other.red_recovered
        self.plc_concealed += other.plc_concealed


@dataclass(slots=True)
class SenderStats:
    """A sender's counters and what its playout measures now."""

    counters: SenderCounters
    delay_s: float  # packet arrival to decode, moving average
    delay_max_s: float
    jitter_target_s: float
    last_packet: float | None  # monotonic time of the last packet, None before the first


@dataclass(slots=True)
class GatewayCounters:
    """Counters of one gateway, shared by its streams (never by two gateways)."""

    encoders_created: int = 0
