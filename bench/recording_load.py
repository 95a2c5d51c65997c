"""Recording and metering load: CPU per stream, and how many streams one core can record.

    python bench/recording_load.py [--steps 150,200,250] [--window 20] [--dir /dev/shm]

For every N in ``--steps`` and every configuration in ``--configs`` the gateway runs as
its own process (``python -m gateway serve --config FILE``) with N declared streams, each
fed through an RTP input by one sender process: speech-like audio (talk spurts over a
-50 dBFS noise floor, so the analysers never take their digital-silence fast path), 50
packets/s per stream, L16 48 kHz by default (no resampling in the gateway; ``--codec
PCMU`` adds the 8 -> 48 kHz decode of a telephone input). Configurations, measured in
the same run, each in a fresh gateway:

* ``base``: streams fed, ``[processing] analysers = false``, no recording;
* ``meter``: analysers on (levels, BS.1770 loudness, VAD, silence alarm: the default);
* ``wav``: analysers on and every stream recorded to WAV (48 kHz, 16-bit);
* ``opus``: analysers on and every stream recorded to Ogg/Opus (one shared Opus encode
  per stream, which the recording muxes).

Recordings are started through the HTTP API (``POST .../outputs {"type": "recording"}``),
one after the other, so their one-second flushes are spread over the second, as for
recordings started at different times. ``--auto`` records with ``[recording] auto``
instead; the streams are then made by the inputs (dynamic), because a declared stream
that matches ``auto`` is recorded twice. After ``--warmup`` s, each configuration is
measured over ``--window`` s:

* CPU: utime + stime of the gateway process (all threads, psutil) over the window, in %
  of one core; ``loop``: the event-loop (main) thread alone; ``%/stream``: CPU / N;
  ``+/stream``: (CPU - CPU of the same-N ``base``) / N;
* clock: ``missed``: ticks due in the window (window / 20 ms) minus the media clock's
  ticks (``clock_ticks``; +-1 is sampling); ``late``: ticks the clock skipped
  (``clock_late_ticks``: the loop stalled for over 200 ms); ``hz p99``: 99th percentile
  latency of ``GET /healthz`` probed 10 times a second (event-loop stalls);
* ``gaps``: ticks in the window for which an input had no frame (silence written) plus
  frames the analysers' readers skipped (fell more than the ring behind);
* recordings: after the window every recording is stopped (``DELETE``) and its file's
  duration (``GET /api/v1/recordings``) compared with the wall time it ran. ``complete``:
  recordings short by at most 60 ms (start/stop latency) whose reader skipped nothing;
  ``skip``: frames the recorders' readers skipped; ``worst``: the largest shortfall; WAV
  files are also scanned for silent 20 ms frames after their first second (there should
  be none); ``MB/s``: the gateway's file writes (``write_chars``) over the window;
* ``rq wait``: share of the window the event-loop thread was runnable but waiting for a
  CPU (``/proc/PID/task/PID/schedstat``): other processes starving the gateway;
  ``sender``: cores of the sender and this process; ``other``: everything else on the
  machine. A window that fails while the loop waited over 2 % of it (or others used over
  0.15 cores) is measured again (``--retries``); if it fails starved again, its N is
  "not decided" rather than failed.

``--listeners``: every stream also gets an RTP output (PCMU) to a listener socket of
this process, and ``delivery`` is the share of the window's 20 ms ticks each listener
received a packet for (worst and mean over the streams; +-1 packet for sampling).

N_max is the largest N whose recording configuration has every recording complete, no
tick skipped, at most 1 missed, no gaps (and with ``--listeners``, every listener at
>= 99.9 %). ``--extend K`` keeps adding K streams
(``base`` and the recording configuration only) until that fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.codecs.g711 import ulaw_encode  # noqa: E402

CONFIGS = ("base", "meter", "wav", "opus")
FRAME_S = 0.020
OTHER_LIMIT = 0.15  # cores used by other processes: noted, and a failed window is retried
STARVED = 0.02  # share of the window the loop thread waited for a CPU: a failure is not decided
SHORT_S = 0.06  # a recording may lack this much (start/stop latency) and still be complete


# -- audio and sender ----------------------------------------------------------------------
def speech_like(rate: int, seconds: float = 10.0, seed: int = 1) -> np.ndarray:
    """Talk spurts of a harmonic 'voice' (F0 130-190 Hz, 4 Hz syllables, 1.2 s on, 0.6 s
    off) over a -50 dBFS noise floor: every frame is above the analysers' -55 dBFS
    threshold, so none takes a silence fast path (a quiet room, not digital silence)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 160 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    top = min(3400, rate / 2 - 200)
    voice = sum(np.sin(k * phase) / k for k in range(1, int(top / 190) + 1))
    voice /= np.max(np.abs(voice))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) * ((t % 1.8) < 1.2)
    noise = rng.standard_normal(t.size) * 32768 * 10 ** (-50 / 20)
    x = 0.3 * 32767 * voice * envelope + noise
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def payloads(codec: str) -> tuple[list[bytes], int, int]:
    """(one payload per 20 ms of a 10 s loop, payload type, RTP clock rate)."""
    if codec == "PCMU":
        pcm = speech_like(8000)
        return [ulaw_encode(pcm[i : i + 160]) for i in range(0, pcm.size, 160)], 0, 8000
    pcm = speech_like(48000)
    return [pcm[i : i + 960].astype(">i2").tobytes() for i in range(0, pcm.size, 960)], 120, 48000


