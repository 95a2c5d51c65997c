"""WebRTC fan-out benchmark: one WHIP publisher, N WHEP listeners, gateway vs baseline.

    python bench/fanout.py [--max-listeners N] [--window S] [--quick]
    python bench/fanout.py --previous 0f1e115 --cpu-quota 0.5 --skip baseline

For each server (the gateway; with ``--previous REV`` the gateway of another commit,
exported with ``git archive``; then bench/baseline_server.py: MediaRelay and one Opus
encoder per listener) the benchmark starts the server as its own process (with
``--cpu-quota`` in a cgroup v1 CPU quota of its own), publishes a 440 Hz tone from this
process, and adds listeners in steps (run by ``--workers`` separate load processes)
until delivery falls below ``--min-delivery`` or a cap is hit.

Listeners do not decode. Each listener's UDP socket is tapped below aiortc: an SRTP
packet's RTP header is in the clear, so the tap records its arrival time and RTP
timestamp and drops it; one packet in ``--verify-every`` goes on through aiortc (SRTP
unprotect, RTP parse) to prove the stream is genuine. A listener therefore costs the
load processes a few microseconds per packet, and the CPU is left to the server.

Per step, over a window of ``--window`` seconds after a settling pause:

* server CPU: utime + stime of the server process (all threads) from /proc, in cores
  (CPU seconds / wall seconds), and per listener;
* delivered ratio: on-time packets / expected packets. Each listener's 20 ms media
  slots are placed on its own timeline (RTP timestamp / 48 kHz + the smallest arrival
  offset seen on that listener, i.e. its fastest packet); the slots due inside the
  window are expected; a slot counts as delivered if its packet arrived no more than
  ``--late-ms`` after its due time. Lost, skipped and too-late packets all count against
  delivery (a server that falls behind real time loses delivery, not only one that drops);
* p99 of |inter-arrival - 20 ms| over consecutive packets (pooled over all listeners).

N_max is the largest step delivered at >= 99.9 %. Listeners per core = N_max / server
cores used at N_max (if the server used less than one core, that is an extrapolation:
the table shows both numbers).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where the ``gateway`` package is imported from (--gateway-src; default: this checkout).
SRC = ROOT
FRAME_S = 0.020
TS_PER_FRAME = 960  # Opus RTP clock 48 kHz
HIST_BIN_S = 0.0001  # 0.1 ms bins for the inter-arrival deviation histogram
HIST_BINS = 2000  # up to 200 ms, plus one overflow bin
CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHER_LIMIT = 0.15  # cores used by the rest of the machine that invalidate a window

GATEWAY_STEPS = [10, 25, 50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 800, 1000]
BASELINE_STEPS = [2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200]
KINDS = ("gateway", "previous", "baseline")
#: The server under test: admission control off (the benchmark looks for the cliff) and
#: room for every step's listeners.
GATEWAY_ENV = {"GATEWAY_ADMISSION__ENABLED": "false", "GATEWAY_WEBRTC__MAX_SESSIONS": "5000"}
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


# ---------------------------------------------------------------------------------
# Load process: many listeners, no decoding
# ---------------------------------------------------------------------------------
SO_TIMESTAMPNS = 35  # Linux: kernel receive timestamp (CLOCK_REALTIME) as a timespec


class Tap:
    """Arrival time and RTP timestamp of every packet one listener receives."""

    __slots__ = (
        "arrivals", "stamps", "base", "offset", "packets", "verified", "pc", "polled",
    )  # fmt: skip

    def __init__(self) -> None:
        self.arrivals = array.array("d")  # time.monotonic() scale
        self.stamps = array.array("I")
        self.base: int | None = None  # first RTP timestamp seen
        self.offset = math.inf  # min(arrival - media time): the fastest packet
        self.packets = 0
        self.verified = 0  # packets that passed SRTP unprotect and RTP parsing in aiortc
        self.pc = None
        self.polled: list[tuple] = []  # (socket, original datagram handler)

    def record(self, arrival: float, data: bytes, verify_every: int) -> bool:
        """Note an RTP packet; True if it should also go through aiortc (verification)."""
        self.arrivals.append(arrival)
        self.stamps.append(int.from_bytes(data[4:8], "big"))
        self.packets += 1
        return not self.packets % verify_every


def is_rtp(data: bytes) -> bool:
    # RTP/SRTP (version 2) and not RTCP (packet type 192..208 in byte 1); STUN and DTLS
    # start below 64
    return len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 209


class VerifiedCounter:
    """Stands in for aiortc's receiver jitter buffer: counts, never decodes."""

    capacity = 16

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def add(self, packet):  # type: ignore[no-untyped-def]
        self.tap.verified += 1
        return False, None


