"""WebRTC listeners per machine with ``gateway serve --workers 2`` against one process.

    python bench/workers_scale.py [--quota 0.5] [--window 8] [--json out.json]

Both runs give every gateway process the same CPU: a cgroup v1 quota of ``--quota`` cores
each (``/sys/fs/cgroup/cpu/gwbench-*``), so the load processes keep the rest of this
2-core machine and the comparison asks one question: does a second worker add a second
worker's worth of listeners?

* **1 worker**: ``gateway serve`` as one process (no NATS), under one quota.
* **2 workers**: ``gateway serve --workers 2`` (supervisor, embedded nats-server, two
  workers on the shared HTTP port), each worker under its own quota; the nats-server
  runs unconfined and its CPU is reported. The WHIP publisher lands on one worker; the
  other worker's listeners hear the stream across NATS (the cluster hop), so the second
  worker also pays for a remote subscription.

Listeners are added in steps by the load processes of ``bench/fanout.py`` (no decoding:
each packet's arrival and RTP timestamp are tapped below aiortc; a sample is verified
through SRTP), and delivery is measured the same way: a slot counts when its packet came
no later than ``--late-ms`` after its due time. N_max is the largest step delivered at
>= 99.9 %. Gateway processes get ``cpu.shares`` 8192 and the load processes 4096, so
other work on the machine (tests of other checkouts) takes CPU from neither; the rest
of the machine's CPU use is printed for every window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout  # noqa: E402  (bench/fanout.py: load processes and delivery statistics)

CGROUP = Path("/sys/fs/cgroup/cpu")
STEPS = [25, 50, 75, 100, 110, 120, 130, 140, 150, 175, 200, 220, 240, 260, 280, 300, 350, 400,
         450, 500, 550, 600, 650, 700, 800, 900, 1000, 1100, 1200]


def cgroup(name: str, quota_cores: float | None, shares: int) -> Path:
    """A cgroup v1 CPU group (created if needed) with a quota (None: none) and shares."""
    path = CGROUP / name
    path.mkdir(exist_ok=True)
    (path / "cpu.cfs_period_us").write_text("100000")
    quota = -1 if quota_cores is None else int(quota_cores * 100000)
    (path / "cpu.cfs_quota_us").write_text(str(quota))
    (path / "cpu.shares").write_text(str(shares))
    return path


def move(pid: int, group: Path) -> None:
    """Every thread of ``pid`` into ``group``."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            (group / "tasks").write_text(task)
        except OSError:
            pass  # a thread that ended meanwhile


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def throttled_s(group: Path) -> float:
    for line in (group / "cpu.stat").read_text().splitlines():
        if line.startswith("throttled_time"):
            return int(line.split()[1]) / 1e9
    return 0.0