def sender(ports: list[int], codec: str, conn) -> None:  # type: ignore[no-untyped-def]
    """Send one packet per 20 ms to every port until told to stop. The ports are spread
    over ten 2 ms slots (streams do not all arrive in the same millisecond), and each
    stream starts at its own place in the audio loop."""
    loop, pt, rate = payloads(codec)
    step = rate // 50
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    slots: list[list[tuple[int, int]]] = [[] for _ in range(10)]
    for i, port in enumerate(ports):
        slots[i % 10].append((i, port))
    pack = struct.Struct("!BBHII").pack
    start = time.monotonic() + 0.05
    k = 0
    while True:
        frame, slot = divmod(k, 10)
        if slot == 0 and conn.poll():
            break
        for i, port in slots[slot]:
            n = frame + 37 * i
            header = pack(0x80, pt, n & 0xFFFF, (n * step) & 0xFFFFFFFF, 0x5EED0000 + i)
            try:
                sock.sendto(header + loop[n % len(loop)], ("127.0.0.1", port))
            except BlockingIOError:
                pass
        k += 1
        delay = start + k * FRAME_S / 10 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:  # starved for a second: do not burst the backlog
            start -= delay
    sock.close()


class Listeners(threading.Thread):
    """One RTP listener per stream (``--listeners``): a UDP socket each, packets counted
    per socket; ``counts()`` reads them (a window's delivery is the difference of two
    readings against the ticks due in it)."""

    def __init__(self, n: int) -> None:
        super().__init__(daemon=True)
        import selectors

        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        port = 31000
        while len(self.sockets) < n:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
            else:
                sock.setblocking(False)
                self.selector.register(sock, 1, len(self.sockets))
                self.sockets.append(sock)
            port += 2  # RTCP goes to port + 1
        self.received = [0] * n
        self.stop = threading.Event()

    @property
    def ports(self) -> list[int]:
        return [sock.getsockname()[1] for sock in self.sockets]

    def counts(self) -> list[int]:
        return list(self.received)

    def run(self) -> None:
        received = self.received
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.2):
                sock, i = key.fileobj, key.data
                while True:
                    try:
                        sock.recv(2048)  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
                    received[i] += 1
        for sock in self.sockets:
            sock.close()


# -- gateway control ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


