"""Full garbage collections with many WebRTC listeners connected (issue 14, timing).

    python bench/gc_listeners.py [--steps 100,200,400] [--window 10] [--previous REV]
        [--quota CORES] [--json out.json]

A gateway (``gateway serve``, admission control off) runs as its own process, optionally
in a cgroup v1 CPU quota of its own (``--quota``, as bench/fanout.py's ``--cpu-quota``);
a WHIP publisher (440 Hz) feeds stream ``bench`` from this process and WHEP listeners are
added in steps by bench/fanout.py's load processes (they tap packets, no decoding).

The gateway process runs with a hook (``--serve``) that answers three signals:

* SIGUSR1: the heap: objects the collector tracks, by type; then the time of
  ``gc.collect(2)`` (the first one, which also frees what is garbage, and the median of
  3 more, which only walk): what one full collection pauses the event loop for;
* SIGUSR2: one ``gc.collect()`` (what CPython does on its own, at a moment of its choice);
* SIGRTMIN: the media clock's tick lateness since the previous SIGRTMIN or SIGUSR1 (every
  tick's, recorded by wrapping ``RealTimeClock.lateness``, which keeps only the last 50) and
  the generation-2 collections in that time (a ``gc.callbacks`` timer).

Per step: after ``--settle`` s, the heap (objects per listener = the growth since the
step with no listener, by type, divided by the listeners); then two windows of
``--window`` s: ``steady`` (only CPython's own collections) and ``gc`` (a full collection
every ``--gc-every`` s): tick lateness p50/p99/max in each.

``--previous REV``: the same sequence first on the gateway of commit REV (exported with
``git archive``), then on this tree (``--current REV``: that commit, exported too):
before and after in one run. Results:
docs/benchmarks.md ("Garbage-collector pauses"). Hold /work/notes/bench.lock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fanout  # noqa: E402  (bench/fanout.py: load processes, quota, source trees)

STREAM = "bench"


# -- the gateway process (--serve) ---------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """``gateway serve`` with the signal hooks described above."""
    import collections
    import gc
    from collections import deque

    from gateway.core import clock

    ticks: list[float] = []
    start_at = [0.0]  # ticks before this (time.monotonic) are not recorded
    pauses: list[float] = []
    gc_started = [0.0]

    class Recorded(deque):
        def append(self, x: float) -> None:  # type: ignore[override]
            deque.append(self, x)
            if time.monotonic() >= start_at[0]:
                ticks.append(x)

    init = clock.RealTimeClock.__init__

    def recorded_init(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
        init(self, *a, **k)
        if not hasattr(self.lateness, "record"):  # a deque of the last 50 (main before 2026-12-05)
            self.lateness = Recorded(maxlen=50)
            return
        keep = self.lateness.record  # gateway/core/lateness.py

        def record(late: float) -> None:
            keep(late)
            if time.monotonic() >= start_at[0]:
                ticks.append(late)

        self.lateness.record = record

    clock.RealTimeClock.__init__ = recorded_init  # type: ignore[method-assign]

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            pauses.append((time.perf_counter() - gc_started[0]) * 1000)

    gc.callbacks.append(on_gc)

    def write(obj: dict) -> None:
        part = Path(args.dump + ".part")
        part.write_text(json.dumps(obj))
        part.rename(args.dump)

    def lateness() -> dict:
        late = sorted(ticks)
        out = {"ticks": len(late), "full_gcs": len(pauses),
               "full_gc_max_ms": round(max(pauses, default=0.0), 2)}
        if late:
            out |= {f"p{q}_ms": round(late[min(len(late) - 1, int(q / 100 * len(late)))]
                                      * 1000, 2) for q in (50, 99)}
            out["max_ms"] = round(late[-1] * 1000, 2)
        return out

    def restart() -> None:
        ticks.clear()
        pauses.clear()
        start_at[0] = time.monotonic() + 0.1  # not the tick the handler itself made late

    def heap(signum, frame) -> None:  # type: ignore[no-untyped-def]
        objects = gc.get_objects()
        by_type = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
        tracked = len(objects)
        del objects
        times = []
        collected = 0
        for i in range(4):
            t0 = time.perf_counter()
            n = gc.collect()
            times.append((time.perf_counter() - t0) * 1000)
            collected += n if i == 0 else 0
        write({"tracked": tracked, "by_type": dict(by_type), "frozen": gc.get_freeze_count(),
               "first_collect_ms": round(times[0], 2), "collected": collected,
               "collect_ms": round(statistics.median(times[1:]), 2),
               "tracked_after": len(gc.get_objects())})
        restart()

    def late(signum, frame) -> None:  # type: ignore[no-untyped-def]
        write(lateness())
        restart()

    signal.signal(signal.SIGUSR1, heap)
    signal.signal(signal.SIGUSR2, lambda *_: gc.collect())
    signal.signal(signal.SIGRTMIN, late)
    from gateway.cli import main

    return main(["serve", "--port", str(args.port), "--ice-host", "127.0.0.1",
                 "--log-level", "warning"])  # fmt: skip


# -- the orchestrator ----------------------------------------------------------------------


async def ask(proc: subprocess.Popen, dump: Path, signum: int, timeout: float = 60) -> dict:
    dump.unlink(missing_ok=True)
    os.kill(proc.pid, signum)
    deadline = time.monotonic() + timeout
    while not dump.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("no answer from the gateway")
        await asyncio.sleep(0.05)
    return json.loads(dump.read_text())


def per_listener(base: dict, now: dict, n: int, top: int = 12) -> list[tuple[str, float]]:
    diff = {k: now["by_type"].get(k, 0) - base["by_type"].get(k, 0)
            for k in set(now["by_type"]) | set(base["by_type"])}
    rows = sorted(diff.items(), key=lambda kv: -kv[1])[:top]
    return [(k, round(v / n, 1)) for k, v in rows if v > 0]


async def window(proc: subprocess.Popen, dump: Path, seconds: float, gc_every: float) -> dict:
    await ask(proc, dump, signal.SIGRTMIN)  # restart the record
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(min(gc_every or seconds, end - time.monotonic()))
        if gc_every and time.monotonic() < end - 0.05:
            os.kill(proc.pid, signal.SIGUSR2)
    return await ask(proc, dump, signal.SIGRTMIN)


async def run_tree(label: str, src: Path, args: argparse.Namespace) -> list[dict]:
    from gateway.webrtc.client import Publisher, ToneTrack

    port = fanout.free_port()
    url = f"http://127.0.0.1:{port}"
    dump = Path(tempfile.mkdtemp(prefix="gc-listeners-")) / "dump.json"
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--dump", str(dump)]
    env = fanout.src_env(src) | fanout.GATEWAY_ENV | {"GATEWAY_SIP__PORT": str(fanout.free_port())}
    proc = subprocess.Popen(cmd, cwd=src, env=env,
                            stdout=subprocess.DEVNULL)
    quota = fanout.CpuQuota(args.quota, args.cfs_period_us) if args.quota else None
    if quota is not None:
        quota.add(proc.pid)
    load_args = argparse.Namespace(verify_every=50, poll_ms=10.0)
    workers = [fanout.WorkerProc(url, STREAM, load_args) for _ in range(args.workers)]
    rows: list[dict] = []
    publisher = None
    try:
        await fanout.wait_http(url, proc)
        publisher = Publisher(url, STREAM, ToneTrack(440))
        await publisher.negotiate()
        await publisher.connected()
        await asyncio.gather(*(w.start() for w in workers))
        await asyncio.sleep(args.settle)
        base = await ask(proc, dump, signal.SIGUSR1)
        current = 0
        for n in [0, *args.steps]:
            add = [0] * len(workers)
            for i in range(n - current):
                add[(current + i) % len(workers)] += 1
            results = await asyncio.gather(*(
                w.call({"cmd": "add", "n": k, "concurrency": args.concurrency})
                for w, k in zip(workers, add, strict=True) if k))
            failed = sum(r["failed"] for r in results)
            current = n
            await asyncio.sleep(args.settle)
            heap = await ask(proc, dump, signal.SIGUSR1)
            if n == 0:
                base = heap
            t0, c0 = time.monotonic(), fanout.cpu_seconds(proc.pid)
            steady = await window(proc, dump, args.window, 0.0)
            forced = await window(proc, dump, args.window, args.gc_every)
            cores = (fanout.cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
            row = {"tree": label, "listeners": n, "failed": failed, "cores": round(cores, 3),
                   "tracked": heap["tracked"], "frozen": heap["frozen"],
                   "collect_ms": heap["collect_ms"], "first_collect_ms": heap["first_collect_ms"],
                   "collected": heap["collected"],
                   "per_listener": round((heap["tracked"] - base["tracked"]) / n, 1) if n else 0,
                   "top": per_listener(base, heap, n) if n else [],
                   "steady": steady, "gc": forced}
            rows.append(row)
            print(format_row(row), flush=True)
            if n and args.types:
                for name, k in row["top"]:
                    print(f"        {k:7.1f}  {name}")
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        if publisher is not None:
            await publisher.pc.close()
        fanout.stop_process(proc, 10)
        if quota is not None:
            quota.remove()
    return rows


def format_row(r: dict) -> str:
    def lat(w: dict) -> str:
        return (f"p50 {w.get('p50_ms', 0):5.1f} p99 {w.get('p99_ms', 0):6.1f} "
                f"max {w.get('max_ms', 0):6.1f} ms ({w['full_gcs']} full GC, "
                f"max {w['full_gc_max_ms']:.0f} ms)")

    return (f"{r['tree']:<8} {r['listeners']:>4} listeners ({r['failed']} failed) "
            f"{r['cores']:.2f} cores  tracked {r['tracked']:>7} "
            f"({r['per_listener']:>5} per listener, frozen {r['frozen']})  "
            f"gc.collect {r['collect_ms']:6.1f} ms (first {r['first_collect_ms']:.1f}, "
            f"freed {r['collected']})\n"
            f"         steady: {lat(r['steady'])}\n"
            f"         gc every few s: {lat(r['gc'])}")


async def main(args: argparse.Namespace) -> int:
    print(f"machine: {fanout.machine()}; load {fanout.load_average()}; "
          f"quota {args.quota or 'none'}", flush=True)
    trees = []
    if args.previous:
        trees.append(("before", fanout.export_tree(args.previous)))
    current = fanout.export_tree(args.current) if args.current else fanout.ROOT
    trees.append(("after" if args.previous else "this", current))
    rows = []
    for label, src in trees:
        rows += await run_tree(label, src, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")],
                   default=[100, 200, 400])
    p.add_argument("--settle", type=float, default=4.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--gc-every", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--quota", type=float, default=0.0, help="cgroup CPU quota, cores")
    p.add_argument("--cfs-period-us", type=int, default=100_000)
    p.add_argument("--previous", metavar="REV", help="also the gateway of commit REV, first")
    p.add_argument("--current", metavar="REV",
                   help="the 'after' gateway is commit REV, exported (the tree may change)")
    p.add_argument("--types", action="store_true", help="print the top types per listener")
    p.add_argument("--json")
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        sys.exit(serve(arguments))
    sys.exit(asyncio.run(main(arguments)))
