"""Timing under load (issue 14, item 4): how late the media clock's 20 ms ticks run while
bursts of other work (SIP, HTTP, garbage collection) hit a gateway loaded to ~80 % of a
container CPU quota.

    python bench/tick_lateness.py [--quota 0.5] [--load 0.8] [--phase-s 15]
        [--cfs 100000:0,100000:50000,10000:0] [--previous REV] [--current REV]
        [--json out.json]

One gateway process (``gateway serve``, SIP on, admission control off) runs in a cgroup
v1 CPU group of its own, ``/sys/fs/cgroup/cpu/gwbench-tick-<pid>``, with a quota of
``--quota`` cores and ``cpu.shares`` 8192 (so other work on the machine cannot take that
quota away). A WHIP publisher (440 Hz, from this process) feeds stream ``bench``; WHEP
listeners (the load processes of bench/fanout.py, which tap packets without decoding)
are added until the gateway uses ``--load`` of its quota (or ``--listeners N``).

Then, for every CFS setting of ``--cfs`` (``period_us:burst_us``; the quota stays
``--quota`` cores; the settings are changed on the live group, the listeners stay), one
phase of ``--phase-s`` seconds per kind of burst, each burst repeated every
``--every`` seconds:

* ``baseline``: nothing but the listeners;
* ``sip_options``: ``--options`` SIP OPTIONS sent back to back over UDP;
* ``sip_invite``: ``--invites`` SIP calls placed at once (INVITE, 200, ACK), each hung
  up (BYE) 1 s later;
* ``http``: ``--http`` API requests at once, a mix of ``GET /api/v1/streams``,
  ``/api/v1/sessions`` (every listener), ``/api/v1/streams/bench``, ``/api/v1/stats``
  and ``/metrics``;
* ``gc``: garbage for the collector: 10,000 lists in reference cycles made at once in
  the gateway (SIGUSR2; what ~25 closed sessions' aiortc objects leave), collected
  whenever the gateway's collector settings say; ``--gc-burst collect`` instead forces a
  full collection (``gc.collect()``) at that moment, as CPython's own full collections
  came before 2026-12-06 (gateway/heap.py);
* ``all``: the four at the same moment.

The clock records every tick's lateness (``GET /api/v1/stats`` → ``clock_lateness``, a
histogram in 0.1 ms bins since start); two readings, at a phase's start and end, give
that phase's distribution exactly: p50, p99, max (to 0.1 ms). Per phase also: the
gateway's CPU (cores), the share of CFS periods in which the quota throttled it, and the
longest generation-2 collection (the gateway runs with a ``gc.callbacks`` hook that times
every collection). With ``TICK_SLOW_MS=2`` (and ``TICK_SLOW_FILE``) the gateway lists
every event-loop callback that took longer (wall and own CPU ms, when, what) and every
tick later than that: what each late tick waited behind.

With ``--previous REV`` the whole sequence runs first on the gateway of commit REV
(exported with ``git archive``, no worktree; it must have the ``clock_lateness``
histogram, i.e. be from this benchmark's branch), then on this tree, with the same
number of listeners: before and after in one run (``--current REV``: the "after" tree is
that commit, exported too, so the worktree may change while the run waits). Needs root
and cgroup v1's cpu controller; hold ``/work/notes/bench.lock`` (or run on an idle
machine). ``--pin``: the gateway runs alone on CPU 0 and the load generators (this
process and its children) on the other CPUs, so the gateway is not preempted by them, as
on a machine or container of its own. Results: docs/benchmarks.md ("Timing under load").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout  # noqa: E402  (load processes, CPU readings, source trees)

CGROUP = Path("/sys/fs/cgroup/cpu")
BURSTS = ("baseline", "sip_options", "sip_invite", "http", "gc", "all")
HTTP_PATHS = ("/api/v1/streams", "/api/v1/sessions", "/api/v1/streams/bench",
              "/api/v1/stats", "/metrics")

#: Runs ``gateway serve`` with every garbage collection timed, and a full collection on
#: SIGUSR2; SIGUSR1 writes the collection times so far to $TICK_GC_FILE.
WRAPPER = r"""
import gc, json, os, signal, sys, time
pauses = []  # (generation, ms)
started = [0.0]
def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], (time.perf_counter() - started[0]) * 1000))
gc.callbacks.append(on_gc)
slow = []  # event-loop callbacks slower than $TICK_SLOW_MS
if os.environ.get("TICK_SLOW_MS"):
    import asyncio.events
    limit, run = float(os.environ["TICK_SLOW_MS"]) / 1000, asyncio.events.Handle._run
    def timed(self):
        task = getattr(self._callback, "__self__", None)
        coro = task.get_coro() if hasattr(task, "get_coro") else None
        path = ""  # an HTTP request's path, read before its coroutine may end
        if getattr(getattr(coro, "cr_code", None), "co_name", "") == "_handle_request":
            request = coro.cr_frame.f_locals.get("request") if coro.cr_frame else None
            path = f" {request.method} {request.path}" if hasattr(request, "path") else ""
        t0, c0 = time.perf_counter(), time.thread_time()
        run(self)
        took = time.perf_counter() - t0
        if took > limit:  # wall ms (throttling included), when, what, its own CPU ms
            what = coro if coro is not None else self
            slow.append((round(took * 1000, 2), time.time(), repr(what)[:300] + path,
                         round((time.thread_time() - c0) * 1000, 2)))
    asyncio.events.Handle._run = timed
    from gateway.core import lateness
    record = lateness.Lateness.record
    last = [time.perf_counter(), time.thread_time()]  # at the previous tick
    def noted(self, late):  # late ticks beside the slow callbacks: what they waited for
        record(self, late)
        wall, cpu = time.perf_counter(), time.thread_time()
        if late > limit:  # and the loop thread's CPU and wall time since the last tick:
            slow.append((round(late * 1000, 2), time.time(), "tick late",  # less CPU
                         round((cpu - last[1]) * 1000, 2),  # than wall: it was not
                         round((wall - last[0]) * 1000, 2)))  # running (preempted)
        last[0], last[1] = wall, cpu
    lateness.Lateness.record = noted