class Gateway:
    """``gateway serve [--workers N]`` with each gateway process under its own quota."""

    def __init__(self, workers: int, quota: float, admission: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.workers, self.quota, self.admission = workers, quota, admission
        self.extra_env = extra_env or {}
        self.port = fanout.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.gateway_pids: list[int] = []
        self.nats_pid: int | None = None
        self.groups: list[Path] = []

    def start(self) -> None:
        cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(self.port),
               "--ice-host", "127.0.0.1", "--log-level", "warning"]  # fmt: skip
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        env = fanout.src_env() | {
            "GATEWAY_SIP__ENABLED": "false",
            # off: find the cliff, do not avoid it (bench/overload_ramp.py turns it on)
            "GATEWAY_ADMISSION__ENABLED": "true" if self.admission else "false",
            "GATEWAY_WEBRTC__MAX_SESSIONS": "5000",
        } | self.extra_env
        self.proc = subprocess.Popen(cmd, cwd=fanout.SRC, env=env, stdout=subprocess.DEVNULL)

    async def confine(self) -> None:
        """Once every process is up: gateways under quotas, nats-server unconfined."""
        assert self.proc is not None
        await fanout.wait_http(self.base_url, self.proc)
        if self.workers == 1:
            self.gateway_pids = [self.proc.pid]
        else:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                kids = children(self.proc.pid)
                nats = [p for p in kids if "nats-server" in command(p).split()[0]]
                self.gateway_pids = [p for p in kids if p not in nats]
                self.nats_pid = nats[0] if nats else None
                if len(self.gateway_pids) == self.workers:
                    break
                await asyncio.sleep(0.2)
            assert len(self.gateway_pids) == self.workers, self.gateway_pids
        for i, pid in enumerate(self.gateway_pids):
            group = cgroup(f"gwbench-worker{i}", self.quota, 8192)
            move(pid, group)
            self.groups.append(group)

    def cpu(self) -> tuple[list[float], float]:
        """CPU seconds of each gateway process and of the nats-server."""
        per = [fanout.cpu_seconds(p) for p in self.gateway_pids]
        nats = fanout.cpu_seconds(self.nats_pid) if self.nats_pid else 0.0
        return per, nats

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def worker_listeners(base_url: str, pids: int) -> list[int]:
    """Listeners per gateway process (from each worker's own stats, via the cluster view)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + "/api/v1/streams/bench") as r:
            body = await r.json()
    nodes = (body.get("cluster") or {}).get("listeners_by_node") or {}
    return sorted(nodes.values(), reverse=True) if nodes else [body.get("listeners", 0)]


async def run(workers: int, args: argparse.Namespace) -> list[dict]:
    from gateway.webrtc.client import Publisher, ToneTrack

    load_group = cgroup("gwbench-load", None, 4096)
    move(os.getpid(), load_group)
    gw = Gateway(workers, args.quota)
    gw.start()
    rows: list[dict] = []
    loads = [fanout.WorkerProc(gw.base_url, "bench", args) for _ in range(args.load_procs)]
    publisher = None
    try:
        await gw.confine()
        publisher = Publisher(gw.base_url, "bench", ToneTrack(440))
        await publisher.negotiate()
        await publisher.connected()
        await asyncio.gather(*(w.start() for w in loads))
        for w in loads:
            move(w.pid, load_group)
        await asyncio.sleep(1.0)
        current = 0
        for n in STEPS:
            if n > args.max_listeners:
                break
            add = [0] * len(loads)
            for i in range(n - current):
                add[(current + i) % len(loads)] += 1
            results = await asyncio.gather(*(
                w.call({"cmd": "add", "n": k, "concurrency": args.concurrency})
                for w, k in zip(loads, add, strict=True) if k
            ))  # fmt: skip
            failed = sum(r["failed"] for r in results)
            current = n
            await asyncio.sleep(args.settle)
            row = await measure(gw, loads, n, failed, args)
            if row["delivered"] < args.min_delivery:  # one second chance, as fanout.py
                row = await measure(gw, loads, n, failed, args)
                row["notes"].append("re-measured")
            print(format_row(workers, row), flush=True)
            rows.append(row)
            if row["delivered"] < args.min_delivery:
                break
    finally:
        await asyncio.gather(*(w.stop() for w in loads), return_exceptions=True)
        if publisher is not None:
            try:
                await asyncio.wait_for(publisher.pc.close(), 5)
            except Exception:  # noqa: BLE001
                pass
        gw.stop()
    return rows


async def measure(gw: Gateway, loads: list, n: int, failed: int,
                  args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    c0, n0 = gw.cpu()
    m0 = fanout.machine_busy()
    l0 = sum(fanout.cpu_seconds(w.pid) for w in loads) + fanout.cpu_seconds(os.getpid())
    th0 = [throttled_s(g) for g in gw.groups]
    await asyncio.sleep(args.window)
    t1 = time.monotonic()
    c1, n1 = gw.cpu()
    m1 = fanout.machine_busy()
    l1 = sum(fanout.cpu_seconds(w.pid) for w in loads) + fanout.cpu_seconds(os.getpid())
    th1 = [throttled_s(g) for g in gw.groups]
    await asyncio.sleep(args.late_ms / 1000 + 0.1)
    parts = await asyncio.gather(*(
        w.call({"cmd": "stats", "t0": t0, "t1": t1, "late_s": args.late_ms / 1000})
        for w in loads
    ))  # fmt: skip
    wall = t1 - t0
    expected = sum(p["expected"] for p in parts)
    worker_cores = [(b - a) / wall for a, b in zip(c0, c1, strict=True)]
    nats_cores = (n1 - n0) / wall
    load_cores = (l1 - l0) / wall
    try:
        per_worker = await worker_listeners(gw.base_url, len(gw.gateway_pids))
    except Exception as exc:  # noqa: BLE001
        per_worker = [repr(exc)]
    return {
        "listeners": sum(p["listeners"] for p in parts),
        "per_worker": per_worker,
        "worker_cores": worker_cores,
        "nats_cores": nats_cores,
        "load_cores": load_cores,
        "other_cores": max(0.0, (m1 - m0) / wall - sum(worker_cores) - nats_cores - load_cores),
        "throttled_s": [b - a for a, b in zip(th0, th1, strict=True)],
        "delivered": sum(p["delivered"] for p in parts) / expected if expected else 0.0,
        "worst": min(p["worst"] for p in parts),
        "failed": failed,
        "notes": [],
    }


def format_row(workers: int, r: dict) -> str:
    cores = "+".join(f"{c:.2f}" for c in r["worker_cores"])
    return (
        f"workers={workers} N={r['listeners']:>5} per worker {r['per_worker']} "
        f"gateway cores {cores} nats {r['nats_cores']:.3f} load {r['load_cores']:.2f} "
        f"other {r['other_cores']:.2f} throttled {[round(t, 1) for t in r['throttled_s']]} s "
        f"delivered {100 * r['delivered']:.3f} % worst {100 * r['worst']:.1f} % "
        f"failed {r['failed']} {' '.join(r['notes'])}"
    )


def n_max(rows: list[dict], threshold: float) -> int:
    good = [r["listeners"] for r in rows if r["delivered"] >= threshold]
    return max(good) if good else 0


async def main(args: argparse.Namespace) -> int:
    from gateway.webrtc.aiortc_patches import set_host_addresses

    set_host_addresses(["127.0.0.1"])
    info = fanout.machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}; "
          f"quota {args.quota} core per gateway process; load {os.getloadavg()}", flush=True)
    results = {w: await run(w, args) for w in (1, 2)}
    one, two = (n_max(results[w], args.min_delivery) for w in (1, 2))
    ratio = two / one if one else float("nan")
    print(f"\nN_max (>= {100 * args.min_delivery:.1f} % delivered): 1 worker {one}, "
          f"2 workers {two}: {ratio:.2f}x (target >= 1.7x)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "quota": args.quota, "rows": {str(k): v for k, v in results.items()},
             "n_max": {"1": one, "2": two}, "ratio": ratio}, indent=2))  # fmt: skip
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quota", type=float, default=0.5, help="cores per gateway process")
    p.add_argument("--window", type=float, default=8.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--late-ms", type=float, default=100.0)
    p.add_argument("--min-delivery", type=float, default=0.999)
    p.add_argument("--max-listeners", type=int, default=1000)
    p.add_argument("--load-procs", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--verify-every", type=int, default=50)
    p.add_argument("--poll-ms", type=float, default=10.0)
    p.add_argument("--json")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
