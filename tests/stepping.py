"""Helpers for tests on a stepped media clock (``gateway_factory(stepped=True)``): a sender
that is a frame generator, and an RTP sender and sink that move in lockstep with the steps."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import numpy as np
from audio_checks import step_tone

from gateway.core.stream import Stream


class GeneratedSender:
    """A stream's sender whose frame n is ``generate(n)``: the test knows every sample the
    stream got, and at which tick (frame ``index`` is the next one pulled)."""

    kind = "test"

    def __init__(self, generate: Callable[[int], np.ndarray], id: str = "generated") -> None:
        self.id = id
        self.generate = generate
        self.index = 0

    def pull(self) -> np.ndarray:
        frame = self.generate(self.index)
        self.index += 1
        return frame

    def stats(self) -> None:
        return None  # no jitter buffer: no sender counters

    def info(self) -> dict:
        return {"id": self.id, "kind": self.kind, "frames": self.index}


def send_tone(gw, stream: str, freq: float | Callable[[int], np.ndarray]) -> GeneratedSender:
    """Attach a sender of a ``freq`` Hz tone (0.3 of full scale), or of any generator."""
    target: Stream = gw.gateway.registry.get_or_create(stream)
    sender = GeneratedSender(freq if callable(freq) else step_tone([freq]))
    target.attach(sender)  # type: ignore[arg-type]
    return sender


class LockstepRtp:
    """48 kHz L16 RTP into a gateway RTP input, one packet per step: packet i is sent, seen
    by the input, then played on the next tick (jitter buffer depth 1)."""

    def __init__(self, gw, port: int, input_id: str, stream: str) -> None:
        self.gw = gw
        self.port = port
        self.input = gw.gateway.rtp_inputs[input_id]
        self.stream = gw.gateway.registry.get(stream)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.seq = 0

    async def send(self, seconds: float, amplitude: float, freq: float = 1000.0) -> int:
        """Send and play ``seconds`` of a sine; the stream frame index of the first one."""
        first = self.stream.ring.head
        for _ in range(round(seconds * 50)):
            n = np.arange(self.seq * 960, (self.seq + 1) * 960)
            pcm = (amplitude * np.sin(2 * np.pi * freq * n / 48000)).astype(">i2")
            header = struct.pack("!BBHII", 0x80, 120, self.seq & 0xFFFF, self.seq * 960, 0xABC)
            received = self.input.playout.jitter.stats.received
            self.sock.sendto(header + pcm.tobytes(), ("127.0.0.1", self.port))
            self.seq += 1
            async with asyncio.timeout(2):
                while self.input.playout.jitter.stats.received == received:
                    await asyncio.sleep(0)
            await self.gw.step(1)
        return first

    def close(self) -> None:
        self.sock.close()


class RtpSink:
    """A UDP socket collecting the RTP packets (not the RTCP) that reach it; it reads on
    every loop iteration, so stepping hundreds of frames never overflows its buffer."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self.rtcp: list[bytes] = []
        asyncio.get_running_loop().add_reader(self.sock, self.drain)

    def drain(self) -> list[bytes]:
        """Every RTP packet that arrived so far (the fan-out sends as it reads a packet)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.packets
            if len(data) >= 12 and 200 <= data[1] <= 204:
                self.rtcp.append(data)
            else:
                self.packets.append(data)

    async def wait_for(self, count: int, timeout: float = 2.0) -> list[bytes]:
        """The packets, once ``count`` arrived (multicast loops back through the kernel's
        backlog, a moment after the send)."""
        async with asyncio.timeout(timeout):
            while len(self.drain()) < count:
                await asyncio.sleep(0.005)
        return self.packets

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()


async def until(condition: Callable[[], object], timeout: float = 2.0) -> None:
    """Yield to the loop until ``condition()`` holds (a packet sent on another socket has
    been handled); TimeoutError after ``timeout`` real seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)