def dump(*_):
    path = os.environ["TICK_GC_FILE"]
    with open(path + ".part", "w") as f:
        json.dump(pauses, f)
    os.replace(path + ".part", path)
    if slow:
        with open(os.environ.get("TICK_SLOW_FILE") or path + ".slow", "a") as f:
            f.writelines(json.dumps(s) + "\n" for s in slow)
        slow.clear()
signal.signal(signal.SIGUSR1, dump)
def garbage(*_):
    for _ in range(10000):
        cycle = []
        cycle.append(cycle)
signal.signal(signal.SIGUSR2, garbage if os.environ.get("TICK_GC_BURST") == "garbage"
              else lambda *_: gc.collect())
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


# -- the gateway under test -----------------------------------------------------------
class Confined:
    """The gateway process in its own CPU cgroup; CFS settings changed while it runs."""

    def __init__(self, src: Path, quota: float, gc_burst: str = "garbage",
                 pin: bool = False) -> None:
        self.src, self.quota, self.gc_burst, self.pin = src, quota, gc_burst, pin
        self.port = fanout.free_port()
        self.sip_port = fanout.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gc_file = Path(tempfile.mkdtemp(prefix="tick-gc-")) / "gc.json"
        self.group = CGROUP / f"gwbench-tick-{os.getpid()}"
        self.group.mkdir(exist_ok=True)
        (self.group / "cpu.shares").write_text("8192")
        self.proc: subprocess.Popen | None = None

    def set_cfs(self, period_us: int, burst_us: int) -> None:
        # the quota first down to what fits any period, then period, quota, burst
        if self._has_burst():
            (self.group / "cpu.cfs_burst_us").write_text("0")
        (self.group / "cpu.cfs_quota_us").write_text("-1")
        (self.group / "cpu.cfs_period_us").write_text(str(period_us))
        (self.group / "cpu.cfs_quota_us").write_text(str(round(self.quota * period_us)))
        if burst_us:
            if not self._has_burst():
                raise SystemExit("this kernel has no cpu.cfs_burst_us")
            (self.group / "cpu.cfs_burst_us").write_text(str(burst_us))

    def _has_burst(self) -> bool:
        return (self.group / "cpu.cfs_burst_us").exists()

    def start(self) -> None:
        env = fanout.src_env(self.src) | {
            "GATEWAY_ADMISSION__ENABLED": "false",  # the load is the benchmark's to choose
            "GATEWAY_WEBRTC__MAX_SESSIONS": "5000",
            "GATEWAY_STREAMS__DECLARED": '["bench"]',
            "GATEWAY_SIP__PORT": str(self.sip_port),
            "GATEWAY_SIP__RATE_LIMIT_PER_S": "100000",  # every burst comes from 127.0.0.1
            "GATEWAY_SIP__RATE_LIMIT_BURST": "100000",
            "GATEWAY_SIP__MAX_CALLS": "5000",
            "GATEWAY_SIP__CODECS": '["PCMU"]',
            "TICK_GC_FILE": str(self.gc_file),
            "TICK_GC_BURST": self.gc_burst,
            "TICK_SLOW_MS": os.environ.get("TICK_SLOW_MS", ""),  # callbacks over it
            "TICK_SLOW_FILE": os.environ.get("TICK_SLOW_FILE", ""),  # ... listed here
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "serve", "--port", str(self.port),
             "--ice-host", "127.0.0.1", "--log-level", "warning"],
            cwd=self.src, env=env, stdout=subprocess.DEVNULL)
        (self.group / "cgroup.procs").write_text(str(self.proc.pid))
        if self.pin:  # before its first thread: the threads it starts inherit the set
            os.sched_setaffinity(self.proc.pid, {0})

    def stat(self) -> dict[str, int]:
        out = {}
        for line in (self.group / "cpu.stat").read_text().splitlines():
            name, value = line.split()
            out[name] = int(value)
        return out

    def cpu(self) -> float:
        assert self.proc is not None
        return fanout.cpu_seconds(self.proc.pid)

    async def gc_pauses(self) -> list[tuple[int, float]]:
        assert self.proc is not None
        self.gc_file.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(100):
            if self.gc_file.exists():
                return [tuple(p) for p in json.loads(self.gc_file.read_text())]
            await asyncio.sleep(0.02)
        return []

    def stop(self) -> None:
        if self.proc is not None:
            fanout.stop_process(self.proc)

    def remove(self) -> None:
        for pid in (self.group / "cgroup.procs").read_text().split():
            try:
                (CGROUP / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        self.group.rmdir()


async def lateness_bins(http, url: str) -> dict[int, int]:  # type: ignore[no-untyped-def]
    async with http.get(url + "/api/v1/stats") as r:
        stats = await r.json()
    return {round(float(k) * 10): n for k, n in stats["clock_lateness"]["histogram"].items()}


def quantile_ms(bins: dict[int, int], q: float) -> float:
    """Upper edge (ms) of the 0.1 ms bin the ``q`` quantile falls in."""
    total = sum(bins.values())
    seen = 0
    for b, n in sorted(bins.items()):
        seen += n
        if seen >= q * total:
            return (b + 1) / 10
    return 0.0


# -- the bursts -----------------------------------------------------------------------
class SipClient(asyncio.DatagramProtocol):
    """A UDP SIP user agent that sends requests and awaits their final responses."""

    def __init__(self, gateway: tuple[str, int]) -> None:
        self.gateway = gateway
        self.waiting: dict[tuple[str, str], asyncio.Future] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # calls' media: unread
        self.rtp.bind(("127.0.0.1", 0))
        self.failures = 0

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        lines = head.split("\r\n")
        if not lines[0].startswith("SIP/2.0 "):
            return  # a request (the gateway's BYE after a timeout): not expected here
        status = int(lines[0].split()[1])
        if status < 200:
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        call_id = headers.get("call-id") or headers.get("i", "")
        method = (headers.get("cseq", "0 X").split() + ["X"])[1]
        future = self.waiting.pop((call_id, method), None)
        if future is not None and not future.done():
            future.set_result((status, headers.get("to") or headers.get("t", "")))

    def request(self, method: str, call_id: str, cseq: int, to_tag: str = "",
                body: str = "") -> asyncio.Future | None:
        branch = "z9hG4bK" + os.urandom(6).hex()
        target = f"sip:bench@127.0.0.1:{self.gateway[1]}"
        msg = (f"{method} {target} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
               f"From: <sip:load@127.0.0.1>;tag={call_id[:8]}\r\n"
               f"To: <{target}>{to_tag}\r\nCall-ID: {call_id}\r\n"
               f"CSeq: {cseq} {method}\r\n"
               f"Contact: <sip:load@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
               + ("Content-Type: application/sdp\r\n" if body else "")
               + f"Content-Length: {len(body)}\r\n\r\n{body}")
        future = None
        if method != "ACK":
            future = asyncio.get_running_loop().create_future()
            self.waiting[(call_id, method)] = future
        assert self.transport is not None
        self.transport.sendto(msg.encode(), self.gateway)
        return future

    def sdp(self) -> str:
        port = self.rtp.getsockname()[1]
        return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")

    async def options(self, n: int, groups: int = 10, gap_s: float = 0.005) -> None:
        """``n`` OPTIONS in ``groups`` back-to-back groups ``gap_s`` apart (all at once
        would overflow the gateway's socket buffer: the kernel would drop most of them)."""
        futures = []
        for g in range(groups):
            futures += [self.request("OPTIONS", os.urandom(8).hex(), 1)
                        for _ in range(n // groups + (g < n % groups))]
            await asyncio.sleep(gap_s)
        await self._finals(futures)

    async def call(self, hold_s: float) -> None:
        call_id = os.urandom(8).hex()
        invite = self.request("INVITE", call_id, 1, body=self.sdp())
        try:
            status, to = await asyncio.wait_for(invite, 5)  # type: ignore[arg-type]
        except TimeoutError:
            self.failures += 1
            self.waiting.pop((call_id, "INVITE"), None)
            return
        if status != 200:
            self.failures += 1
            return
        tag = ";tag=" + to.split(";tag=", 1)[1].split(";")[0] if ";tag=" in to else ""
        self.request("ACK", call_id, 1, tag)
        await asyncio.sleep(hold_s)
        await self._finals([self.request("BYE", call_id, 2, tag)])

    async def _finals(self, futures: list, timeout: float = 3.0) -> None:
        """Wait for final responses; count the missing and the non-200 ones as failures."""
        done, pending = await asyncio.wait(futures, timeout=timeout)
        self.failures += len(pending) + sum(1 for f in done if f.result()[0] != 200)
        for f in pending:
            f.cancel()
        if pending:
            self.waiting = {k: f for k, f in self.waiting.items() if not f.done()}


async def http_burst(http, url: str, n: int,  # type: ignore[no-untyped-def]
                     paths: tuple[str, ...] = HTTP_PATHS) -> None:
    async def one(path: str) -> None:
        async with http.get(url + path) as r:
            await r.read()

    await asyncio.gather(*(one(paths[i % len(paths)]) for i in range(n)))


async def phase(kind: str, gw: Confined, sip: SipClient, http, args) -> dict:  # type: ignore[no-untyped-def]
    """One burst kind for args.phase_s seconds; the distribution of the ticks in it."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def spawn(coro) -> None:  # type: ignore[no-untyped-def]
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    before = await lateness_bins(http, gw.url)
    pauses_before = len(await gw.gc_pauses())
    stat0, cpu0, t0 = gw.stat(), gw.cpu(), time.monotonic()
    end = t0 + args.phase_s
    next_burst = t0 + random.uniform(0.2, args.every)
    while time.monotonic() < end:
        await asyncio.sleep(max(0.0, min(next_burst, end) - time.monotonic()))
        if time.monotonic() >= end:
            break
        if kind in ("sip_options", "all"):
            spawn(sip.options(args.options))
        if kind in ("sip_invite", "all"):
            for _ in range(args.invites):
                spawn(sip.call(1.0))
        if kind in ("http", "all"):
            spawn(http_burst(http, gw.url, args.http, args.http_paths))
        if kind in ("gc", "all"):
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGUSR2)
        next_burst += args.every
    if tasks:  # the last burst's stragglers (a call's BYE comes 1 s later)
        await asyncio.wait(tasks, timeout=5)
    t1, cpu1, stat1 = time.monotonic(), gw.cpu(), gw.stat()
    after = await lateness_bins(http, gw.url)
    pauses = (await gw.gc_pauses())[pauses_before:]
    bins = {b: n - before.get(b, 0) for b, n in after.items() if n - before.get(b, 0) > 0}
    periods = stat1["nr_periods"] - stat0["nr_periods"]
    full = [ms for gen, ms in pauses if gen == 2]
    return {
        "kind": kind,
        "ticks": sum(bins.values()),
        "p50_ms": quantile_ms(bins, 0.50),
        "p99_ms": quantile_ms(bins, 0.99),
        "max_ms": (max(bins) + 1) / 10 if bins else 0.0,
        "cores": (cpu1 - cpu0) / (t1 - t0),
        "throttled_periods": (stat1["nr_throttled"] - stat0["nr_throttled"]) / periods
        if periods else 0.0,
        "throttled_s": (stat1["throttled_time"] - stat0["throttled_time"]) / 1e9,
        "gc_full": len(full),
        "gc_full_max_ms": max(full, default=0.0),
        "gc_young_max_ms": max((ms for gen, ms in pauses if gen < 2), default=0.0),
    }


# -- one server: listeners, then every CFS setting and burst kind ----------------------
async def run_server(label: str, src: Path, args: argparse.Namespace,
                     listeners: int | None) -> tuple[list[dict], int]:
    import aiohttp

    from gateway.webrtc.client import Publisher, ToneTrack

    gw = Confined(src, args.quota, args.gc_burst, args.pin)
    period, burst = args.cfs[0]
    gw.set_cfs(period, burst)
    gw.start()
    loads = [fanout.WorkerProc(gw.url, "bench", args) for _ in range(args.load_procs)]
    rows: list[dict] = []
    publisher = None
    transport = None
    try:
        await fanout.wait_http(gw.url, gw.proc)  # type: ignore[arg-type]
        publisher = Publisher(gw.url, "bench", ToneTrack(440))
        await publisher.negotiate()
        await publisher.connected()
        await asyncio.gather(*(w.start() for w in loads))
        n = 0

        async def add(k: int) -> None:
            nonlocal n
            split = [k // len(loads) + (i < k % len(loads)) for i in range(len(loads))]
            await asyncio.gather(*(w.call({"cmd": "add", "n": m, "concurrency": 2})
                                   for w, m in zip(loads, split, strict=True) if m))
            n += k

        if listeners is not None:
            await add(listeners)
        else:  # calibrate: listeners until the gateway uses --load of its quota
            while True:
                await add(args.step)
                await asyncio.sleep(2.0)
                c0, t0 = gw.cpu(), time.monotonic()
                await asyncio.sleep(4.0)
                share = (gw.cpu() - c0) / (time.monotonic() - t0) / args.quota
                print(f"  {label}: {n} listeners use {100 * share:.0f} % of the quota",
                      flush=True)
                if share >= args.load or n >= args.max_listeners:
                    break
        loop = asyncio.get_running_loop()
        transport, sip = await loop.create_datagram_endpoint(
            lambda: SipClient(("127.0.0.1", gw.sip_port)), local_addr=("127.0.0.1", 0))
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.http)) as http:
            for period, burst in args.cfs:
                gw.set_cfs(period, burst)
                await asyncio.sleep(3.0)
                for kind in args.bursts:
                    row = await phase(kind, gw, sip, http, args)
                    row.update(server=label, listeners=n, period_us=period, burst_us=burst,
                               quota=args.quota, sip_failures=sip.failures)
                    sip.failures = 0
                    rows.append(row)
                    print(format_row(row), flush=True)
        return rows, n
    finally:
        if transport is not None:
            transport.close()
        await fanout.stop_load(loads, publisher)
        gw.stop()
        gw.remove()


def format_row(r: dict) -> str:
    cfs = f"{r['period_us'] // 1000} ms" + (f" +{r['burst_us'] // 1000} ms burst"
                                             if r["burst_us"] else "")
    return (f"{r['server']:<8} {cfs:<20} {r['kind']:<12} ticks {r['ticks']:>5} "
            f"p50 {r['p50_ms']:5.1f} p99 {r['p99_ms']:6.1f} max {r['max_ms']:6.1f} ms  "
            f"cores {r['cores']:.3f} throttled {100 * r['throttled_periods']:4.1f} % "
            f"of periods  full GC {r['gc_full']} (max {r['gc_full_max_ms']:.1f} ms)"
            + (f"  SIP failures {r['sip_failures']}" if r["sip_failures"] else ""))


async def main(args: argparse.Namespace) -> int:
    from gateway.webrtc.aiortc_patches import set_host_addresses

    set_host_addresses(["127.0.0.1"])
    if os.geteuid() != 0 or not (CGROUP / "cpu.cfs_quota_us").exists():
        raise SystemExit("needs root and cgroup v1's cpu controller at /sys/fs/cgroup/cpu")
    load_group = CGROUP / "gwbench-load"
    load_group.mkdir(exist_ok=True)
    (load_group / "cpu.cfs_quota_us").write_text("-1")
    (load_group / "cpu.shares").write_text("4096")
    (load_group / "cgroup.procs").write_text(str(os.getpid()))  # children follow
    if args.pin:  # the gateway gets CPU 0 alone; this process and its children the rest
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    info = fanout.machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}; Python "
          f"{info['python']}; quota {args.quota} core; load {fanout.load_average()}",
          flush=True)
    servers: list[tuple[str, Path]] = []
    if args.previous:
        servers.append(("before", fanout.export_tree(args.previous)))
    current = fanout.export_tree(args.current) if args.current else fanout.SRC
    servers.append(("after" if args.previous else "gateway", current))
    rows: list[dict] = []
    listeners = args.listeners
    for label, src in servers:
        got, listeners = await run_server(label, src, args, listeners)
        rows += got
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": {
            k: v for k, v in vars(args).items() if k != "cfs"} | {"cfs": args.cfs},
            "rows": rows}, indent=2))
    return 0


def parse_cfs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        period, _, burst = item.partition(":")
        out.append((int(period), int(burst or 0)))
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quota", type=float, default=0.5, help="cores for the gateway")
    p.add_argument("--load", type=float, default=0.8, help="share of the quota to load")
    p.add_argument("--listeners", type=int, help="this many listeners (no calibration)")
    p.add_argument("--step", type=int, default=50, help="calibration step (listeners)")
    p.add_argument("--max-listeners", type=int, default=1500)
    p.add_argument("--cfs", type=parse_cfs, default=parse_cfs("100000:0,100000:50000,10000:0"),
                   help="CFS settings, period_us:burst_us, comma-separated")
    p.add_argument("--bursts", type=lambda s: s.split(","), default=list(BURSTS))
    p.add_argument("--phase-s", type=float, default=15.0)
    p.add_argument("--every", type=float, default=2.0, help="seconds between bursts")
    p.add_argument("--options", type=int, default=200, help="OPTIONS per burst")
    p.add_argument("--invites", type=int, default=20, help="calls per burst")
    p.add_argument("--http", type=int, default=10, help="API requests per burst")
    p.add_argument("--http-paths", type=lambda s: tuple(s.split(",")), default=HTTP_PATHS,
                   help="comma-separated paths the API bursts cycle through")
    p.add_argument("--previous", help="also run the gateway of this commit, first")
    p.add_argument("--current", help="run this commit (exported) instead of the tree")
    p.add_argument("--load-procs", type=int, default=2)
    p.add_argument("--verify-every", type=int, default=50)
    p.add_argument("--poll-ms", type=float, default=10.0)
    p.add_argument("--gc-burst", choices=("garbage", "collect"), default="garbage")
    p.add_argument("--pin", action="store_true",
                   help="the gateway alone on CPU 0, the load generators on the others")
    p.add_argument("--json")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
