"""Ramp WebRTC listeners to twice a gateway's capacity, with and without admission control.

    python bench/overload_ramp.py [--quota 0.5] [--to 300] [--plot docs/overload_ramp.png]

One gateway process under a cgroup v1 CPU quota (as ``docker run --cpus``), one WHIP
publisher, listeners added in steps by the load processes of ``bench/fanout.py`` up to
``--to`` (choose about twice the capacity that ``bench/workers_scale.py`` finds for the
quota). Run twice in the same invocation: admission control off (the old behaviour) and
on (the defaults). A listener answered 503 retries after its Retry-After, as a client
would, for up to ``--retry-for`` seconds, then gives up. For each step: listeners
admitted, refused (gave up, so far), 503 answers (so far), and the delivery of the
admitted ones (on-time packets / expected, as fanout.py defines it) with the worst
listener's.

The question: past capacity, do the admitted listeners keep full delivery while the rest
are refused (no cliff), or does every listener lose audio at once (the cliff)?
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout  # noqa: E402
from workers_scale import Gateway, cgroup, move  # noqa: E402


async def ramp(admission: bool, args: argparse.Namespace) -> list[dict]:
    from gateway.webrtc.client import Publisher, ToneTrack

    load_group = cgroup("gwbench-load", None, 4096)
    move(os.getpid(), load_group)
    gw = Gateway(1, args.quota, admission=admission)
    gw.start()
    loads = [fanout.WorkerProc(gw.base_url, "bench", args) for _ in range(args.load_procs)]
    rows: list[dict] = []
    publisher = None
    try:
        await gw.confine()
        publisher = Publisher(gw.base_url, "bench", ToneTrack(440))
        await publisher.negotiate()
        await publisher.connected()
        await asyncio.gather(*(w.start() for w in loads))
        for w in loads:
            move(w.pid, load_group)
        await asyncio.sleep(2.0)  # admission's CPU window fills
        offered = 0
        while offered < args.to:
            step = min(args.step, args.to - offered)
            split = [step // len(loads) + (i < step % len(loads)) for i in range(len(loads))]
            # one listener per request, like browsers, with a pause for admission to see
            # the last ones' cost (it samples CPU every 0.5 s)
            results = await asyncio.gather(*(
                w.call({"cmd": "add", "n": k, "concurrency": args.concurrency,
                        "retry_for": args.retry_for})
                for w, k in zip(loads, split, strict=True) if k
            ))  # fmt: skip
            offered += step
            await asyncio.sleep(args.settle)
            row = await measure(gw, loads, args)
            row["offered"] = offered
            row["refused"] = sum(r["failed"] for r in results)  # gave up, so far
            row["answers_503"] = sum(r.get("refusals", 0) for r in results)
            rows.append(row)
            print(f"admission {'on ' if admission else 'off'} offered {offered:>4} "
                  f"admitted {row['listeners']:>4} refused {row['refused']:>4} "
                  f"(503s {row['answers_503']:>5}) "
                  f"delivered {100 * row['delivered']:7.3f} % worst {100 * row['worst']:5.1f} % "
                  f"cores {row['cores']:.2f} throttled {row['throttled_s']:.1f} s", flush=True)
    finally:
        await fanout.stop_load(loads, publisher)
        gw.stop()
    return rows


async def measure(gw: Gateway, loads: list, args: argparse.Namespace) -> dict:
    import time

    from workers_scale import throttled_s

    t0 = time.monotonic()
    c0, _ = gw.cpu()
    th0 = throttled_s(gw.groups[0])
    await asyncio.sleep(args.window)
    t1 = time.monotonic()
    c1, _ = gw.cpu()
    th1 = throttled_s(gw.groups[0])
    await asyncio.sleep(args.late_ms / 1000 + 0.1)
    parts = await asyncio.gather(*(
        w.call({"cmd": "stats", "t0": t0, "t1": t1, "late_s": args.late_ms / 1000})
        for w in loads
    ))  # fmt: skip
    expected = sum(p["expected"] for p in parts)
    return {
        "listeners": sum(p["listeners"] for p in parts),
        "delivered": sum(p["delivered"] for p in parts) / expected if expected else 0.0,
        "worst": min(p["worst"] for p in parts),
        "cores": (c1[0] - c0[0]) / (t1 - t0),
        "throttled_s": th1 - th0,
    }


def plot(results: dict[str, list[dict]], path: str, quota: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for label, rows in results.items():
        x = [r["offered"] for r in rows]
        top.plot(x, [100 * r["delivered"] for r in rows], marker="o", label=label)
        bottom.plot(x, [r["refused"] for r in rows], marker="o", label=label)
    top.axhline(99.9, color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("delivery to admitted listeners (%)")
    top.set_ylim(-5, 105)
    top.legend()
    top.set_title(f"One gateway under a {quota:g}-core CPU quota: listeners offered past capacity")
    bottom.set_ylabel("refused (503 + Retry-After)")
    bottom.set_xlabel("WebRTC listeners offered")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main(args: argparse.Namespace) -> int:
    from gateway.webrtc.aiortc_patches import set_host_addresses

    set_host_addresses(["127.0.0.1"])
    info = fanout.machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}; "
          f"quota {args.quota} core; load {os.getloadavg()}", flush=True)
    results = {
        "admission off": await ramp(False, args),
        "admission on (defaults)": await ramp(True, args),
    }
    if args.plot:
        plot(results, args.plot, args.quota)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "quota": args.quota,
                                               "rows": results}, indent=2))
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quota", type=float, default=0.5, help="cores for the gateway")
    p.add_argument("--to", type=int, default=300, help="listeners offered in the end")
    p.add_argument("--step", type=int, default=25)
    p.add_argument("--window", type=float, default=6.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--late-ms", type=float, default=100.0)
    p.add_argument("--load-procs", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--verify-every", type=int, default=50)
    p.add_argument("--retry-for", type=float, default=15.0,
                   help="a refused listener retries after Retry-After for this long")
    p.add_argument("--poll-ms", type=float, default=10.0)
    p.add_argument("--plot", help="write a PNG of delivery and refusals against offered")
    p.add_argument("--json")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
