"""What RED costs the WebRTC fan-out per listener and packet, and what building it once
per packet (not once per listener) saves.

    python bench/red_fanout.py [--listeners N] [--packets P] [--repeat R]

One process, no event loop: ``webrtc_fanout.send()`` is called for P real 20 ms Opus
packets of a 440 Hz tone (64 kb/s, from the gateway's own encoder) with N listener paths
that protect with real SRTP sessions (libsrtp, AES-CM-128/HMAC-SHA1-80) and send on one
UDP socket to a loopback port nobody reads (the kernel drops them after the syscall).
Four runs over the same packets, best of R, in the same process:

* plain: every listener gets plain Opus (the gateway before RED, and non-RED listeners);
* RED, once per packet: every listener negotiated RED (the fan-out as it is);
* RED, per listener: the RED payload rebuilt for each listener (what "once per packet"
  avoids), by giving each listener its own Opus payload type so nothing is shared;
* half and half: N/2 plain and N/2 RED listeners on one encoder.

Prints µs per packet (all listeners) and per listener-packet, and the payload bytes.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pylibsrtp import Policy, Session  # noqa: E402

from gateway.codecs.spec import OPUS  # noqa: E402
from gateway.codecs.transcode import Packetizer  # noqa: E402
from gateway.egress.encoders import EncodedPacket  # noqa: E402
from gateway.egress.webrtc_fanout import ListenerPath, mid_extension, send  # noqa: E402
from gateway.webrtc.aiortc_patches import srtp_protector  # noqa: E402


def opus_tone(packets: int) -> list[EncodedPacket]:
    packetizer = Packetizer(OPUS, 20, 64000)
    out = []
    for i in range(packets):
        n = np.arange(i * 960, (i + 1) * 960)
        frame = (np.sin(2 * np.pi * 440 * n / 48000) * 0.3 * 32767).astype(np.int16)
        for payload in packetizer.encode(frame):
            out.append(EncodedPacket(len(out) * 960, payload))
    return out


def paths(kinds: list[tuple[int, int | None]], sock: socket.socket, port: int) -> list:
    """A listener path per (Opus payload type, RED payload type or None)."""
    out = []
    for i, (opus_pt, red_pt) in enumerate(kinds):
        policy = Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        path = ListenerPath(
            payload_type=opus_pt, ssrc=0x1000 + i, extension=mid_extension(4, "0"),
            protect=srtp_protector(Session(policy=policy)), sendto=sock.sendto,
            address=("127.0.0.1", port), red_payload_type=red_pt)
        out.append(path)
    return out


def run(packets: list[EncodedPacket], listeners: list) -> float:
    """Seconds for every packet to every listener (send() as the fan-out calls it)."""
    start = time.perf_counter()
    previous = None
    for packet in packets:
        send(listeners, packet, previous)
        previous = packet
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--packets", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.listeners
    packets = opus_tone(args.packets)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    cases = {
        "plain Opus": [(111, None)] * n,
        "RED, built once per packet": [(111, 63)] * n,
        # a different Opus payload type per listener: nothing shared, one build each
        "RED, built per listener": [(i % 128, 63) for i in range(n)],
        "half plain, half RED": [(111, None if i % 2 else 63) for i in range(n)],
    }
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {n} listeners, {len(packets)} packets, "
          f"best of {args.repeat}")
    plain = sum(len(p.payload) for p in packets) / len(packets)
    print(f"# Opus payload {plain:.0f} B/packet; RED payload {plain * 2 + 5:.0f} B/packet")
    print("| listeners get | µs per packet (all listeners) | µs per listener-packet |")
    print("|---|---|---|")
    results = {}
    assert n <= 128, "at most 128 listeners (one Opus payload type each when per listener)"
    for name, kinds in cases.items():
        listeners = paths(kinds, sock, port)
        best = min(run(packets, listeners) for _ in range(args.repeat))
        assert all(p.errors == 0 for p in listeners), "send failed"
        per_packet = best / len(packets) * 1e6
        results[name] = per_packet
        print(f"| {name} | {per_packet:.0f} | {per_packet / n:.2f} |")
    base = results["plain Opus"]
    for name in list(cases)[1:]:
        print(f"# {name}: +{(results[name] / base - 1) * 100:.0f} % over plain")


if __name__ == "__main__":
    main()
