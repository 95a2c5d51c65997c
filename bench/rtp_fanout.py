"""RTP fan-out benchmark: one stream to N plain-RTP destinations (PCMU, 20 ms).

    python bench/rtp_fanout.py [--steps 100,250,500,1000,1500] [--window 10] [--quick]

For each N the gateway runs as its own process (`python -m gateway serve`), a source
feeds its stream through an RTP input (a 440 Hz PCMU tone), and N outputs are created
through the HTTP API towards N UDP sockets owned by a separate receiver process. Over
a fixed window the benchmark reports:

* gateway CPU (utime + stime from /proc, all threads) in % of one core, and per
  destination;
* delivered ratio: distinct packets received / packets expected, per destination from
  the first to the last RTP sequence number seen in the window (a lost packet leaves a
  hole; window edges do not count); and the real-time rate: packets received / (N ×
  window × 50), below 100 % when a server cannot keep up even if it loses nothing;
* p99 of |inter-arrival − 20 ms| over consecutive packets of every destination, from
  the kernel's receive timestamps (SO_TIMESTAMPNS), so the receiver's own scheduling
  does not count: on loopback this is the send-interval deviation.

Baseline, same machine and same run: the obvious design, one asyncio task and one
encoder (resampler + G.711) per destination, each pacing itself with asyncio.sleep
(bench/rtp_baseline.py). Its numbers are printed beside the gateway's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import selectors
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def kernel_time(ancdata: list, fallback: float) -> float:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec + nsec / 1e9
    return fallback


def receiver(n: int, settle: float, window: float, conn) -> None:  # type: ignore[no-untyped-def]
    """N sockets; after ``settle`` s, record (arrival, seq) for ``window`` s per socket."""
    socks = []
    sel = selectors.DefaultSelector()
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        # kernel arrival times: intervals measure the sender, not this process's scheduling
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append(s)
    conn.send([s.getsockname()[1] for s in socks])
    conn.recv()  # go: outputs exist
    start = time.monotonic() + settle
    end = start + window
    arrivals: list[list[float]] = [[] for _ in range(n)]
    seqs: list[list[int]] = [[] for _ in range(n)]
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for key, _ in sel.select(timeout=0.05):
            sock = key.fileobj
            while True:
                try:
                    data, ancdata, _, _ = sock.recvmsg(2048, 64)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                t = time.monotonic()
                if len(data) < 12 or 192 <= data[1] <= 223:
                    continue  # RTCP sent to port + 1, which is another destination's port
                if start <= t < end:
                    arrivals[key.data].append(kernel_time(ancdata, t))
                    seqs[key.data].append(int.from_bytes(data[2:4], "big"))
    received = sum(len(set(s)) for s in seqs)
    # expected from the sequence numbers seen: first to last, per destination (wrap-safe)
    expected = sum(((s[-1] - s[0]) & 0xFFFF) + 1 for s in seqs if s)
    deviations = []
    for a in arrivals:
        if len(a) > 1:
            deviations.append(np.abs(np.diff(np.asarray(a)) - 0.020))
    dev = np.concatenate(deviations) if deviations else np.zeros(1)
    p99 = float(np.percentile(dev, 99) * 1000)
    conn.send({"received": received, "expected": expected, "p99_ms": p99, "window": window})
    for s in socks:
        s.close()


def api(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def start_source(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "rtp_source.py"), str(port)])


def run_gateway_step(n: int, settle: float, window: float) -> dict:
    http_port = free_udp_port()
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--port",
            str(http_port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{http_port}"
    for _ in range(100):
        try:
            api(base + "/healthz")
            break
        except OSError:
            time.sleep(0.1)
    in_port = free_udp_port()
    api(
        base + "/api/v1/streams/bench/inputs",
        "POST",
        {"type": "rtp", "port": in_port, "codec": "PCMU"},
    )
    source = start_source(in_port)
    parent, child = mp.Pipe()
    rx = mp.Process(target=receiver, args=(n, settle, window, child))
    rx.start()
    ports = parent.recv()
    for port in ports:
        api(
            base + "/api/v1/streams/bench/outputs",
            "POST",
            {"type": "rtp", "host": "127.0.0.1", "port": port, "codec": "PCMU", "ptime": 20},
        )
    row = measure(gw.pid, parent, rx, n, settle, window)
    outputs = api(base + "/api/v1/streams/bench/outputs")["outputs"]
    row["drops"] = sum(o["drops"] + o["errors"] for o in outputs)
    row["encoders"] = len(api(base + "/api/v1/streams/bench")["encoders"])
    source.terminate()
    gw.terminate()
    gw.wait(10)
    return row


def measure(pid: int, parent, rx, n: int, settle: float, window: float) -> dict:  # type: ignore
    """Start the receiver's window, time the server's CPU over it, collect the results."""
    parent.send("go")
    time.sleep(settle)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    result = parent.recv()
    rx.join()
    cpu = (c1 - c0) / (t1 - t0)
    return {
        "n": n,
        "cpu_pct": cpu * 100,
        "cpu_per_dest_pct": cpu * 100 / n,
        "delivered": result["received"] / max(1, result["expected"]),
        "rate": result["received"] / (n * result["window"] * 50),
        "p99_ms": result["p99_ms"],
        "drops": 0,
        "encoders": n,
    }


def run_baseline_step(n: int, settle: float, window: float) -> dict:
    parent, child = mp.Pipe()
    rx = mp.Process(target=receiver, args=(n, settle, window, child))
    rx.start()
    ports = parent.recv()
    base = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "rtp_baseline.py"), *map(str, ports)], cwd=ROOT
    )
    time.sleep(0.5)
    row = measure(base.pid, parent, rx, n, settle, window)
    base.terminate()
    base.wait(10)
    return row


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="100,250,500,1000,1500")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="two small steps, 3 s windows")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    if args.quick:
        steps, args.window, args.settle = [50, 200], 3.0, 1.5
    print(f"# RTP fan-out, PCMU 20 ms; {machine()}")
    header = (
        f"{'server':<9}{'N':>6}{'CPU %':>8}{'CPU %/dest':>12}{'delivered':>11}{'rate':>9}"
        f"{'p99 ms':>8}"
        f"{'drops':>7}{'encoders':>9}"
    )
    print(header)
    for n in steps:
        for name, step in (("gateway", run_gateway_step), ("baseline", run_baseline_step)):
            r = step(n, args.settle, args.window)
            print(
                f"{name:<9}{r['n']:>6}{r['cpu_pct']:>8.1f}{r['cpu_per_dest_pct']:>12.4f}"
                f"{r['delivered'] * 100:>10.3f}%{r['rate'] * 100:>8.2f}%{r['p99_ms']:>8.2f}"
                f"{r['drops']:>7}{r['encoders']:>9}",
                flush=True,
            )


if __name__ == "__main__":
    main()