def tap_protocol(protocol, tap: Tap, verify_every: int) -> None:  # type: ignore[no-untyped-def]
    """While connecting: aioice's datagram handler counts SRTP before aiortc sees it."""
    original = protocol.datagram_received
    now = time.monotonic

    def datagram_received(data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        if is_rtp(data) and not tap.record(now(), data, verify_every):
            return
        original(data, addr)

    protocol.datagram_received = datagram_received
    tap.polled.append((protocol, original))


def poll_sockets(taps: list[Tap], verify_every: int) -> None:
    """Once connected, sockets are read by a periodic sweep instead of the event loop.

    The gateway's sendto() then never has to wake a sleeping load process (on loopback
    the sender pays for the receiver's wake-up), and the arrival time is the kernel's
    receive timestamp (SO_TIMESTAMPNS), so sweeping every few ms costs no precision.
    Everything that is not RTP (STUN consent checks, RTCP, DTLS) and one RTP packet in
    ``verify_every`` are handed on to aioice/aiortc unchanged.
    """
    rt_to_mono = time.monotonic() - time.time()
    for tap in taps:
        for sock, original in tap.polled:
            while True:
                try:
                    data, anc, _flags, addr = sock.recvmsg(2048, 64)
                except BlockingIOError:
                    break
                except OSError:
                    tap.polled.remove((sock, original))
                    break
                if is_rtp(data):
                    arrival = time.monotonic()
                    for level, kind, value in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", value[:16])
                            arrival = sec + nsec * 1e-9 + rt_to_mono
                    if not tap.record(arrival, data, verify_every):
                        continue
                original(data, addr)


def switch_to_polling(tap: Tap) -> None:
    loop = asyncio.get_running_loop()
    polled = []
    for protocol, original in tap.polled:
        transport = protocol.transport
        sock = transport._sock  # asyncio internal: the datagram socket
        loop._remove_reader(transport._sock_fd)  # the event loop stops reading it
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        polled.append((sock, original))
    tap.polled = polled


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a server under test; kill it if it does not exit in ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def stop_load(workers: list, publisher: object | None) -> None:
    """Stop the listener load processes and hang up the publisher, whatever state they
    are in (a benchmark's teardown must not fail on a peer that already gave up)."""
    await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
    if publisher is not None:
        try:
            await asyncio.wait_for(publisher.pc.close(), 5)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            pass


class Refused(Exception):
    """A 503 from admission control, with the Retry-After it asked for."""

    def __init__(self, retry_after_s: float, detail: str) -> None:
        super().__init__(f"503 (Retry-After {retry_after_s:g}): {detail}")
        self.retry_after_s = retry_after_s


class LoadWorker:
    def __init__(self, base_url: str, stream: str, verify_every: int, poll_interval: float) -> None:
        self.base_url = base_url
        self.stream = stream
        self.verify_every = verify_every
        self.poll_interval = poll_interval
        self.taps: list[Tap] = []
        self.failed = 0
        self.refusals = 0  # 503 answers (admission control), retried or not
        self.http = None
        self._poller: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            poll_sockets(self.taps, self.verify_every)
            await asyncio.sleep(self.poll_interval)

    async def connect_one(self) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from gateway.webrtc.aiortc_patches import replace_jitter_buffer

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tap = Tap()
        tap.pc = pc
        transceiver = pc.addTransceiver("audio", direction="recvonly")
        receiver = transceiver.receiver
        replace_jitter_buffer(receiver, VerifiedCounter(tap))
        connected = asyncio.get_running_loop().create_future()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("connected", "failed", "closed") and not connected.done():
                connected.set_result(pc.connectionState)

        await pc.setLocalDescription(await pc.createOffer())
        for protocol in receiver.transport.transport._connection._protocols:
            tap_protocol(protocol, tap, self.verify_every)
        url = f"{self.base_url}/whep/{self.stream}"
        headers = {"Content-Type": "application/sdp"}
        async with self.http.post(url, data=pc.localDescription.sdp, headers=headers) as r:
            body = await r.text()
            if r.status == 503:
                self.refusals += 1
                await pc.close()
                raise Refused(float(r.headers.get("Retry-After", "1")), body[:200])
            if r.status != 201:
                raise RuntimeError(f"POST {url}: {r.status} {body[:200]}")
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        state = await asyncio.wait_for(connected, 20.0)
        if state != "connected":
            raise RuntimeError(f"listener {state}")
        if self.poll_interval > 0:
            switch_to_polling(tap)
        self.taps.append(tap)

    async def add(self, n: int, concurrency: int, retry_for: float = 0.0) -> dict:
        """Connect ``n`` listeners; a 503 is retried after its Retry-After, as a client
        would, for up to ``retry_for`` seconds (then it counts as failed)."""
        import aiohttp

        if self.http is None:
            self.http = aiohttp.ClientSession()
        if self._poller is None and self.poll_interval > 0:
            self._poller = asyncio.create_task(self._poll())
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one() -> None:
            give_up = time.monotonic() + retry_for
            while True:
                try:
                    async with sem:
                        await self.connect_one()
                    return
                except Refused as exc:
                    if time.monotonic() + exc.retry_after_s > give_up:
                        self.failed += 1
                        errors.append(repr(exc))
                        return
                    await asyncio.sleep(exc.retry_after_s)
                except Exception as exc:  # noqa: BLE001 - report and count
                    self.failed += 1
                    errors.append(repr(exc))
                    return

        await asyncio.gather(*(one() for _ in range(n)))
        return {"listeners": len(self.taps), "failed": self.failed,
                "refusals": self.refusals, "errors": errors[:3]}

    def window_stats(self, t0: float, t1: float, late_s: float) -> dict:
        import numpy as np

        expected = delivered = late = packets = 0
        verified = sampled = 0
        worst = 1.0
        hist = np.zeros(HIST_BINS + 1, dtype=np.int64)
        dev_max = 0.0
        for tap in self.taps:
            verified += tap.verified
            sampled += tap.packets // self.verify_every
            n = min(len(tap.arrivals), len(tap.stamps))
            arrival = np.frombuffer(tap.arrivals, dtype=np.float64, count=n).copy()
            stamp = np.frombuffer(tap.stamps, dtype=np.uint32, count=n).astype(np.int64)
            if tap.base is None and n:
                tap.base = int(stamp[0])
            base = tap.base if tap.base is not None else 0
            media = ((stamp - base) % (1 << 32)) / 48000.0
            if n:
                tap.offset = min(tap.offset, float((arrival - media).min()))
            offset = tap.offset if n else t0
            k_lo = math.ceil((t0 - offset) / FRAME_S - 1e-9)
            k_hi = math.ceil((t1 - offset) / FRAME_S - 1e-9)
            want = max(0, k_hi - k_lo)
            slot = np.rint(media / FRAME_S).astype(np.int64)
            in_window = (slot >= k_lo) & (slot < k_hi)
            on_time = in_window & (arrival - (offset + slot * FRAME_S) <= late_s)
            got = int(np.unique(slot[on_time]).size)
            got_any = int(np.unique(slot[in_window]).size)
            expected += want
            delivered += min(got, want)
            late += got_any - got
            if want:
                worst = min(worst, got / want)
            # inter-arrival deviation, consecutive slots inside the arrival window
            sel = (arrival >= t0) & (arrival < t1)
            a, s = arrival[sel], slot[sel]
            packets += int(a.size)
            if a.size > 1:
                step = np.diff(s) == 1
                dev = np.abs(np.diff(a)[step] - FRAME_S)
                if dev.size:
                    dev_max = max(dev_max, float(dev.max()))
                    idx = np.minimum((dev / HIST_BIN_S).astype(np.int64), HIST_BINS)
                    hist += np.bincount(idx, minlength=HIST_BINS + 1)
            # keep only what a later window can still need
            keep = int(np.searchsorted(arrival, t1 - 1.0))
            if keep > 0:
                del tap.arrivals[:keep]
                del tap.stamps[:keep]
        return {
            "listeners": len(self.taps),
            "expected": expected,
            "delivered": delivered,
            "late": late,
            "packets": packets,
            "verified": verified,
            "sampled": sampled,
            "worst": worst,
            "dev_max": dev_max,
            "hist": hist.tolist(),
        }


async def worker_main(args: argparse.Namespace) -> None:
    """Serve JSON commands from stdin (one per line), answer on stdout."""
    from gateway.webrtc.aiortc_patches import set_host_addresses

    set_host_addresses(["127.0.0.1"])
    worker = LoadWorker(args.base_url, args.stream, args.verify_every, args.poll_ms / 1000)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "add":
            reply(await worker.add(cmd["n"], cmd.get("concurrency", 6), cmd.get("retry_for", 0.0)))
        elif cmd["cmd"] == "stats":
            poll_sockets(worker.taps, worker.verify_every)
            reply(worker.window_stats(cmd["t0"], cmd["t1"], cmd["late_s"]))
        elif cmd["cmd"] == "quit":
            break
    reply({"bye": True})
    sys.stdout.flush()
    os._exit(0)  # closing hundreds of peer connections politely takes longer than the server


# ---------------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------------
def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds spent by the whole machine (all CPUs, everything but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    return (sum(values[:8]) - idle - steal) / CLK_TCK


async def wait_quiet(limit: float, timeout: float) -> float:
    """Wait (bounded) until other processes use less than ``limit`` cores; return their use."""
    deadline = time.monotonic() + timeout
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        await asyncio.sleep(1.0)
        other = (machine_busy() - b0) / (time.monotonic() - t0)
        if other < limit or time.monotonic() > deadline:
            return other


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    import aiortc
    import av

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
    }


class CpuQuota:
    """A cgroup v1 CPU quota of the server under test's own (``docker run --cpus`` does
    the same), with a high ``cpu.shares`` so other load on a shared machine does not take
    that quota away. Throttled time is read from the group's ``cpu.stat``."""

    def __init__(self, cores: float, period_us: int) -> None:
        self.path = CGROUP_CPU / f"fanout-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(str(period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(max(1000, round(cores * period_us))))
        # and a weight 8x a process's: it gets its quota even when others want the CPU
        # (as a container whose CPU request equals its limit)
        (self.path / "cpu.shares").write_text("8192")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            name, value = line.split()
            if name == "throttled_time":
                return int(value) / 1e9
        return 0.0

    def remove(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (CGROUP_CPU / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # gone meanwhile
        self.path.rmdir()


def export_tree(rev: str) -> Path:
    """``rev`` of this repository as a plain source tree in a temporary directory (no
    worktree, nothing checked out here)."""
    out = Path(tempfile.mkdtemp(prefix="fanout-previous-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class WorkerProc:
    def __init__(self, base_url: str, stream: str, args: argparse.Namespace) -> None:
        self.cmd = [
            sys.executable, __file__, "--worker", "--base-url", base_url, "--stream", stream,
            "--verify-every", str(args.verify_every), "--poll-ms", str(args.poll_ms),
            "--gateway-src", str(SRC),
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.listeners = 0

    async def start(self) -> None:
        env = src_env()
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, limit=1 << 24
        )
        ready = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30))
        assert "ready" in ready, ready

    async def call(self, obj: dict, timeout: float = 300.0) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("load worker exited")
        return json.loads(line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await self.call({"cmd": "quit"}, timeout=5)
            await asyncio.wait_for(self.proc.wait(), 5)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            await self.proc.wait()


@dataclass
class Row:
    server: str
    listeners: int
    server_cores: float
    server_sys: float  # of which in the kernel
    load_cores: float
    other_cores: float  # everything else on the machine (kernel threads, other processes)
    delivered: float
    worst: float
    late: int
    p99_ms: float
    max_ms: float
    srtp_ok: float  # of the packets sent on through aiortc, share that decrypted and parsed
    failed: int
    throttled: float = 0.0  # share of the window the server's CPU quota held it back
    load_avg: str = ""  # /proc/loadavg (1, 5, 15 min) at the end of the window
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_per_listener_pct(self) -> float:
        return 100.0 * self.server_cores / self.listeners if self.listeners else 0.0


def percentile_from_hist(hist: list[int], q: float) -> float:
    total = sum(hist)
    if not total:
        return float("nan")
    target = q * total
    run = 0
    for i, count in enumerate(hist):
        run += count
        if run >= target:
            return (i + 0.5) * HIST_BIN_S
    return HIST_BINS * HIST_BIN_S


def start_server(kind: str, port: int, args: argparse.Namespace) -> subprocess.Popen:
    """The server under test; "previous" is the gateway of ``--previous``'s tree."""
    if kind == "baseline":
        cmd = [sys.executable, str(ROOT / "bench" / "baseline_server.py"), "--port", str(port)]
        if args.baseline_numpy_level:
            cmd.append("--numpy-audio-level")
        return subprocess.Popen(cmd, cwd=SRC, env=src_env(), stdout=subprocess.DEVNULL)
    src = args.previous_src if kind == "previous" else SRC
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--port", str(port),
        "--ice-host", "127.0.0.1", "--log-level", "warning",
    ]  # fmt: skip
    extra = dict(e.split("=", 1) for e in args.env.get(kind, []))
    return subprocess.Popen(cmd, cwd=src, env=src_env(src) | GATEWAY_ENV | extra,
                            stdout=subprocess.DEVNULL)


def src_env(src: Path | None = None) -> dict[str, str]:
    path = str(src or SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=path)


async def wait_http(base_url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with http.get(base_url + "/api/v1/stats") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("server did not start")


async def server_stats(base_url: str) -> dict:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url + "/api/v1/stats") as r:
                return await r.json()
    except Exception as exc:  # noqa: BLE001
        return {"error": repr(exc)}


def start_profilers(
    args: argparse.Namespace, kind: str, n: int, server_pid: int, worker_pid: int
) -> list[subprocess.Popen]:
    """With --profile DIR: py-spy the server and one load process during the window."""
    if not args.profile:
        return []
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for role, pid in (("server", server_pid), ("load", worker_pid)):
        cmd = [
            "py-spy", "record", "--nonblocking", "--format", "raw", "--rate", "100",
            "-d", str(max(1, int(args.window))), "-p", str(pid),
            "-o", str(out / f"{kind}-{n}-{role}.txt"),
        ]  # fmt: skip
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


async def measure(
    kind: str,
    n: int,
    proc: subprocess.Popen,
    workers: list[WorkerProc],
    base_url: str,
    args: argparse.Namespace,
    failed: int,
    errors: list[str],
    quota: CpuQuota | None,
) -> Row:
    """One measurement window at the current listener count."""
    pids = [w.pid for w in workers]
    t0 = time.monotonic()
    th0 = quota.throttled_s() if quota else 0.0
    u0, s0 = cpu_times(proc.pid)
    m0 = machine_busy()
    l0 = sum(cpu_seconds(p) for p in pids) + cpu_seconds(os.getpid())
    spies = start_profilers(args, kind, n, proc.pid, workers[0].pid)
    await asyncio.sleep(args.window)
    t1 = time.monotonic()
    u1, s1 = cpu_times(proc.pid)
    m1 = machine_busy()
    l1 = sum(cpu_seconds(p) for p in pids) + cpu_seconds(os.getpid())
    th1 = quota.throttled_s() if quota else 0.0
    await asyncio.sleep(args.late_ms / 1000.0 + 0.1)
    for spy in spies:
        spy.wait(30)
    parts = await asyncio.gather(
        *(
            w.call({"cmd": "stats", "t0": t0, "t1": t1, "late_s": args.late_ms / 1000})
            for w in workers
        )
    )
    expected = sum(p["expected"] for p in parts)
    delivered = sum(p["delivered"] for p in parts)
    hist = [sum(col) for col in zip(*(p["hist"] for p in parts), strict=True)]
    wall = t1 - t0
    row = Row(
        server=kind,
        listeners=sum(p["listeners"] for p in parts),
        server_cores=(u1 + s1 - u0 - s0) / wall,
        server_sys=(s1 - s0) / wall,
        load_cores=(l1 - l0) / wall,
        other_cores=max(0.0, (m1 - m0 - (u1 + s1 - u0 - s0) - (l1 - l0)) / wall),
        delivered=delivered / expected if expected else 0.0,
        worst=min(p["worst"] for p in parts),
        late=sum(p["late"] for p in parts),
        p99_ms=1000 * percentile_from_hist(hist, 0.99),
        max_ms=1000 * max(p["dev_max"] for p in parts),
        srtp_ok=sum(p["verified"] for p in parts) / max(1, sum(p["sampled"] for p in parts)),
        failed=failed,
        throttled=(th1 - th0) / wall,
        load_avg=load_average(),
    )
    if failed:
        row.notes.append(f"{failed} listeners failed to connect: {errors[:1]}")
    if row.server_cores + row.load_cores + row.other_cores > 0.9 * (os.cpu_count() or 1):
        row.notes.append("machine CPU-saturated")
    if args.profile:
        row.notes.append("profiled: py-spy's CPU shows as other")
    elif busy_window(row, args):
        row.notes.append(f"other processes used {row.other_cores:.2f} cores: not valid")
    if row.srtp_ok < 0.95:
        row.notes.append("packets fail SRTP/RTP checks")
    if kind != "baseline":
        st = await server_stats(base_url)
        row.notes.append(
            f"encoders_active={st.get('encoders_active')} late_ticks={st.get('clock_late_ticks')}"
        )
    return row


def busy_window(row: Row, args: argparse.Namespace) -> bool:
    """Other processes may have changed the result: without a quota, any other load above
    ``OTHER_LIMIT``; with one, a machine so busy the server may not have had its quota."""
    if not args.cpu_quota:
        return row.other_cores > OTHER_LIMIT
    total = row.server_cores + row.load_cores + row.other_cores
    return total > 0.95 * (os.cpu_count() or 1) - max(0.0, args.cpu_quota - row.server_cores)


async def run_server(kind: str, steps: list[int], args: argparse.Namespace) -> list[Row]:
    from gateway.webrtc.client import Publisher, ToneTrack

    other = await wait_quiet(0.1, args.quiet_wait)
    if other >= 0.1:
        print(f"  [{kind}] warning: other processes use {other:.2f} cores", flush=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    stream = "bench"
    proc = start_server(kind, port, args)
    quota = CpuQuota(args.cpu_quota, args.cfs_period_us) if args.cpu_quota else None
    if quota is not None:
        quota.add(proc.pid)
    print(f"  [{kind}] load average {load_average()}", flush=True)
    rows: list[Row] = []
    workers = [WorkerProc(base_url, stream, args) for _ in range(args.workers)]
    publisher = None
    started = time.monotonic()
    waited = 0.0  # spent waiting for other processes to go quiet: not part of the cap
    try:
        await wait_http(base_url, proc)
        publisher = Publisher(base_url, stream, ToneTrack(440))
        await publisher.negotiate()
        await publisher.connected()
        await asyncio.gather(*(w.start() for w in workers))
        await asyncio.sleep(1.0)
        current = 0
        for n in steps:
            if n > args.max_listeners:
                break
            if time.monotonic() - started - waited > args.time_cap:
                print(f"  [{kind}] time cap reached", flush=True)
                break
            # spread the new listeners over the load processes
            add = [0] * len(workers)
            for i in range(n - current):
                add[(current + i) % len(workers)] += 1
            t_add = time.monotonic()
            results = await asyncio.gather(
                *(
                    w.call({"cmd": "add", "n": k, "concurrency": args.concurrency})
                    for w, k in zip(workers, add, strict=True)
                    if k
                )
            )
            failed = sum(r["failed"] for r in results)
            errors = [e for r in results for e in r.get("errors", [])]
            current = n
            add_s = time.monotonic() - t_add
            await asyncio.sleep(args.settle)

            row = await measure(kind, n, proc, workers, base_url, args, failed, errors, quota)
            misses = busy = 0
            while True:
                if busy_window(row, args) and busy < 2 and not args.profile:
                    busy += 1
                    reason = "machine busy"
                    w0 = time.monotonic()
                    await wait_quiet(0.1, args.quiet_wait)
                    waited += time.monotonic() - w0
                elif row.delivered < args.min_delivery and misses < args.retries:
                    misses += 1
                    reason = f"{100 * row.delivered:.2f} % delivered"
                else:
                    break
                print(format_row(row) + f"   (re-measuring: {reason})", flush=True)
                row = await measure(kind, n, proc, workers, base_url, args, failed, errors,
                                    quota)
                row.notes.append(f"re-measured after {reason}")
            print(format_row(row) + f"   (connect {add_s:.1f} s)", flush=True)
            rows.append(row)
            if row.delivered < args.min_delivery:
                break
    finally:
        await stop_load(workers, publisher)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if quota is not None:
            quota.remove()
    return rows


HEADER = (
    f"{'server':<9}{'N':>5}{'srv cores':>10}{'(sys)':>7}{'%core/lst':>10}{'load cores':>11}"
    f"{'other':>7}"
    f"{'delivered':>11}{'worst':>8}{'late':>6}{'p99 |dev|':>10}{'max |dev|':>10}{'srtp ok':>9}"
    f"{'thrott':>7}  load avg"
)


def format_row(r: Row) -> str:
    return (
        f"{r.server:<9}{r.listeners:>5}{r.server_cores:>10.3f}{r.server_sys:>7.3f}"
        f"{r.cpu_per_listener_pct:>10.3f}"
        f"{r.load_cores:>11.3f}{r.other_cores:>7.2f}"
        f"{100 * r.delivered:>10.3f}%{100 * r.worst:>7.1f}%{r.late:>6}"
        f"{r.p99_ms:>8.2f}ms{r.max_ms:>8.1f}ms{100 * r.srtp_ok:>7.1f}%"
        f"{100 * r.throttled:>6.1f}%  {r.load_avg}"
        + (f"  {'; '.join(r.notes)}" if r.notes else "")
    )


def summarise(kind: str, rows: list[Row], min_delivery: float) -> dict:
    good = [r for r in rows if r.delivered >= min_delivery]
    if not good:
        return {"server": kind, "n_max": 0, "cores": 0.0, "per_core": 0.0, "capped": False}
    best = max(good, key=lambda r: r.listeners)
    capped = best is rows[-1]  # never dropped below the threshold: a lower bound
    return {
        "server": kind,
        "n_max": best.listeners,
        "cores": best.server_cores,
        "per_core": best.listeners / max(best.server_cores, 1e-6),
        "cpu_per_listener_pct": best.cpu_per_listener_pct,
        "capped": capped,
    }


async def orchestrate(args: argparse.Namespace) -> int:
    from gateway.webrtc.aiortc_patches import set_host_addresses

    set_host_addresses(["127.0.0.1"])
    info = machine()
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}, "
        f"aiortc {info['aiortc']}, av {info['av']}, aiohttp {info['aiohttp']}"
    )
    print(
        f"window {args.window:.0f} s, settle {args.settle:.0f} s, late after "
        f"{args.late_ms:.0f} ms, {args.workers} load processes, "
        f"threshold {100 * args.min_delivery:.1f} %"
        + (f", server CPU quota {args.cpu_quota:g} cores" if args.cpu_quota else "")
        + (f", previous = {args.previous}" if args.previous else "")
    )
    print(f"load average {load_average()}")
    print(HEADER, flush=True)
    all_rows: list[Row] = []
    order = [("gateway", args.gateway_steps), ("previous", args.previous_steps),
             ("baseline", args.baseline_steps)]
    if not args.previous:
        order = [o for o in order if o[0] != "previous"]
    for kind, steps in order:
        if kind in args.skip:
            continue
        all_rows += await run_server(kind, steps, args)

    print("\n" + HEADER)
    for r in all_rows:
        print(format_row(r))
    summary = {
        kind: summarise(kind, [r for r in all_rows if r.server == kind], args.min_delivery)
        for kind, _ in order
        if kind not in args.skip
    }
    print()
    for item in summary.values():
        bound = ">=" if item.get("capped") else ""
        print(
            f"{item['server']:<9} N_max (>= {100 * args.min_delivery:.1f} % delivered) = "
            f"{bound}{item['n_max']}, server CPU there {item['cores']:.2f} cores "
            f"-> {item['per_core']:.0f} listeners per core"
        )
    gw, base, prev = summary.get("gateway"), summary.get("baseline"), summary.get("previous")
    if gw and prev and prev["per_core"]:
        ratio = gw["per_core"] / prev["per_core"]
        summary["ratio_previous"] = ratio
        print(f"listeners per core, gateway / previous = {ratio:.2f}x")
    if gw and base and base["per_core"]:
        ratio = gw["per_core"] / base["per_core"]
        summary["ratio"] = ratio
        print(f"listeners per core, gateway / baseline = {ratio:.1f}x (target >= 5x)")
    if gw:
        one_core = gw["n_max"] > 200 and gw["cores"] <= 1.0
        verdict = "meets" if one_core else "misses"
        if not one_core and gw.get("capped"):
            verdict = "steps ended before the limit: cannot judge"
        print(
            f"gateway: {gw['n_max']} listeners at {gw['cores']:.2f} cores "
            f"({verdict} the target of > 200 listeners on one core)"
        )
    print(f"load average {load_average()}")
    if args.plot:
        plot(all_rows, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {k: str(v) if isinstance(v, Path) else v
                             for k, v in vars(args).items() if k != "json"},
                    "rows": [r.__dict__ | {"notes": r.notes} for r in all_rows],
                    "summary": summary,
                },
                indent=2,
            )
        )
    return 0


