"""A paced 440 Hz PCMU RTP source for the benchmarks: python bench/rtp_source.py PORT."""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.codecs.g711 import ulaw_encode  # noqa: E402


def main(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = np.arange(160)
    start, i = time.monotonic(), 0
    while True:
        pcm = (np.sin(2 * np.pi * 440 * (n + i * 160) / 8000) * 10000).astype(np.int16)
        header = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 7)
        sock.sendto(header + ulaw_encode(pcm), ("127.0.0.1", port))
        i += 1
        delay = start + i * 0.020 - time.monotonic()
        if delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    main(int(sys.argv[1]))
