"""The obvious RTP fan-out, for comparison: one task and one encoder per destination.

    python bench/rtp_baseline.py PORT [PORT ...]

Each destination's task resamples and encodes the same 440 Hz tone itself and paces
itself with asyncio.sleep. Used by bench/rtp_fanout.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.codecs.spec import PCMU  # noqa: E402
from gateway.codecs.transcode import make_encoder  # noqa: E402

n = np.arange(48000)
TONE = (np.sin(2 * np.pi * 440 * n / 48000) * 10000).astype(np.int16)


async def destination(sock: socket.socket, port: int) -> None:
    loop = asyncio.get_running_loop()
    encoder = make_encoder(PCMU)
    seq, ts, i = 0, 0, 0
    deadline = loop.time()
    while True:
        frame = TONE[(i % 50) * 960 : (i % 50 + 1) * 960]
        payload = encoder.encode(frame)
        sock.sendto(struct.pack("!BBHII", 0x80, 0, seq, ts, port) + payload, ("127.0.0.1", port))
        seq, ts, i = (seq + 1) & 0xFFFF, ts + 160, i + 1
        deadline += 0.020
        await asyncio.sleep(max(0.0, deadline - loop.time()))


async def main(ports: list[int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    await asyncio.gather(*(destination(sock, p) for p in ports))


if __name__ == "__main__":
    asyncio.run(main([int(p) for p in sys.argv[1:]]))
