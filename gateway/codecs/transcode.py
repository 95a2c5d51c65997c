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
from .spec import G722, OPUS, PCMA, PCMU, CodecSpec


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


class G711Decoder:
    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._up = Resampler(spec.sample_rate, SAMPLE_RATE)
        self._decode = g711.ulaw_decode if spec is PCMU else g711.alaw_decode

    def decode(self, payload: bytes) -> np.ndarray:
        return self._up.process(self._decode(payload))


class PyAVEncoder:
    """Opus and G.722 through FFmpeg; input is resampled by our own stateful resampler."""

    def __init__(self, spec: CodecSpec, bitrate: int | None = None) -> None:
        self.spec = spec
        name = "libopus" if spec is OPUS else spec.name.lower()
        ctx = av.CodecContext.create(name, "w")
        ctx.sample_rate = spec.sample_rate
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.time_base = fractions.Fraction(1, spec.sample_rate)
        if spec is OPUS:
            ctx.bit_rate = bitrate or 64000
            ctx.options = {"application": "audio", "frame_duration": "20"}
        self._ctx = ctx
        self._down = Resampler(SAMPLE_RATE, spec.sample_rate)
        self._pts = 0

    def encode(self, frame: np.ndarray) -> bytes | None:
        pcm = self._down.process(frame)
        av_frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        av_frame.sample_rate = self.spec.sample_rate
        av_frame.pts = self._pts
        self._pts += len(pcm)
        packets = self._ctx.encode(av_frame)
        return b"".join(bytes(p) for p in packets) if packets else None


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
    if spec in (PCMU, PCMA):
        return G711Encoder(spec)
    if spec in (OPUS, G722):
        return PyAVEncoder(spec, bitrate)
    raise ValueError(f"no encoder for {spec.name}")


def make_decoder(spec: CodecSpec) -> Decoder:
    if spec in (PCMU, PCMA):
        return G711Decoder(spec)
    if spec in (OPUS, G722):
        return PyAVDecoder(spec)
    raise ValueError(f"no decoder for {spec.name}")


__all__ = ["Encoder", "Decoder", "make_encoder", "make_decoder", "FRAME_SAMPLES"]
