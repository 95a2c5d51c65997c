"""Session churn: does the gateway give back its threads and memory when sessions end?

    python bench/churn.py [--rounds 20] [--listeners 5] [--hold 3] [--inspect]

Starts the gateway as its own process on 127.0.0.1, then, each round, connects one WHIP
publisher (a 440 Hz tone) and ``--listeners`` WHEP listeners from this process (aiortc
clients), keeps them ``--hold`` seconds, deletes them all and waits ``--settle`` seconds.
After each round it samples the gateway's resident memory (RSS; ``anon``: its part that is
not file-backed, i.e. without shared-library code) and thread count; ``peak thr`` is the
thread count sampled while the round's sessions were up.

``--inspect``: the gateway process also answers SIGUSR1 by writing what it holds to a
JSON file, printed after each round (or every ``--inspect-every`` rounds): its threads
(Python ones by name, the others by where they wait), live WebRTC sessions, aiortc and
PyAV objects, how many objects a ``gc.collect()`` then frees (and one with the frozen
heap thawed: what waits in frozen cycles) and what is left after it,
what ``malloc_trim(0)`` gives back, and with ``--tracemalloc`` the allocation sites
that grew most since the start. The dump blocks the gateway's event loop (the media
clock then jumps ahead) and its collection frees what the gateway would otherwise hold
longer: it changes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Classes whose live instances the --inspect dump counts (by class name).
WATCHED = (
    "RTCPeerConnection", "RTCDtlsTransport", "RTCIceTransport", "RTCRtpReceiver",
    "RTCRtpSender", "Connection", "RTCCertificate", "WebRTCIngress", "WebRTCEgress",
    "SharedEncoder", "Stream", "Task", "AudioResampler", "Graph",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the gateway process (--serve) ---------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Run ``gateway serve``; on SIGUSR1 write what the process holds to ``args.dump``."""
    import ctypes
    import tracemalloc

    import psutil

    if args.tracemalloc:
        tracemalloc.start(8)
    first: list = []
    full_collections: list[int] = []  # objects each generation-2 collection freed

    def on_gc(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            full_collections.append(info["collected"])

    gc.callbacks.append(on_gc)

    def watched() -> dict[str, int]:
        names = (type(o).__name__ for o in gc.get_objects())
        return dict(collections.Counter(n for n in names if n in WATCHED))

    def threads() -> dict[str, int]:
        """Python threads by name (digits dropped); the others by kernel wait channel."""
        python = {t.native_id for t in threading.enumerate()}
        names = [t.name.rstrip("0123456789_-") or t.name for t in threading.enumerate()]
        for task in Path("/proc/self/task").iterdir():
            if int(task.name) not in python:
                names.append("native, in " + (task / "wchan").read_text().strip())
        return dict(collections.Counter(names))

    def dump(signum, frame) -> None:  # type: ignore[no-untyped-def]
        report: dict = {
            "full collections so far": len(full_collections),
            "objects the last 5 freed": full_collections[-5:],
            "threads": threads(),
            "objects": watched(),
        }
        report["tracked objects (not frozen)"] = len(gc.get_objects())
        started = time.perf_counter()
        report["unreachable (gc.collect)"] = gc.collect()
        report["gc.collect ms"] = round((time.perf_counter() - started) * 1000, 2)
        # what waits in frozen cycles too (gateway/heap.py freezes sessions): thaw, count,
        # freeze again (what the Keeper's thaw does)
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        report["unreachable incl. frozen"] = gc.collect()
        gc.freeze()
        report["frozen"] = frozen
        time.sleep(0.2)  # threads that the collection released end
        report["threads after gc.collect"] = threads()
        rss = psutil.Process().memory_info().rss
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what glibc keeps but no one uses
        report["MiB malloc_trim gave back"] = round(
            (rss - psutil.Process().memory_info().rss) / 2**20, 1)
        report["objects after gc.collect"] = watched()
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            if not first:
                first.append(snap)
            report["grown since the first dump"] = [
                f"{s.size_diff / 1024:+.0f} KiB {s.count_diff:+d} blocks "
                + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in s.traceback[:4])
                for s in snap.compare_to(first[0], "traceback")[:8]
            ]
        part = Path(args.dump + ".part")
        part.write_text(json.dumps(report))
        part.rename(args.dump)

    signal.signal(signal.SIGUSR1, dump)
    from gateway.cli import main

    return main(["serve", "--port", str(args.port), "--ice-host", "127.0.0.1",
                 "--log-level", "warning"])  # fmt: skip


# -- the load (this process) ---------------------------------------------------------------


