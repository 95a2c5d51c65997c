"""Encoders and decoders between canonical 48 kHz frames and codec payloads.

One encoder turns one canonical 20 ms frame into one RTP payload. Decoders return
48 kHz int16 samples of whatever duration the payload held. Decoders of codecs with
their own loss concealment also have ``conceal()`` (one lost packet's worth of audio:
libopus PLC, G.711 Appendix I); the Opus decoder has ``recover(following)`` too (a lost
packet from the in-band FEC of the packet after it). Other codecs are concealed by the
ingress (fade-repeat).
"""

from __future__ import annotations

import fractions
import logging
from functools import cache
from typing import Protocol

import av
import numpy as np

from ..core.audio import FRAME_SAMPLES, SAMPLE_RATE
from . import g711, libopus
from .g711_plc import G711Concealer
from .opus_encoder import LibOpusEncoder
from .resample import Resampler
from .spec import G722, OPUS, PCMA, PCMU, CodecSpec, check_ptime

log = logging.getLogger(__name__)


class Encoder(Protocol):
    spec: CodecSpec

    def encode(self, frame: np.ndarray) -> bytes | None: ...


class Decoder(Protocol):
    spec: CodecSpec

    def decode(self, payload: bytes) -> np.ndarray: ...


class G711Encoder:
    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._down = Resampler(SAMPLE_RATE, spec.sample_rate)
        self._encode = g711.ulaw_encode if spec is PCMU else g711.alaw_encode

    def encode(self, frame: np.ndarray) -> bytes:
        return self._encode(self._down.process(frame))


class L16Encoder:
    """Linear 16-bit PCM in network byte order (RFC 3551 §4.5.11)."""

    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._down = Resampler(SAMPLE_RATE, spec.sample_rate)

    def encode(self, frame: np.ndarray) -> bytes:
        return self._down.process(frame).astype(">i2").tobytes()