class Prober(threading.Thread):
    """GET /healthz every 100 ms on one keep-alive connection; latencies in seconds."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.wait(0.1):
            t = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            self.latencies.append(time.perf_counter() - t)
        conn.close()


def machine_busy() -> float:
    """CPU seconds of the whole machine (every CPU, all but idle, iowait and steal)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0) - getattr(
        t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait (bounded) until other processes use less than ``limit`` cores; their use."""
    deadline = time.monotonic() + timeout
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        time.sleep(1.0)
        other = (machine_busy() - b0) / (time.monotonic() - t0)
        if other < limit or time.monotonic() > deadline:
            return other


@dataclass
class Sample:
    wall: float
    cpu: float
    loop: float
    rq_wait: float
    writes: int
    busy: float
    load: float
    stats: dict
    streams: dict


def sample(base: str, gw: psutil.Process, load: list[psutil.Process]) -> Sample:
    streams = {s["name"]: s for s in api(base, "/api/v1/streams")["streams"]}
    stats = api(base, "/api/v1/stats")
    wall = time.monotonic()
    t = gw.cpu_times()
    loop = next((th.user_time + th.system_time for th in gw.threads() if th.id == gw.pid), 0.0)
    return Sample(wall, t.user + t.system, loop, run_queue_wait(gw.pid),
                  gw.io_counters().write_chars, machine_busy(),
                  sum(sum(p.cpu_times()[:2]) for p in load), stats, streams)


def run_queue_wait(pid: int) -> float:
    """Seconds the event-loop thread has spent runnable but waiting for a CPU."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def gaps(streams: dict) -> int:
    """Ticks without an input frame, plus frames the analysers' readers skipped."""
    total = 0
    for s in streams.values():
        total += s["frames_silence"]
        total += (s.get("analysis") or {}).get("skipped_frames", 0)
    return total


@dataclass
class Row:
    config: str
    n: int
    cpu: float  # cores
    loop: float
    rq_wait: float  # share of the window the loop thread waited for a CPU
    other: float
    sender: float
    missed: int  # due ticks (window / 20 ms) minus clock ticks, rounded
    late: int
    hz_p99_ms: float
    hz_max_ms: float
    gaps: int
    rec: int = 0
    complete: int = 0
    skipped: int = 0
    worst_short_s: float = 0.0
    write_mbs: float = 0.0
    zero_frames: int = 0
    delivery_worst: float | None = None  # --listeners: the worst stream's share delivered
    delivery_mean: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.late == 0 and self.missed <= 1 and self.gaps == 0
                and self.complete == self.rec
                and (self.delivery_worst is None or self.delivery_worst >= 0.999))


def config_text(n: int, kind: str, http_port: int, directory: Path, auto: bool) -> str:
    names = ", ".join(f'"r{i:03d}"' for i in range(n))
    fmt = "opus" if kind == "opus" else "wav"
    return "\n".join([
        'log_level = "warning"',
        "[http]", f"port = {http_port}",
        "[sip]", "enabled = false",
        "[admission]", "enabled = false",  # a cost measurement: nothing refused
        # --auto: dynamic streams (made by the inputs), because a declared stream that
        # matches recording.auto is recorded twice (see docs/benchmarks.md)
        "[streams]", f"declared = [{names if not auto else ''}]",
        "[processing]", f"analysers = {'false' if kind == 'base' else 'true'}",
        "[recording]", f'directory = "{directory}"', f'format = "{fmt}"',
        f"auto = {json.dumps(['r*'] if auto and kind in ('wav', 'opus') else [])}",
        "",
    ])


