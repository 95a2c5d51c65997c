"""The cost of the cluster hop: latency, NATS bytes and CPU of a stream heard on another node.

    python bench/cluster_hop.py [--seconds 20] [--streams 20] [--json out.json]

Three gateway nodes (processes) on 127.0.0.1 join one nats-server (with its monitoring
port). Two measurements:

1. **Latency.** One WHIP publisher on node A sends a 1 kHz tone in 40 ms bursts, twice a
   second. The stream leaves A (local), B and C (remote) as plain RTP outputs (L16,
   48 kHz: no client jitter buffer in the way) to this process, which times each burst's
   onset to the sample: arrival of the packet holding it, minus the samples after it.
   The remote hop's added latency is a remote output's onset minus the local output's
   onset for the same burst (p50, p99, max).
2. **Subscription cost.** ``--streams`` streams are published on A through RTP inputs
   (PCMU from this process) and each is read on B by one RTP output to a closed port (so B
   decodes, re-encodes and sends, as for any reader). NATS bytes received by B's
   connection (from the server's /connz) per stream against the Opus payload bitrate;
   B's CPU (utime + stime from /proc) with the streams remote, against the same streams
   published on B itself (the same readers with no hop), per stream.

Run it on an otherwise idle machine; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.cluster.server import find_binary  # noqa: E402
from gateway.codecs.g711 import ulaw_encode  # noqa: E402
from gateway.webrtc.client import Publisher, ToneTrack  # noqa: E402

RATE = 48000
FRAME = 960
BURST_EVERY = 25  # frames: a burst every 0.5 s
BURST_FRAMES = 2  # 40 ms
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bursts(index: int) -> np.ndarray:
    if index % BURST_EVERY >= BURST_FRAMES:
        return np.zeros(FRAME, dtype=np.int16)
    n = np.arange(index * FRAME, (index + 1) * FRAME)
    return (np.sin(2 * np.pi * 1000 * n / RATE) * 0.5 * 32767).astype(np.int16)


class Node:
    def __init__(self, name: str, nats_url: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT), GATEWAY_SIP__ENABLED="false",
                   GATEWAY_PROCESSING__ANALYSERS="false",
                   GATEWAY_RECORDING__DIRECTORY=tempfile.mkdtemp())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(self.port),
             "--ice-host", "127.0.0.1", "--nats-url", nats_url, "--node-name", name,
             "--log-level", "warning"], env=env)

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    async def api(self, method: str, path: str, body: dict | None = None) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + path, json=body) as r:
                return await r.json() if r.content_type.endswith("json") else {}

    async def ready(self) -> None:
        for _ in range(300):
            try:
                await self.api("GET", "/readyz")
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"node {self.name} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


class RtpTap(asyncio.DatagramProtocol):
    """Onset times of the bursts in an L16/48000 RTP output: the arrival time of the
    packet holding a burst's first sample, minus the samples after it in that packet."""

    def __init__(self) -> None:
        self.onsets: list[float] = []
        self.loud = False

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        now = time.monotonic()
        if len(data) < 12 or 200 <= data[1] <= 204:
            return
        pcm = np.frombuffer(data[12:], dtype=">i2").astype(np.int32)
        loud = np.abs(pcm) > 3000
        if loud.any() and not self.loud:
            first = int(np.argmax(loud))
            self.onsets.append(now - (len(pcm) - first) / RATE)
        self.loud = bool(loud[-len(loud) // 4:].any())


def added_latency(local: list[float], remote: list[float]) -> list[float]:
    """Per burst, remote onset minus the nearest local onset (ms)."""
    local_arr = np.array(local)
    out = []
    for t in remote:
        k = int(np.argmin(np.abs(local_arr - t)))
        delta = (t - local_arr[k]) * 1000
        if abs(delta) < 200:
            out.append(delta)
    return out


async def latency(nodes: list[Node], seconds: float) -> dict:
    """Publisher on A (WHIP); the same stream out of A, B and C as L16 RTP to this process."""
    a, b, c = nodes
    pub = Publisher(a.url, "hop", ToneTrack(generator=bursts))
    await pub.negotiate()
    await pub.connected()
    loop = asyncio.get_running_loop()
    taps = {}
    for node in nodes:
        transport, tap = await loop.create_datagram_endpoint(
            RtpTap, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        await node.api("POST", "/api/v1/streams/hop/outputs",
                       {"type": "rtp", "host": "127.0.0.1", "port": port, "codec": "L16",
                        "rate": 48000})
        taps[node.name] = (transport, tap)
    await asyncio.sleep(seconds)
    local = taps[a.name][1].onsets
    result = {"local_bursts": len(local)}
    for node in (b, c):
        added = added_latency(local, taps[node.name][1].onsets)
        result[node.name] = {
            "bursts": len(added),
            "p50_ms": round(float(np.percentile(added, 50)), 1),
            "p99_ms": round(float(np.percentile(added, 99)), 1),
            "max_ms": round(float(np.max(added)), 1),
        }
    cluster = await b.api("GET", "/api/v1/streams/hop")
    result["remote_sender_on_B"] = {k: cluster.get("sender", {}).get(k) for k in
                                    ("jitter_target_ms", "lost", "late", "underruns",
                                     "delay_ms_avg", "delay_ms_max")}
    for transport, _ in taps.values():
        transport.close()
    await pub.delete()
    return result


async def send_pcmu(ports: list[int], seconds: float) -> None:
    """A 440 Hz PCMU tone into each RTP input, paced at 20 ms."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 0.3 * 32767
    ulaw = ulaw_encode(tone.astype(np.int16))  # one second; 440 Hz repeats exactly
    start = time.monotonic()
    for i in range(int(seconds * 50)):
        payload = ulaw[(i % 50) * 160:(i % 50 + 1) * 160]
        for port in ports:
            header = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * 160, port)
            sock.sendto(header + payload, ("127.0.0.1", port))
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    sock.close()


async def published_payload(node: Node) -> int:
    """Opus payload bytes the node has published to the cluster so far (all streams)."""
    body = await node.api("GET", "/api/v1/cluster")
    return sum(p["bytes"] - 12 * p["packets"] for p in body.get("publishing", {}).values())


async def connz_out_bytes(monitor: int, name: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{monitor}/connz?limit=1000") as r:
            body = await r.json()
    return sum(c["out_bytes"] for c in body["connections"]
               if c.get("name", "").endswith(f" {name}"))


async def subscriptions(nodes: list[Node], monitor: int, count: int, seconds: float) -> dict:
    a, b, _ = nodes
    blackhole = free_port(socket.SOCK_DGRAM)  # nothing listens: packets are dropped
    results = {}
    for where, publisher in (("remote", a), ("local", b)):
        ports = []
        for i in range(count):
            name = f"{where}-{i}"
            port = free_port(socket.SOCK_DGRAM)
            await publisher.api("POST", f"/api/v1/streams/{name}/inputs",
                                {"type": "rtp", "port": port, "codec": "PCMU"})
            ports.append(port)
            await b.api("POST", f"/api/v1/streams/{name}/outputs",
                        {"type": "rtp", "host": "127.0.0.1", "port": blackhole,
                         "codec": "PCMU"})
        feeder = asyncio.create_task(send_pcmu(ports, seconds + 6))
        await asyncio.sleep(3)  # subscriptions up, jitter buffers settled
        pub0 = await published_payload(a)
        cpu0, bytes0, t0 = b.cpu(), await connz_out_bytes(monitor, b.name), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, bytes1, t1 = b.cpu(), await connz_out_bytes(monitor, b.name), time.monotonic()
        pub1 = await published_payload(a)
        feeder.cancel()
        wall = t1 - t0
        results[where] = {"cpu_cores": round((cpu1 - cpu0) / wall, 4),
                          "nats_bytes_per_s": round((bytes1 - bytes0) / wall),
                          "opus_payload_bytes_per_s": round((pub1 - pub0) / wall)}
        for i in range(count):
            body = await b.api("GET", f"/api/v1/streams/{where}-{i}/outputs")
            for output in body.get("outputs", []):
                await b.api("DELETE", f"/api/v1/streams/{where}-{i}/outputs/{output['id']}")
        await asyncio.sleep(4)  # the remote streams' subscriptions end
    per_stream_bytes = results["remote"]["nats_bytes_per_s"] / count
    opus_payload = results["remote"]["opus_payload_bytes_per_s"] / count
    return {
        "streams": count,
        **results,
        "cpu_per_remote_stream_cores": round(
            (results["remote"]["cpu_cores"] - results["local"]["cpu_cores"]) / count, 5),
        "nats_bytes_per_stream_per_s": round(per_stream_bytes),
        "opus_payload_bytes_per_stream_per_s": round(opus_payload),
        "ratio_to_opus_payload": round(per_stream_bytes / max(opus_payload, 1), 3),
    }


def prioritise(shares: int) -> None:
    """This process and everything it starts in a CPU cgroup of high shares (no quota)."""
    group = Path("/sys/fs/cgroup/cpu/gwbench-hop")
    try:
        group.mkdir(exist_ok=True)
        (group / "cpu.shares").write_text(str(shares))
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        print(f"(running at normal priority: {exc})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--json")
    parser.add_argument("--shares", type=int, default=8192,
                        help="cgroup v1 cpu.shares for this run (root only; 1024 is the "
                             "default): other work on the machine does not delay it")
    args = parser.parse_args()
    prioritise(args.shares)
    port, monitor = free_port(), free_port()
    store = tempfile.mkdtemp()
    nats = subprocess.Popen([find_binary(), "-a", "127.0.0.1", "-p", str(port), "-js",
                             "-sd", store, "-m", str(monitor)],
                            stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    nodes = [Node(name, url) for name in ("A", "B", "C")]
    try:
        for node in nodes:
            await node.ready()
        await asyncio.sleep(2)
        result = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
                       f" Python {platform.python_version()}",
            "latency": await latency(nodes, args.seconds),
            "subscription": await subscriptions(nodes, monitor, args.streams, args.seconds),
        }
    finally:
        for node in nodes:
            node.stop()
        nats.terminate()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