def plot(rows: list[Row], args: argparse.Namespace) -> None:
    """Delivery against listeners, one line per server (``pip install matplotlib``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"gateway": "fan-out (this tree)", "previous": f"previous ({args.previous})",
              "baseline": "baseline (aiortc, encoder per listener)"}
    for kind in KINDS:
        mine = [r for r in rows if r.server == kind]
        if mine:
            ax.plot([r.listeners for r in mine], [100 * r.delivered for r in mine],
                    marker="o", label=labels[kind])
    ax.axhline(100 * args.min_delivery, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("WHEP listeners")
    ax.set_ylabel("delivered on time (%)")
    quota = f", server limited to {args.cpu_quota:g} core" if args.cpu_quota else ""
    ax.set_title(f"WebRTC listeners of one stream{quota}")
    ax.set_ylim(max(0.0, min([100 * r.delivered for r in rows] + [99.0]) - 1), 100.2)
    ax.legend(loc="lower left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="WebRTC fan-out benchmark (gateway vs baseline)")
    p.add_argument("--max-listeners", type=int, default=1000, help="stop stepping above this")
    p.add_argument("--window", type=float, default=10.0, help="measurement window, seconds")
    p.add_argument("--settle", type=float, default=3.0, help="pause after adding listeners")
    p.add_argument("--quick", action="store_true", help="two short steps per server (< 60 s)")
    p.add_argument("--workers", type=int, default=2, help="listener load processes")
    p.add_argument("--concurrency", type=int, default=6, help="connects in flight per worker")
    p.add_argument("--late-ms", type=float, default=100.0, help="a packet later than this is lost")
    p.add_argument("--min-delivery", type=float, default=0.999)
    p.add_argument(
        "--retries", type=int, default=1,
        help="re-measure a step that misses --min-delivery this many times before stopping",
    )  # fmt: skip
    p.add_argument(
        "--time-cap", type=float, default=420.0,
        help="seconds per server (not counting waits for a quiet machine)",
    )  # fmt: skip
    p.add_argument("--verify-every", type=int, default=50, help="SRTP-check 1 packet in N")
    p.add_argument(
        "--poll-ms", type=float, default=10.0,
        help="load processes sweep their sockets this often (0: event-loop reads, which make "
        "the server pay for waking the load processes)",
    )  # fmt: skip
    p.add_argument("--gateway-steps", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--baseline-steps", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--previous-steps", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--skip", action="append", default=[], choices=list(KINDS))
    p.add_argument(
        "--previous",
        help="also benchmark the gateway of this commit (or source directory) in the same "
        "run, as 'previous' (e.g. the commit before the fan-out: aiortc's per-listener path)",
    )
    p.add_argument(
        "--cpu-quota", type=float,
        help="run each server under test in a cgroup v1 CPU quota of this many cores (root)",
    )  # fmt: skip
    p.add_argument("--cfs-period-us", type=int, default=10000, help="the quota's period")
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the gateway under test only (e.g. "
                   "GATEWAY_WEBRTC__UDP_PORT=8189 against --previous . without it)")
    p.add_argument("--previous-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the --previous gateway only")
    p.add_argument("--plot", help="write delivery against listeners as a PNG (matplotlib)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--baseline-numpy-level",
        action="store_true",
        help="tuned baseline: aiortc's per-listener audio-level computation done with numpy",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=30.0,
        help="wait up to this long for the rest of the machine to be idle before each server",
    )  # fmt: skip
    p.add_argument(
        "--gateway-src",
        help="import the gateway from this source tree (e.g. a `git archive` export of a "
        "commit) instead of this checkout",
    )
    p.add_argument("--profile", help="py-spy server and load during each window into DIR")
    # load-process mode (started by the orchestrator)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    p.add_argument("--stream", default="bench", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.window = min(args.window, 4.0)
        args.settle = min(args.settle, 1.5)
        args.quiet_wait = min(args.quiet_wait, 5.0)
        args.gateway_steps = args.gateway_steps or [10, 50]
        args.baseline_steps = args.baseline_steps or [2, 5]
        args.previous_steps = args.previous_steps or [10, 50]
    args.gateway_steps = args.gateway_steps or GATEWAY_STEPS
    args.baseline_steps = args.baseline_steps or BASELINE_STEPS
    args.previous_steps = args.previous_steps or GATEWAY_STEPS
    args.previous_src = None
    args.env = {"gateway": args.gateway_env, "previous": args.previous_env}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global SRC
    SRC = Path(args.gateway_src).resolve() if args.gateway_src else ROOT
    sys.path.insert(0, str(SRC))
    if args.worker:
        asyncio.run(worker_main(args))
        return 0
    exported = None
    if args.previous:
        given = Path(args.previous)
        if given.is_dir():
            args.previous_src = given.resolve()
        else:
            args.previous_src = exported = export_tree(args.previous)
    try:
        return asyncio.run(orchestrate(args))
    finally:
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