def run_config(n: int, kind: str, args: argparse.Namespace) -> Row:
    other_before = wait_quiet(0.1, args.quiet_wait)
    work = Path(tempfile.mkdtemp(prefix=f"recload-{kind}-{n}-", dir=args.dir))
    http_port = free_port()
    cfg = work / "gateway.toml"
    cfg.write_text(config_text(n, kind, http_port, work / "rec", args.auto))
    log = open(work / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)],
                            cwd=args.gateway_src or ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    tx = None
    parent = None
    listeners: Listeners | None = None
    try:
        for _ in range(200):
            try:
                api(base, "/healthz")
                break
            except OSError:
                time.sleep(0.05)
        ports = []
        body: dict = {"type": "rtp", "port": 0, "codec": args.codec}
        for i in range(n):
            ports.append(api(base, f"/api/v1/streams/r{i:03d}/inputs", "POST", body)["port"])
        if args.listeners:
            listeners = Listeners(n)
            listeners.start()
            for i, port in enumerate(listeners.ports):
                api(base, f"/api/v1/streams/r{i:03d}/outputs", "POST",
                    {"type": "rtp", "host": "127.0.0.1", "port": port, "codec": "PCMU"})
        parent, child = mp.Pipe()
        tx = mp.Process(target=sender, args=(ports, args.codec, child), daemon=True)
        tx.start()
        recording = kind in ("wav", "opus")
        if recording and not args.auto:
            for i in range(n):
                api(base, f"/api/v1/streams/r{i:03d}/outputs", "POST",
                    {"type": "recording", "format": kind})
        time.sleep(args.warmup)
        gw = psutil.Process(proc.pid)
        load = [psutil.Process(tx.pid), psutil.Process()]
        prober = Prober(http_port)
        spy = None
        if args.profile:
            out = Path(args.profile) / f"{kind}-{n}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen([pyspy, "record", "--pid", str(proc.pid), "--format", "raw",
                                    "-r", "50", "-d", str(int(args.window)), "-o", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c0 = listeners.counts() if listeners else []
        s0 = sample(base, gw, load)
        prober.start()
        time.sleep(args.window)
        prober.stop.set()
        s1 = sample(base, gw, load)
        c1 = listeners.counts() if listeners else []
        prober.join()
        if spy is not None:
            spy.wait(60)
        wall = s1.wall - s0.wall
        cpu = (s1.cpu - s0.cpu) / wall
        sender_cores = (s1.load - s0.load) / wall
        lat = np.asarray(prober.latencies or [0.0])
        row = Row(
            config=kind, n=n, cpu=cpu, loop=(s1.loop - s0.loop) / wall,
            rq_wait=(s1.rq_wait - s0.rq_wait) / wall,
            other=max(0.0, (s1.busy - s0.busy) / wall - cpu - sender_cores),
            sender=sender_cores,
            missed=max(0, round(wall / FRAME_S - (s1.stats["clock_ticks"]
                                                  - s0.stats["clock_ticks"]))),
            late=s1.stats["clock_late_ticks"] - s0.stats["clock_late_ticks"],
            hz_p99_ms=float(np.percentile(lat, 99)) * 1000, hz_max_ms=float(lat.max()) * 1000,
            gaps=gaps(s1.streams) - gaps(s0.streams),
            write_mbs=(s1.writes - s0.writes) / wall / 1e6,
        )
        if listeners:  # packets in the window per listener against the 20 ms ticks due
            due = wall / FRAME_S
            shares = [(b - a + 1) / due for a, b in zip(c0, c1, strict=True)]  # +-1: sampling
            row.delivery_worst, row.delivery_mean = min(shares), sum(shares) / len(shares)
            row.notes.append(f"delivery worst {min(row.delivery_worst, 1) * 100:.2f} % "
                             f"mean {min(row.delivery_mean, 1) * 100:.2f} %")
        if recording:
            check_recordings(base, row, n, work / "rec")
        if row.rq_wait > STARVED and not row.ok:
            row.notes.append("starved")
        if row.other > OTHER_LIMIT:
            row.notes.append(f"other {row.other:.2f} cores")
        elif other_before > 0.1:
            row.notes.append(f"other {other_before:.2f} cores before")
        if args.profile:
            row.notes.append("profiled")
        if s1.stats["streams"] != n:
            row.notes.append(f"{s1.stats['streams']} streams")
    finally:
        if listeners is not None:
            listeners.stop.set()
        if parent is not None:
            parent.send("stop")
        if tx is not None:
            tx.join(5)
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        text = (work / "gateway.log").read_text(errors="replace")
        problems = [ln for ln in text.splitlines()
                    if " ERROR " in ln or '"level": "error"' in ln or "ticks late" in ln]
        if problems:
            print(f"  gateway log ({len(problems)} lines): {problems[0][:160]}", flush=True)
        if args.keep:
            print(f"  kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return row


def check_recordings(base: str, row: Row, n: int, directory: Path) -> None:
    """Stop every recording and compare its file's duration with the time it ran; in WAV
    files, count 20 ms frames of digital silence after the first second (there should be
    none: the inputs never pause)."""
    active = api(base, "/api/v1/recordings")["active"]
    row.rec = len(active)
    row.skipped = sum(r["skipped_frames"] for r in active)
    if row.rec != n:
        row.notes.append(f"{row.rec} recordings for {n} streams")

    def stop(rec: dict) -> tuple[dict, float]:
        sent = time.time()
        api(base, f"/api/v1/streams/{rec['stream']}/outputs/{rec['id']}", "DELETE")
        return rec, sent

    with ThreadPoolExecutor(4) as pool:
        stopped = list(pool.map(stop, active))
    files: dict[str, list[dict]] = {}
    for item in api(base, "/api/v1/recordings")["recordings"]:
        files.setdefault(item["stream"], []).append(item)
    worst = 0.0
    for rec, sent in stopped:
        ran = sent - rec["since"]
        got = [f for f in files.get(rec["stream"], []) if f["file"] + ".part" == rec["file"]]
        duration = sum(f["duration_s"] for f in got)
        short = ran - duration
        worst = max(worst, short)
        if got and short <= SHORT_S and rec["skipped_frames"] == 0:
            row.complete += 1
        for f in got:
            if f["format"] == "wav":
                pcm = np.fromfile(directory / rec["stream"] / f["file"], "<i2", offset=44)
                frames = pcm[: pcm.size // 960 * 960].reshape(-1, 960)[50:]
                row.zero_frames += int(np.count_nonzero(~frames.any(axis=1)))
    row.worst_short_s = worst
    if row.zero_frames:
        row.notes.append(f"{row.zero_frames} silent frames in the WAV files")


# -- report -------------------------------------------------------------------------------
HEADER = (f"{'config':<7}{'N':>5}{'CPU %':>8}{'loop %':>8}{'%/stream':>10}{'+/stream':>10}"
          f"{'rq wait':>8}{'missed':>7}{'late':>6}{'hz p99':>8}{'gaps':>6}{'complete':>10}"
          f"{'skip':>6}{'worst':>8}{'MB/s':>7}{'sender':>8}{'other':>7}  notes")


def line(row: Row, base_cpu: float | None) -> str:
    extra = "" if base_cpu is None or row.config == "base" else (
        f"{(row.cpu - base_cpu) * 100 / row.n:.3f}")
    rec = f"{row.complete}/{row.rec}" if row.rec or row.config in ("wav", "opus") else "-"
    worst = f"{row.worst_short_s * 1000:.0f}ms" if row.rec else "-"
    return (f"{row.config:<7}{row.n:>5}{row.cpu * 100:>8.1f}{row.loop * 100:>8.1f}"
            f"{row.cpu * 100 / row.n:>10.3f}{extra:>10}{row.rq_wait * 100:>7.1f}%"
            f"{row.missed:>7}{row.late:>6}{row.hz_p99_ms:>6.1f}ms{row.gaps:>6}{rec:>10}"
            f"{row.skipped:>6}{worst:>8}{row.write_mbs:>7.1f}{row.sender:>8.2f}"
            f"{row.other:>7.2f}  {'; '.join(row.notes)}")


def machine(args: argparse.Namespace) -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                  .splitlines() if ln.startswith("model name")), platform.processor())
    fs = next((p.fstype for p in sorted(psutil.disk_partitions(all=True),
                                        key=lambda p: -len(p.mountpoint))
               if str(Path(args.dir).resolve()).startswith(p.mountpoint)), "?")
    return (f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}; "
            f"recordings in {args.dir} ({fs}); {args.codec} inputs; window {args.window:g} s, "
            f"warm-up {args.warmup:g} s; recordings started "
            + ("by recording.auto as the inputs make the streams" if args.auto
               else "through the API"))


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="150,200,250", help="stream counts N")
    parser.add_argument("--configs", default="base,meter,wav",
                        help=f"comma-separated, from {','.join(CONFIGS)}")
    parser.add_argument("--window", type=float, default=20.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir()
                        else tempfile.gettempdir(),
                        help="where recordings go (a temporary directory inside it)")
    parser.add_argument("--codec", default="L16", choices=("L16", "PCMU"),
                        help="input codec: L16 48 kHz (no resampling) or PCMU (8 kHz)")
    parser.add_argument("--auto", action="store_true",
                        help="record with recording.auto (streams made by their inputs)")
    parser.add_argument("--extend", type=int, default=0, metavar="K",
                        help="after the steps, add K streams (recording only) until N fails")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="wait up to this long for other processes to go quiet")
    parser.add_argument("--retries", type=int, default=1,
                        help="measure a failed window again if other processes were busy")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record each window (raw)")
    parser.add_argument("--gateway-src", help="run the gateway from another source tree")
    parser.add_argument("--keep", action="store_true", help="keep config, log and recordings")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--quick", action="store_true", help="N = 20, 5 s windows")
    parser.add_argument("--listeners", action="store_true",
                        help="one RTP listener (PCMU output) per stream; delivery counted")
    args = parser.parse_args()
    # a terminated benchmark still stops its gateway and sender and removes its files
    signal.signal(signal.SIGTERM, interrupted)
    if args.quick:
        args.steps, args.window, args.warmup = "20", 5.0, 2.0
    steps = [int(s) for s in args.steps.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration {min(unknown)!r}")
    print(f"# Recording and metering load; {machine(args)}", flush=True)
    print(HEADER, flush=True)
    rows: list[Row] = []
    record_kind = next((c for c in configs if c in ("wav", "opus")), None)

    def measure(n: int, kinds: list[str]) -> list[Row]:
        base_cpu = None
        out = []
        for kind in kinds:
            row = run_config(n, kind, args)
            for _ in range(args.retries):
                if row.ok or (row.rq_wait <= STARVED and row.other <= OTHER_LIMIT):
                    break
                print(line(row, base_cpu) + " (measured again)", flush=True)
                row = run_config(n, kind, args)
            if kind == "base":
                base_cpu = row.cpu
            print(line(row, base_cpu), flush=True)
            out.append(row)
        return out

    for n in steps:
        rows += measure(n, configs)
    if args.extend and record_kind:
        n = steps[-1]
        while all(r.ok for r in rows if r.n == n and r.config == record_kind):
            n += args.extend
            rows += measure(n, [c for c in ("base", record_kind) if c in configs])
    for kind in [c for c in configs if c in ("wav", "opus")]:
        mine = [r for r in rows if r.config == kind]
        good = [r for r in mine if r.ok]
        busy = {r.n for r in mine if "starved" in r.notes} - {r.n for r in good}
        bad = sorted({r.n for r in mine if not r.ok} - busy - {r.n for r in good})
        summary = f"N_max ({kind}) = {max((r.n for r in good), default=0)}"
        if good:
            at = max(good, key=lambda r: r.n)
            summary += f" at {at.cpu * 100:.0f} % of a core (loop thread {at.loop * 100:.0f} %)"
        if bad:
            summary += f"; failed at N = {', '.join(map(str, bad))}"
        if busy:
            summary += "; not decided (starved by other processes) at N = " + ", ".join(
                map(str, sorted(busy)))
        print(summary, flush=True)
    print("cost per stream in % of a core (differences between same-N windows):", flush=True)
    for n in sorted({r.n for r in rows}):
        by = {r.config: r for r in rows if r.n == n}
        parts = []
        if "base" in by:
            parts.append(f"base (ingress) {by['base'].cpu * 100 / n:.3f}")
        if "base" in by and "meter" in by:
            parts.append(f"analysers {(by['meter'].cpu - by['base'].cpu) * 100 / n:.3f}")
        for kind, label in (("wav", "WAV"), ("opus", "Ogg/Opus")):
            if kind in by and "meter" in by:
                extra = (by[kind].cpu - by["meter"].cpu) * 100 / n
                parts.append(f"{label} recording {extra:.3f}")
        print(f"  N = {n}: " + ", ".join(parts), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