class L16Decoder:
    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._up = Resampler(spec.sample_rate, SAMPLE_RATE)

    def decode(self, payload: bytes) -> np.ndarray:
        pcm = np.frombuffer(payload[: len(payload) // 2 * 2], dtype=">i2").astype(np.int16)
        return self._up.process(pcm)


class G711Decoder:
    """G.711 with Appendix I style concealment at 8 kHz, before the resampler."""

    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._up = Resampler(spec.sample_rate, SAMPLE_RATE)
        self._decode = g711.ulaw_decode if spec is PCMU else g711.alaw_decode
        self._plc = G711Concealer()
        self._last_samples = spec.sample_rate // 50

    def decode(self, payload: bytes) -> np.ndarray:
        pcm = self._decode(payload)
        if len(pcm):
            self._last_samples = len(pcm)
        return self._up.process(self._plc.received(pcm))

    def conceal(self) -> np.ndarray:
        """One lost packet (as long as the last one received)."""
        return self._up.process(self._plc.conceal(self._last_samples))


class PyAVEncoder:
    """Opus and G.722 through FFmpeg; input is resampled by our own stateful resampler."""

    def __init__(self, spec: CodecSpec, bitrate: int | None = None, ptime: int = 20) -> None:
        self.spec = spec
        name = "libopus" if spec is OPUS else spec.name.lower()
        ctx = av.CodecContext.create(name, "w")
        ctx.sample_rate = spec.sample_rate
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.time_base = fractions.Fraction(1, spec.sample_rate)
        if spec is OPUS:
            ctx.bit_rate = bitrate or 64000
            # constrained VBR: on a steady tone libopus's free VBR runs 30 % over the
            # bitrate; listeners' links and the cluster's budget need the rate asked for
            ctx.options = {"application": "audio", "frame_duration": str(ptime),
                           "vbr": "constrained"}
        self._ctx = ctx
        self._down = Resampler(SAMPLE_RATE, spec.sample_rate)
        self._pts = 0

    def encode_packets(self, frame: np.ndarray) -> list[bytes]:
        """All packets the codec completed with this frame (Opus may make 0, 1 or 2)."""
        pcm = self._down.process(frame)
        av_frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        av_frame.sample_rate = self.spec.sample_rate
        av_frame.pts = self._pts
        self._pts += len(pcm)
        return [bytes(p) for p in self._ctx.encode(av_frame)]

    def encode(self, frame: np.ndarray) -> bytes | None:
        return b"".join(self.encode_packets(frame)) or None


class PyAVDecoder:
    """Opus and G.722 decoding to 48 kHz mono (stereo Opus is down-mixed)."""

    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        name = "opus" if spec is OPUS else spec.name.lower()
        ctx = av.CodecContext.create(name, "r")
        ctx.sample_rate = spec.sample_rate
        ctx.layout = "mono"
        self._ctx = ctx
        self._up = Resampler(spec.sample_rate, SAMPLE_RATE)

    def decode(self, payload: bytes) -> np.ndarray:
        chunks = []
        for av_frame in self._ctx.decode(av.Packet(payload)):
            samples = av_frame.to_ndarray()
            if samples.dtype != np.int16:  # planar float from libopus
                samples = np.clip(samples * 32768.0, -32768, 32767)
            if samples.ndim == 2 and samples.shape[0] > 1:
                samples = samples.mean(axis=0)
            chunks.append(samples.reshape(-1).astype(np.int16))
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return self._up.process(np.concatenate(chunks))


#: Packets (10 s of 20 ms) after the last one with FEC that a sender still counts as adding it.
FEC_MEMORY = 500


class LibOpusDecoder:
    """Opus through libopus itself: 48 kHz mono out, PLC and in-band FEC for losses."""

    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._dec = libopus.OpusDecoder()
        self.invalid = 0  # payloads libopus refused (concealed instead)
        self._since_fec = FEC_MEMORY  # packets decoded since the last one carrying FEC

    @property
    def fec_seen(self) -> bool:
        """Whether the sender adds FEC (a packet of the last 10 s carried some): then a
        missing packet's successor is worth waiting one packet for. Silent and unvoiced
        packets carry none even then, so one packet does not decide."""
        return self._since_fec < FEC_MEMORY

    def decode(self, payload: bytes) -> np.ndarray:
        try:
            pcm = self._dec.decode(payload)
        except libopus.LibOpusError:
            self.invalid += 1
            return self._dec.conceal()
        self._since_fec = 0 if libopus.has_lbrr(payload) else self._since_fec + 1
        return pcm

    def conceal(self) -> np.ndarray:
        return self._dec.conceal()

    def recover(self, following: bytes) -> np.ndarray | None:
        try:
            return self._dec.recover(following)
        except libopus.LibOpusError:
            return None


def make_encoder(spec: CodecSpec, bitrate: int | None = None) -> Encoder:
    """A 20 ms encoder: one canonical frame in, one payload out."""
    if spec in (PCMU, PCMA):
        return G711Encoder(spec)
    if spec.name == "L16":
        return L16Encoder(spec)
    if spec in (OPUS, G722):
        return PyAVEncoder(spec, bitrate)
    raise ValueError(f"no encoder for {spec.name}")


def make_decoder(spec: CodecSpec) -> Decoder:
    if spec in (PCMU, PCMA):
        return G711Decoder(spec)
    if spec.name == "L16":
        return L16Decoder(spec)
    if spec is OPUS:
        if libopus.available():
            return LibOpusDecoder(spec)
        _warn_no_libopus()
    if spec in (OPUS, G722):
        return PyAVDecoder(spec)  # Opus too when libopus cannot be loaded: no PLC or FEC
    raise ValueError(f"no decoder for {spec.name}")


@cache
def _warn_no_libopus() -> None:
    try:
        libopus.library()
    except libopus.LibOpusError as exc:
        log.warning("Opus losses are faded, not concealed by libopus or FEC, and the "
                    "gateway's Opus encoders add no FEC: %s", exc)


#: Payload bytes per second of the sample codecs (fixed rate, no framing).
BYTES_PER_SECOND = {
    "PCMU": lambda spec: spec.sample_rate,  # one byte per sample
    "PCMA": lambda spec: spec.sample_rate,
    "G722": lambda spec: 8000,  # 64 kbit/s
    "L16": lambda spec: 2 * spec.sample_rate,
}


class Packetizer:
    """Canonical 20 ms frames in, payloads of ``ptime`` ms out.

    Sample codecs (G.711, G.722, L16) are encoded per frame and their bytes re-cut to the
    packet time; Opus encodes at the packet time itself (10/20/40/60 ms frames), through
    libopus directly so that its in-band FEC can follow listeners' reported loss.
    """

    def __init__(self, spec: CodecSpec, ptime: int = 20, bitrate: int | None = None) -> None:
        self.spec = spec
        self.ptime = check_ptime(spec, ptime)
        self.timestamp_step = spec.timestamp_step(ptime)
        self._opus: LibOpusEncoder | PyAVEncoder | None = None
        if spec is OPUS:
            if libopus.available():
                self._opus = LibOpusEncoder(bitrate or 64000, ptime)
            else:  # FEC cannot follow listeners' loss then (logged once)
                _warn_no_libopus()
                self._opus = PyAVEncoder(spec, bitrate, ptime)
        else:
            self._encoder = make_encoder(spec, bitrate)
            self._bytes_per_packet = BYTES_PER_SECOND[spec.name](spec) * ptime // 1000
            self._pending = b""

    @property
    def expected_loss(self) -> int | None:
        """The loss (percent) Opus's in-band FEC protects against; None for other codecs."""
        if self._opus is None:
            return None
        return self._opus.loss_percent if isinstance(self._opus, LibOpusEncoder) else 0

    def set_expected_loss(self, percent: int) -> None:
        """Opus: turn in-band FEC on for ``percent`` expected loss (0: off); others: no-op."""
        if isinstance(self._opus, LibOpusEncoder):
            self._opus.set_expected_loss(percent)

    def encode(self, frame: np.ndarray) -> list[bytes]:
        if self._opus is not None:
            return self._opus.encode_packets(frame)
        data = self._pending + (self._encoder.encode(frame) or b"")
        size = self._bytes_per_packet
        cut = len(data) - len(data) % size
        self._pending = data[cut:]
        return [data[i : i + size] for i in range(0, cut, size)]


__all__ = ["Encoder", "Decoder", "make_encoder", "make_decoder", "FRAME_SAMPLES"]