def rss_anon(pid: int) -> int:
    """Resident memory that is not file-backed (heaps, stacks): RSS less library code."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


async def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}")
            try:
                async with http.get(url + "/api/v1/stats") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("gateway did not start")


async def one_round(url: str, stream: str, listeners: int, hold: float, proc) -> int:  # type: ignore[no-untyped-def]
    """Publisher + listeners up, held, deleted; the peak thread count while they were up."""
    from gateway.webrtc.client import Listener, Publisher, ToneTrack

    pub = Publisher(url, stream, ToneTrack(440))
    clients = [pub, *(Listener(url, stream) for _ in range(listeners))]
    try:
        await pub.negotiate()
        await asyncio.gather(*(c.negotiate() for c in clients[1:]))
        await asyncio.gather(*(c.connected() for c in clients))
        peak = proc.num_threads()
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            peak = max(peak, proc.num_threads())
        frames = min(c.frames for c in clients[1:]) if listeners else 1
        if frames == 0:
            raise RuntimeError("a listener received no audio")
    finally:
        for client in clients:
            await client.delete()
    return peak


async def inspect(child: subprocess.Popen, dump: Path, timeout: float) -> dict:
    dump.unlink(missing_ok=True)
    child.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if dump.exists():
            return json.loads(dump.read_text())
    return {"error": f"no answer within {timeout:.0f} s"}


async def run(args: argparse.Namespace) -> None:
    import psutil

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dump = Path(tempfile.mkdtemp(prefix="churn-")) / "dump.json"
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--dump", str(dump)]
    if args.tracemalloc:
        cmd.append("--tracemalloc")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        await wait_http(url, child, timeout=180 if args.tracemalloc else 30)
        proc = psutil.Process(child.pid)
        await asyncio.sleep(1)
        if args.tracemalloc:  # the baseline snapshot: what the rounds add is then shown
            await inspect(child, dump, 300)
        rss0, anon0, thr0 = proc.memory_info().rss, rss_anon(child.pid), proc.num_threads()
        print(f"python {platform.python_version()}, {os.cpu_count()} cores; "
              f"{args.rounds} rounds of 1 publisher + {args.listeners} listeners, "
              f"{args.hold:g} s each")  # fmt: skip
        print(f"start: RSS {rss0 / 2**20:.1f} MiB (anonymous {anon0 / 2**20:.1f}), "
              f"{thr0} threads")
        print(f"{'round':>5} {'RSS MiB':>8} {'vs start':>9} {'vs prev':>8} {'anon vs start':>13}"
              f" {'threads':>8} {'peak thr':>8}")  # fmt: skip
        rows = []
        prev = rss0
        for k in range(1, args.rounds + 1):
            peak = await one_round(url, "churn", args.listeners, args.hold, proc)
            await asyncio.sleep(args.settle)
            rss, anon, thr = proc.memory_info().rss, rss_anon(child.pid), proc.num_threads()
            rows.append({"round": k, "rss": rss, "anon": anon, "threads": thr,
                         "peak_threads": peak})
            print(f"{k:>5} {rss / 2**20:>8.1f} {(rss - rss0) / 2**20:>+9.1f} "
                  f"{(rss - prev) / 2**20:>+8.1f} {(anon - anon0) / 2**20:>+13.1f} "
                  f"{thr:>8} {peak:>8}", flush=True)
            prev = rss
            if args.inspect and k % args.inspect_every == 0:
                held = await inspect(child, dump, 300 if args.tracemalloc else 10)
                print("      ", json.dumps(held, indent=1).replace("\n", "\n       "), flush=True)
        k0 = min(args.plateau_after, len(rows)) - 1
        tail = [r["rss"] for r in rows[k0:]]
        print(f"after round {k0 + 1}: RSS range {(max(tail) - min(tail)) / 2**20:.1f} MiB "
              f"({min(tail) / 2**20:.1f}..{max(tail) / 2**20:.1f}), "
              f"final {(rows[-1]['rss'] - rss0) / 2**20:+.1f} MiB vs start; "
              f"threads {thr0} at start, {rows[-1]['threads']} at the end, "
              f"peak {max(r['peak_threads'] for r in rows)}")  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps({"rss0": rss0, "anon0": anon0, "threads0": thr0,
                                                   "rounds": rows}, indent=1))  # fmt: skip
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--listeners", type=int, default=5)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds sessions stay up")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after closing")
    parser.add_argument("--plateau-after", type=int, default=5,
                        help="report the RSS range from this round on")
    parser.add_argument("--inspect", action="store_true",
                        help="print what the gateway holds after each round")
    parser.add_argument("--inspect-every", type=int, default=1, metavar="K",
                        help="with --inspect: only after every K-th round")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="with --inspect: allocation sites that grew (slow)")
    parser.add_argument("--json", help="also write the samples to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
