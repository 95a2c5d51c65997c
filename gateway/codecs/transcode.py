"""Encoders and decoders between canonical 48 kHz frames and codec payloads.

One encoder turns one canonical 20 ms frame into one RTP payload. Decoders return
48 kHz int16 samples of whatever duration the payload held.
"""

from __future__ import annotations

import fractions
from typing import Protocol

import av
import numpy as np

from ..core.audio import FRAME_SAMPLES, SAMPLE_RATE
from . import g711
from .resample import Resampler
from .spec import G722, OPUS, PCMA, PCMU, CodecSpec, check_ptime


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
    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._up = Resampler(spec.sample_rate, SAMPLE_RATE)
        self._decode = g711.ulaw_decode if spec is PCMU else g711.alaw_decode

    def decode(self, payload: bytes) -> np.ndarray:
        return self._up.process(self._decode(payload))


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
            ctx.options = {"application": "audio", "frame_duration": str(ptime)}
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
    if spec in (OPUS, G722):
        return PyAVDecoder(spec)
    raise ValueError(f"no decoder for {spec.name}")


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
    packet time; Opus encodes at the packet time itself (10/20/40/60 ms frames).
    """

    def __init__(self, spec: CodecSpec, ptime: int = 20, bitrate: int | None = None) -> None:
        self.spec = spec
        self.ptime = check_ptime(spec, ptime)
        self.timestamp_step = spec.timestamp_step(ptime)
        if spec is OPUS:
            self._opus: PyAVEncoder | None = PyAVEncoder(spec, bitrate, ptime)
        else:
            self._opus = None
            self._encoder = make_encoder(spec, bitrate)
            self._bytes_per_packet = BYTES_PER_SECOND[spec.name](spec) * ptime // 1000
            self._pending = b""

    def encode(self, frame: np.ndarray) -> list[bytes]:
        if self._opus is not None:
            return self._opus.encode_packets(frame)
        data = self._pending + (self._encoder.encode(frame) or b"")
        size = self._bytes_per_packet
        cut = len(data) - len(data) % size
        self._pending = data[cut:]
        return [data[i : i + size] for i in range(0, cut, size)]


__all__ = ["Encoder", "Decoder", "make_encoder", "make_decoder", "FRAME_SAMPLES"]
