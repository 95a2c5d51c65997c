"""SIP load benchmark: call setup rate, and concurrent dial-in listeners with RTP flowing.

    python bench/sip_load.py                      # both parts, about 5 minutes
    python bench/sip_load.py --quick              # smoke check, about 1 minute
    python bench/sip_load.py --skip setup --listeners 1500,2000
    python bench/sip_load.py --gateway-rev HEAD --json out.json   # a commit, not the tree

Needs sipp (3.6.1 tested) on PATH. The gateway runs as its own process (`python -m gateway
serve --config FILE`, a fresh one for every step) with SIP on a free UDP port, one declared
stream "room" fed by a paced 440 Hz PCMU RTP source (bench/rtp_source.py) through an RTP
input, the per-source SIP rate limit raised (every sipp call comes from 127.0.0.1), max_calls
raised, and rtp_timeout_s raised (sipp's phones send no RTP unless --phone-rtp).

Part 1, setup rate: sipp (bench/sipp/uac_call.xml) places calls INVITE -> 200 -> ACK ->
hold 1 s -> BYE -> 200 at a fixed rate (-r) for --setup-seconds (35: a finished call keeps
two server transactions for 32 s, so the gateway's transaction table is in steady state only
after 33 s). Reported: sipp's successful and failed calls and retransmissions, INVITE->200
and BYE->200 response times (-trace_rtt, sipp's clock has 1 ms resolution), the rate sipp
achieved, gateway CPU over the run, whether every call's RTP arrived (distinct SSRCs at the
receiver, sequence holes) and how regular it was (p99/max |inter-arrival - 20 ms|). Baseline
in the same run: sipp OPTIONS (bench/sipp/uac_options.xml) at 2x the call rate, i.e. as many
server transactions per second as the calls create (INVITE + BYE; the ACK of a 2xx has
none), no dialogs, no media: what the SIP stack alone costs.

Part 2, concurrent listeners: sipp places N calls at --ramp cps that all stay up; every
call's SDP offers the same UDP port, owned by a receiver process (4 MB SO_RCVBUF) that tells
calls apart by SSRC. Once the gateway lists N calls, after --settle s, over --window s:
gateway CPU; delivered = distinct packets / packets expected from each SSRC's first to last
sequence number (holes are losses); rate = packets / (N x window x 50), below 100 % if any
call is missing or the gateway falls behind real time; p99 and max of |inter-arrival - 20 ms|
from kernel receive timestamps (SO_TIMESTAMPNS), consecutive sequence numbers of one SSRC.
Baseline in the same run: the same N listeners as plain RTP outputs created through the HTTP
API (POST /api/v1/streams/room/outputs) towards the same receiver port: the gateway's own
fan-out without SIP. Same shared encoder, same one sendto per listener per packet (a call
sends from its own socket, an output from a shared one); the difference is what SIP calls
cost once they are up. --phone-rtp: the phones also send 20 ms PCMU to their calls (from
the receiver, in 10 groups 2 ms apart), as real phones do.

CPU columns are cores (1.0 = one core busy), utime + stime from /proc; "other" is the rest of
the machine (from /proc/stat, minus the gateway, sipp, the receiver, the tone source and this
process): other people's work on a shared machine shows up there, and "calib" (ms for a fixed
Python loop just before the step) shows how fast the machine was. Logs of every step (sipp
stats and screens, response times, errors; gateway stderr) are kept under --out. Results:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rtp_fanout import api  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).resolve().parent / "sipp"
TICK = os.sysconf("SC_CLK_TCK")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
STREAM = "room"
PTIME = 0.020
PHONE_SLICES = 10  # --phone-rtp: the phones send in 10 groups, 2 ms apart


# -- CPU accounting ----------------------------------------------------------------------
def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


class CpuWindow:
    """CPU of named processes and of the rest of the machine between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def start(self) -> CpuWindow:
        self.t0 = time.monotonic()
        self.c0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.s0 = cpu_times(self.pids["gateway"])[1]
        self.m0 = machine_busy()
        return self

    def stop(self) -> dict[str, float]:
        """Cores used by each named process, and by everything else ("other"); the
        gateway's kernel share as "gateway_sys"."""
        wall = time.monotonic() - self.t0
        used = {name: (cpu_seconds(pid) - self.c0[name]) / wall for name, pid in self.pids.items()}
        used["other"] = max(0.0, (machine_busy() - self.m0) / wall - sum(used.values()))
        used["gateway_sys"] = (cpu_times(self.pids["gateway"])[1] - self.s0) / wall
        used["wall"] = wall
        return used


def wait_quiet(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit_s``) for a second in which the machine is nearly idle; the cores
    it was using in the last second waited."""
    deadline = time.monotonic() + limit_s
    while True:
        m0 = machine_busy()
        time.sleep(1.0)
        busy = machine_busy() - m0
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def calibrate() -> float:
    """Milliseconds for a fixed pure-Python loop (best of 5): the speed of this machine right
    now. Shared or virtual machines vary; compare runs only at similar values."""
    best = float("inf")
    for _ in range(5):
        t0, x = time.perf_counter(), 0
        for i in range(200_000):
            x += i * i
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the receiver: one UDP port for every listener -----------------------------------------
def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bind_pair() -> tuple[socket.socket, socket.socket]:
    """An even UDP port for RTP and the odd one above it for the RTCP sent there."""
    for _ in range(200):
        port = free_port() & ~1
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtp.bind(("127.0.0.1", port))
            rtcp.bind(("127.0.0.1", port + 1))
            return rtp, rtcp
        except OSError:
            rtp.close()
            rtcp.close()
    raise OSError("no free even/odd UDP port pair")


def big_buffer(sock: socket.socket, size: int = 4 << 20) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # root: past rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for our socket on ``port`` (its buffer was full)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[-1])
    return 0


def receiver(conn) -> None:  # type: ignore[no-untyped-def]
    """Own the listeners' port; record RTP headers and kernel arrival times on demand.

    Commands (over ``conn``): ("record",) starts recording; ("stop", n, window) stops and
    answers with analyse(); ("phones", [ports]) makes every call's phone send 20 ms PCMU
    packets to its gateway port, from this socket (symmetric RTP); ("quit",).
    """
    rtp, rtcp = bind_pair()
    rcvbuf = big_buffer(rtp)
    rtp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    rtp.setblocking(False)
    rtcp.setblocking(False)
    port = rtp.getsockname()[1]
    conn.send({"port": port, "rcvbuf": rcvbuf})
    sel = selectors.DefaultSelector()
    sel.register(rtp, selectors.EVENT_READ, "rtp")
    sel.register(rtcp, selectors.EVENT_READ, "rtcp")
    sel.register(conn, selectors.EVENT_READ, "cmd")
    heads = bytearray()
    stamps = bytearray()
    recording = False
    rtcp_packets = 0
    phones: list[tuple[str, int]] = []
    phone_payload = b"\xff" * 160  # PCMU digital silence
    phone_seq = phone_slice = 0
    next_send = time.monotonic()
    drops0 = udp_drops(port)
    no_stamp = b"\0" * 16
    recvmsg = rtp.recvmsg
    space = socket.CMSG_SPACE(16)
    while True:
        timeout = max(0.0, next_send - time.monotonic()) if phones else 0.5
        for key, _ in sel.select(timeout):
            if key.data == "rtp":
                for _ in range(5000):
                    try:
                        data, anc, _, _ = recvmsg(64, space)
                    except BlockingIOError:
                        break
                    if recording and len(data) >= 12 and not 192 <= data[1] <= 223:
                        heads += data[:12]
                        stamps += anc[0][2] if anc else no_stamp
            elif key.data == "rtcp":
                while True:
                    try:
                        rtcp.recv(2048)
                        rtcp_packets += 1
                    except BlockingIOError:
                        break
            else:
                cmd = conn.recv()
                if cmd[0] == "record":
                    heads.clear()
                    stamps.clear()
                    recording = True
                    drops0 = udp_drops(port)
                elif cmd[0] == "stop":
                    recording = False
                    drops = udp_drops(port) - drops0  # before the socket goes unread a while
                    result = analyse(bytes(heads), bytes(stamps), cmd[1], cmd[2])
                    result["rx_drops"] = drops
                    result["rtcp_packets"] = rtcp_packets
                    conn.send(result)
                elif cmd[0] == "phones":
                    phones = [("127.0.0.1", p) for p in cmd[1]]
                    next_send = time.monotonic()
                elif cmd[0] == "quit":
                    rtp.close()
                    rtcp.close()
                    return
        if phones and time.monotonic() >= next_send:
            # phones are not in step: one slice of them every PTIME / PHONE_SLICES
            ts = (phone_seq * 160) & 0xFFFFFFFF
            for i in range(phone_slice, len(phones), PHONE_SLICES):
                head = struct.pack("!BBHII", 0x80, 0, phone_seq & 0xFFFF, ts, 0x10000 + i)
                try:
                    rtp.sendto(head + phone_payload, phones[i])
                except OSError:
                    pass
            phone_slice = (phone_slice + 1) % PHONE_SLICES
            phone_seq += phone_slice == 0
            next_send += PTIME / PHONE_SLICES
            if next_send < time.monotonic() - 0.1:  # fell behind: do not burst
                next_send = time.monotonic() + PTIME / PHONE_SLICES


def analyse(heads: bytes, stamps: bytes, n_expected: int, window: float) -> dict:
    """Per SSRC: holes in the sequence numbers, and the spread of the arrival intervals."""
    if not heads:
        return {"packets": 0, "ssrcs": 0, "delivered": 0.0, "rate": 0.0, "holes": 0,
                "p99_ms": float("nan"), "max_ms": float("nan")}
    h = np.frombuffer(heads, dtype=np.uint8).reshape(-1, 12)
    ts = np.frombuffer(stamps, dtype=np.int64).reshape(-1, 2)
    t = ts[:, 0] + ts[:, 1] * 1e-9
    seq = (h[:, 2].astype(np.int64) << 8) | h[:, 3]
    ssrc = np.frombuffer(np.ascontiguousarray(h[:, 8:12]).tobytes(), dtype=">u4").astype(np.int64)
    order = np.lexsort((np.arange(len(seq)), ssrc))  # by SSRC, then arrival
    s, q, t = ssrc[order], seq[order], t[order]
    first = np.r_[True, s[1:] != s[:-1]]
    step = np.diff(q)
    step = ((step + 32768) % 65536) - 32768  # wrap-safe
    step[first[1:]] = 0
    unwrapped = np.cumsum(np.r_[0, step])
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    unwrapped = unwrapped - unwrapped[starts][group]  # 0 at each SSRC's first packet
    expected = int((np.maximum.reduceat(unwrapped, starts)
                    - np.minimum.reduceat(unwrapped, starts) + 1).sum())
    received = len(np.unique(s * (1 << 24) + unwrapped + (1 << 23)))
    consecutive = (step == 1) & ~first[1:]
    dev = np.abs(np.diff(t)[consecutive] - PTIME) * 1000
    return {
        "packets": int(len(q)),
        "ssrcs": int(len(starts)),
        "received": received,
        "expected": expected,
        "holes": expected - received,
        "delivered": received / max(1, expected),
        "rate": received / (n_expected * window / PTIME) if n_expected else float("nan"),
        "p99_ms": float(np.percentile(dev, 99)) if len(dev) else float("nan"),
        "max_ms": float(dev.max()) if len(dev) else float("nan"),
    }


class Receiver:
    def __init__(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=receiver, args=(child,), daemon=True)
        self.proc.start()
        hello = self.conn.recv()
        self.port: int = hello["port"]
        self.rcvbuf: int = hello["rcvbuf"]

    def record(self) -> None:
        self.conn.send(("record",))

    def stop(self, n: int, window: float) -> dict:
        self.conn.send(("stop", n, window))
        return self.conn.recv()

    def phones(self, ports: list[int]) -> None:
        self.conn.send(("phones", ports))

    def close(self) -> None:
        self.conn.send(("quit",))
        self.proc.join(5)


# -- the gateway -------------------------------------------------------------------------
class Gateway:
    """A gateway process with SIP on a free port and stream "room" playing a tone."""

    def __init__(self, out: Path, name: str, args: argparse.Namespace,
                 env: dict[str, str] | None = None) -> None:
        """``env``: GATEWAY_* settings on top of the config file (they win over it)."""
        self.http_port = free_port(socket.SOCK_STREAM)
        self.sip_port = free_port()
        config = out / f"{name}-gateway.toml"
        rtp_min, rtp_max = (int(p) for p in args.rtp_ports.split("-"))
        config.write_text(
            f'log_level = "{args.log_level}"\n'
            f"[http]\nport = {self.http_port}\n"
            f"[sip]\nport = {self.sip_port}\n"
            'transports = ["udp"]\n'
            f"rtp_port_min = {rtp_min}\nrtp_port_max = {rtp_max}\n"
            "max_calls = 100000\n"
            # every sipp call comes from 127.0.0.1: the default 50/s per source would drop
            "rate_limit_per_s = 1000000.0\nrate_limit_burst = 1000000\n"
            # sipp's phones send no RTP: do not hang up on them after 30 s
            "rtp_timeout_s = 86400.0\n"
            f'[streams]\ndeclared = ["{STREAM}"]\n'
        )
        self.log = open(out / f"{name}-gateway.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=args.gateway_src, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.base = f"http://127.0.0.1:{self.http_port}"
        for _ in range(150):
            try:
                api(self.base + "/healthz")
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited, see {self.log.name}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError(f"gateway did not start, see {self.log.name}")
        self.source: subprocess.Popen | None = None
        if args.tone:
            in_port = free_port()
            api(f"{self.base}/api/v1/streams/{STREAM}/inputs", "POST",
                {"type": "rtp", "port": in_port, "codec": "PCMU"})
            self.source = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "rtp_source.py"), str(in_port)]
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict:
        return api(self.base + "/api/v1/stats")

    def outputs(self) -> list[dict]:
        return api(f"{self.base}/api/v1/streams/{STREAM}/outputs")["outputs"]

    def sip_info(self) -> dict:
        """GET /api/v1/sip without its list of calls; {} where the gateway has no such route."""
        try:
            info = api(self.base + "/api/v1/sip")
        except OSError:
            return {}
        info.pop("active_calls", None)
        return info

    def encoders(self) -> int:
        return len(api(f"{self.base}/api/v1/streams/{STREAM}")["encoders"])

    def close(self) -> None:
        if self.source is not None:
            self.source.terminate()
            self.source.wait(5)
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- sipp --------------------------------------------------------------------------------
class Sipp:
    """One sipp UAC run, its statistics read from -trace_stat, -trace_rtt, -trace_screen."""

    def __init__(self, out: Path, name: str, scenario: str, gw: Gateway, rate: float,
                 calls: int, keys: dict[str, object], limit: int | None = None,
                 timeout: float = 300, extra: list[str] | None = None) -> None:
        self.dir = out / name
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = ["sipp", "-nostdin", "-sf", str(SCENARIOS / scenario), "-s", STREAM,
               "-i", "127.0.0.1", "-p", str(free_port()), "-r", f"{rate:g}", "-m", str(calls)]
        if limit is not None:
            cmd += ["-l", str(limit)]
        for key, value in keys.items():
            cmd += ["-key", key, str(value)]
        cmd += ["-timeout", f"{timeout:g}s", "-timeout_error",
                "-trace_stat", "-stf", "stat.csv", "-fd", "1",
                "-trace_rtt", "-rtt_freq", "1",
                "-trace_screen", "-screen_file", "screen.log",
                "-trace_err", "-error_file", "errors.log", *(extra or []),
                f"127.0.0.1:{gw.sip_port}"]
        self.command = cmd
        (self.dir / "command.txt").write_text(" ".join(cmd) + "\n")
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.timeout = timeout

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self) -> dict:
        try:
            _, err = self.proc.communicate(timeout=self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        result: dict = {"exit": self.proc.returncode, "stderr": err.decode(errors="replace")}
        result.update(self._stats())
        result.update(self._rtts())
        result["messages"] = self._screen()
        return result

    def _stats(self) -> dict:
        path = self.dir / "stat.csv"
        if not path.exists():
            return {}
        lines = path.read_text(errors="replace").splitlines()
        header, last = lines[0].split(";"), lines[-1].split(";")
        row = dict(zip(header, last, strict=False))

        def num(name: str) -> float:
            try:
                return float(row.get(name, "nan"))
            except ValueError:
                return float("nan")

        failed = {k.removesuffix("(C)"): int(num(k)) for k in header
                  if k.startswith("Failed") and k.endswith("(C)") and num(k) > 0}
        return {
            "created": int(num("TotalCallCreated")),
            "ok": int(num("SuccessfulCall(C)")),
            "failed": int(num("FailedCall(C)")),
            "failed_by": failed,
            "retrans": int(num("Retransmissions(C)")),
            "dead_msgs": int(num("DeadCallMsgs(C)")),
            "out_of_call_msgs": int(num("OutOfCallMsgs(C)")),
        }

    def _rtts(self) -> dict:
        out: dict = {}
        files = list(self.dir.glob("*_rtt.csv"))
        if not files:
            return out
        rows = np.loadtxt(files[0], delimiter=";", skiprows=1, ndmin=2)
        setups = rows[rows[:, 2] == 1, 0] if len(rows) else np.zeros(0)
        if len(setups) > 1:  # calls answered per second, from the first to the last 200
            span = max(1e-3, (setups.max() - setups.min()) / 1000)
            out["achieved_cps"] = (len(setups) - 1) / span
        for rtd, name in ((1, "setup"), (2, "bye")):
            sel = rows[rows[:, 2] == rtd, 1] if len(rows) else np.zeros(0)
            if len(sel):
                out[f"{name}_ms"] = {"p50": float(np.percentile(sel, 50)),
                                     "p99": float(np.percentile(sel, 99)),
                                     "max": float(sel.max()), "n": int(len(sel))}
        return out

    def _screen(self) -> list[dict]:
        """The final scenario screen: per message, count, retransmissions, timeouts, unexpected."""
        path = self.dir / "screen.log"
        if not path.exists():
            return []
        text = path.read_text(errors="replace")
        block = text.rsplit("Scenario Screen", 1)[-1].split("Statistics Screen", 1)[0]
        rows = []
        pattern = (r"^\s*(\S+)\s+(-+>|<-+)\s+(?:[BE]-RTD\d\s+)?(\d+)\s+(\d+)"
                   r"(?:\s+(\d+))?(?:\s+(\d+))?")
        for m in re.finditer(pattern, block, re.M):
            rows.append({"message": m[1], "dir": "out" if m[2].endswith(">") else "in",
                         "count": int(m[3]), "retrans": int(m[4]),
                         "timeout": int(m[5] or 0), "unexpected": int(m[6] or 0)})
        return rows


# -- part 1: setup rate ------------------------------------------------------------------
def run_setup(out: Path, rate: float, seconds: float, hold_ms: int,
              args: argparse.Namespace) -> dict:
    calls = max(1, round(rate * seconds))
    rx = Receiver()
    gw = Gateway(out, f"setup-{rate:g}", args)
    try:
        late0 = gw.stats()["clock_late_ticks"]
        rx.record()
        sipp = Sipp(out, f"setup-{rate:g}", "uac_call.xml", gw, rate, calls,
                    {"rtp_port": rx.port, "hold_ms": hold_ms},
                    timeout=seconds + hold_ms / 1000 + 60)
        cpu = CpuWindow(pids(gw, rx, sipp)).start()
        result = sipp.wait()
        used = cpu.stop()
        time.sleep(0.2)
        media = rx.stop(0, 0)
        stats = gw.stats()
        row = {"kind": "calls", "rate": rate, "calls": calls, **result, "cpu": used,
               "gw_ms_per_call": used["gateway"] * used["wall"] * 1000 / calls,
               "late_ticks": stats["clock_late_ticks"] - late0,
               "calls_left": stats["sip_calls"], "media": media,
               "rss_mb": rss_mb(gw.pid), "sip": gw.sip_info()}
    finally:
        gw.close()
        rx.close()
    return row


def run_options(out: Path, rate: float, seconds: float, args: argparse.Namespace) -> dict:
    requests = max(1, round(rate * seconds))
    gw = Gateway(out, f"options-{rate:g}", args)
    try:
        late0 = gw.stats()["clock_late_ticks"]
        sipp = Sipp(out, f"options-{rate:g}", "uac_options.xml", gw, rate, requests, {},
                    timeout=seconds + 60)
        cpu = CpuWindow({"gateway": gw.pid, "sipp": sipp.pid, "bench": os.getpid(),
                         **({"source": gw.source.pid} if gw.source else {})}).start()
        result = sipp.wait()
        used = cpu.stop()
        # per call: the two OPTIONS that stand for one call's INVITE and BYE
        row = {"kind": "OPTIONS", "rate": rate, "calls": requests, **result, "cpu": used,
               "gw_ms_per_call": used["gateway"] * used["wall"] * 1000 / (requests / 2),
               "late_ticks": gw.stats()["clock_late_ticks"] - late0, "media": {},
               "rss_mb": rss_mb(gw.pid), "sip": gw.sip_info()}
    finally:
        gw.close()
    return row


def pids(gw: Gateway, rx: Receiver, sipp: Sipp | None = None) -> dict[str, int]:
    out = {"gateway": gw.pid, "receiver": rx.proc.pid or 0, "bench": os.getpid()}
    if sipp is not None:
        out["sipp"] = sipp.pid
    if gw.source is not None:
        out["source"] = gw.source.pid
    return out


# -- part 2: concurrent listeners ----------------------------------------------------------
def wait_for(predicate, timeout: float, every: float = 0.25) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def measure(gw: Gateway, rx: Receiver, n: int, args: argparse.Namespace,
            sipp: Sipp | None = None) -> dict:
    time.sleep(args.settle)
    late0 = gw.stats()["clock_late_ticks"]
    rx.record()
    cpu = CpuWindow(pids(gw, rx, sipp)).start()
    time.sleep(args.window)
    used = cpu.stop()
    media = rx.stop(n, used["wall"])
    outputs = gw.outputs()
    return {
        "n": n, "cpu": used, "media": media,
        "late_ticks": gw.stats()["clock_late_ticks"] - late0,
        "drops": sum(o["drops"] + o["errors"] for o in outputs),
        "encoders": gw.encoders(), "rss_mb": rss_mb(gw.pid),
    }


def run_sip_listeners(out: Path, n: int, args: argparse.Namespace) -> dict:
    ramp_s = n / args.ramp
    ramp_budget = 1.5 * ramp_s + 5  # past it, measure anyway (and say so)
    # every call stays up until the window is over: the first call is the first to hang up
    hold_ms = int((ramp_budget + args.settle + args.window + 5) * 1000)
    rx = Receiver()
    gw = Gateway(out, f"listen-sip-{n}", args)
    sipp = None
    try:
        started = time.monotonic()
        sipp = Sipp(out, f"listen-sip-{n}", "uac_call.xml", gw, args.ramp, n,
                    {"rtp_port": rx.port, "hold_ms": hold_ms}, limit=n,
                    timeout=2 * ramp_s + hold_ms / 1000 + 60)
        up = wait_for(lambda: gw.stats()["sip_calls"] >= n or sipp.proc.poll() is not None,
                      ramp_budget)
        calls_up = gw.stats()["sip_calls"]
        up_s = time.monotonic() - started
        if args.phone_rtp:
            rx.phones([o["media"]["local_port"] for o in gw.outputs() if o["type"] == "sip"])
        row = measure(gw, rx, n, args, sipp)
        row.update({"server": "SIP calls", "calls_up": calls_up, "up_s": up_s,
                    "all_up": up and calls_up >= n})
        if not row["all_up"]:
            row["note"] = f"only {calls_up} of {n} calls up after {up_s:.0f} s"
        if time.monotonic() - started > hold_ms / 1000:
            late = "window ran past the calls' hold time"
            row["note"] = f"{row['note']}; {late}" if row.get("note") else late
        row["sipp"] = sipp.wait()  # the calls hang up at --ramp cps
    finally:
        if sipp is not None and sipp.proc.poll() is None:
            sipp.proc.kill()
        gw.close()
        rx.close()
    return row


def run_rtp_listeners(out: Path, n: int, args: argparse.Namespace) -> dict:
    rx = Receiver()
    gw = Gateway(out, f"listen-rtp-{n}", args)
    try:
        started = time.monotonic()
        for _ in range(n):
            api(f"{gw.base}/api/v1/streams/{STREAM}/outputs", "POST",
                {"type": "rtp", "host": "127.0.0.1", "port": rx.port, "codec": "PCMU",
                 "ptime": 20})
        up_s = time.monotonic() - started
        row = measure(gw, rx, n, args)
        row.update({"server": "RTP outputs", "calls_up": n, "up_s": up_s, "all_up": True})
    finally:
        gw.close()
        rx.close()
    return row


# -- report ------------------------------------------------------------------------------
def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip()
         for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout
    version = re.search(r"SIPp v(\S+)", sipp)
    return (f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
            f"sipp {version[1] if version else '?'}")


def snapshot(rev: str, out: Path) -> tuple[str, str]:
    """Extract commit ``rev`` of this repository under ``out``: (directory, description)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                            capture_output=True, text=True, check=True).stdout.strip()
    target = out / f"gateway-{commit}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True)
    archive.wait()
    return str(target), f"commit {commit}"


def describe_checkout() -> str:
    run = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty=+modified"],
                         capture_output=True, text=True)
    return f"working tree, commit {run.stdout.strip()}" if run.returncode == 0 else "?"


def ms(d: dict | None, key: str) -> str:
    return f"{d[key]:.0f}" if d else "-"


def print_setup_header() -> None:
    print(f"{'kind':<8}{'rate':>6}{'sent':>7}{'ok':>7}{'failed':>7}{'retr':>6}{'cps':>8}"
          f"{'setup p50/p99/max ms':>22}{'bye p99':>8}{'gw cores':>9}{'(sys)':>7}{'ms/call':>8}"
          f"{'sipp':>6}{'other':>6}{'rtp ssrcs':>10}{'holes':>6}{'p99/max dev':>12}{'late':>5}"
          f"{'calib':>6}")


def print_setup_row(r: dict) -> None:
    setup = r.get("setup_ms")
    media = r["media"]
    spread = f"{ms(setup, 'p50')}/{ms(setup, 'p99')}/{ms(setup, 'max')}"
    dev = f"{media['p99_ms']:.1f}/{media['max_ms']:.0f}" if media.get("packets") else "-"
    print(f"{r['kind']:<8}{r['rate']:>6g}{r.get('created', 0):>7}{r.get('ok', 0):>7}"
          f"{r.get('failed', -1):>7}{r.get('retrans', -1):>6}{r.get('achieved_cps', 0):>8.1f}"
          f"{spread:>22}{ms(r.get('bye_ms'), 'p99'):>8}"
          f"{r['cpu']['gateway']:>9.3f}{r['cpu']['gateway_sys']:>7.3f}"
          f"{r['gw_ms_per_call']:>8.2f}{r['cpu']['sipp']:>6.2f}"
          f"{r['cpu']['other']:>6.2f}{media.get('ssrcs', '-'):>10}{media.get('holes', '-'):>6}"
          f"{dev:>12}{r['late_ticks']:>5}{r['calib_ms']:>6.1f}", flush=True)
    if r.get("sip", {}).get("rate_limited"):
        print(f"         the gateway's rate limiter dropped {r['sip']['rate_limited']} messages")
    if r.get("failed_by"):
        left = f"; {r['calls_left']} calls still up in the gateway" if r.get("calls_left") else ""
        print(f"         failures: {r['failed_by']}; sipp exit {r['exit']}{left}; logs in "
              f"{r.get('dir', '')}", flush=True)


def print_listen_header() -> None:
    print(f"{'server':<12}{'N':>6}{'up':>6}{'gw cores':>9}{'(sys)':>7}{'%core/lst':>10}"
          f"{'delivered':>11}"
          f"{'rate':>9}{'ssrcs':>6}{'p99 dev':>8}{'max dev':>8}{'drops':>6}{'rxdrop':>7}"
          f"{'enc':>4}{'late':>5}{'RSS MB':>7}{'rx':>6}{'other':>6}{'calib':>6}")


def print_listen_row(r: dict) -> None:
    m = r["media"]
    gw = r["cpu"]["gateway"]
    print(f"{r['server']:<12}{r['n']:>6}{r['calls_up']:>6}{gw:>9.3f}"
          f"{r['cpu']['gateway_sys']:>7.3f}{gw * 100 / r['n']:>10.3f}"
          f"{m['delivered'] * 100:>10.3f}%{m['rate'] * 100:>8.2f}%{m['ssrcs']:>6}"
          f"{m['p99_ms']:>8.2f}{m['max_ms']:>8.2f}{r['drops']:>6}{m['rx_drops']:>7}"
          f"{r['encoders']:>4}{r['late_ticks']:>5}{r['rss_mb']:>7.0f}"
          f"{r['cpu']['receiver']:>6.2f}{r['cpu']['other']:>6.2f}{r['calib_ms']:>6.1f}",
          flush=True)
    s = r.get("sipp")
    if s is not None and (s.get("failed") or s.get("exit")):
        print(f"            sipp: {s.get('ok')} ok, {s.get('failed')} failed "
              f"{s.get('failed_by', '')}, exit {s.get('exit')}", flush=True)
    if r.get("note"):
        print(f"            {r['note']}", flush=True)


def prepare(args: argparse.Namespace) -> dict:
    """Before a step: wait for a quiet machine, then time the calibration loop."""
    return {"busy_before": wait_quiet(args.quiet_wait), "calib_ms": calibrate()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100,150,200",
                        help="setup rates to try, calls per second (default 100,150,200)")
    parser.add_argument("--setup-seconds", type=float, default=35.0,
                        help="how long each rate runs (calls = rate x seconds); past 33 s the "
                             "gateway's table of lingering transactions is in steady state")
    parser.add_argument("--baseline-seconds", type=float, default=10.0,
                        help="how long each OPTIONS baseline runs (short: at 2x200/s its 32 s "
                             "transactions would fill the gateway's table of 10,000 after 25 s)")
    parser.add_argument("--hold-ms", type=int, default=1000, help="call length in part 1")
    parser.add_argument("--listeners", default="500,1000",
                        help="concurrent calls to hold in part 2 (default 500,1000)")
    parser.add_argument("--ramp", type=float, default=100.0,
                        help="call rate while building up part 2's calls (cps)")
    parser.add_argument("--window", type=float, default=10.0, help="measurement window, s")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="wait after the last call is up before measuring, s")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("setup", "listeners", "baseline"))
    parser.add_argument("--no-tone", dest="tone", action="store_false",
                        help="no publisher: the stream plays silence (still encoded and sent)")
    parser.add_argument("--phone-rtp", action="store_true",
                        help="part 2: every phone also sends 20 ms PCMU to the gateway, as "
                             "real phones do (from the receiver process)")
    parser.add_argument("--rtp-ports", default="20000-29999",
                        help="the gateway's sip.rtp_port_min-rtp_port_max")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each step wait up to this long for the rest of the "
                             "machine to be idle (< 0.15 cores)")
    parser.add_argument("--log-level", default="warning", help="the gateway's log level")
    parser.add_argument("--gateway-rev",
                        help="run the gateway of this commit (git archive into --out), not the "
                             "working tree: e.g. HEAD, when others edit the checkout meanwhile")
    parser.add_argument("--out", help="directory for logs (default: a new temporary one)")
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 100 cps for 5 s, 100 and 300 listeners, 3 s windows")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        sys.exit("sipp not found on PATH (apt-get install sip-tester)")
    if args.quick:
        args.rates, args.setup_seconds, args.baseline_seconds = "100", 5.0, 5.0
        args.listeners, args.window, args.settle = "100,300", 3.0, 1.0
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sip_load-"))
    out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",") if r]
    listeners = [int(n) for n in args.listeners.split(",") if n]
    results: dict = {"machine": machine(), "args": vars(args), "setup": [], "listeners": []}
    print(f"# SIP load; {results['machine']}; logs in {out}")
    args.gateway_src, source = str(ROOT), describe_checkout()
    if args.gateway_rev:
        args.gateway_src, source = snapshot(args.gateway_rev, out)
    results["gateway"] = source
    print(f"# gateway: {source}")
    print(f"# stream {STREAM!r}: {'440 Hz PCMU tone' if args.tone else 'no publisher (silence)'};"
          f" calls offer PCMU/PCMA; gateway log level {args.log_level}")

    if "setup" not in args.skip and rates:
        print(f"\n## Setup rate: INVITE-200-ACK, hold {args.hold_ms} ms, BYE-200; "
              f"{args.setup_seconds:g} s per rate. Baseline: OPTIONS at 2x the rate for "
              f"{args.baseline_seconds:g} s.")
        print_setup_header()
        for rate in rates:
            before = prepare(args)
            row = run_setup(out, rate, args.setup_seconds, args.hold_ms, args) | before
            row["dir"] = str(out / f"setup-{rate:g}")
            print_setup_row(row)
            results["setup"].append(row)
            if "baseline" not in args.skip:
                before = prepare(args)
                base = run_options(out, 2 * rate, args.baseline_seconds, args) | before
                base["dir"] = str(out / f"options-{2 * rate:g}")
                print_setup_row(base)
                results["setup"].append(base)

    if "listeners" not in args.skip and listeners:
        print(f"\n## Concurrent listeners: calls ramped at {args.ramp:g} cps and held; "
              f"{args.window:g} s window after {args.settle:g} s"
              + ("; phones send RTP" if args.phone_rtp else "; phones send no RTP"))
        print_listen_header()
        for n in listeners:
            before = prepare(args)
            row = run_sip_listeners(out, n, args) | before
            print_listen_row(row)
            results["listeners"].append(row)
            if "baseline" not in args.skip:
                before = prepare(args)
                base = run_rtp_listeners(out, n, args) | before
                print_listen_row(base)
                results["listeners"].append(base)

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print()
    clean = [r["rate"] for r in results["setup"]
             if r["kind"] == "calls" and r.get("failed") == 0 and r.get("ok") == r["calls"]]
    if results["setup"]:
        print(f"setup: highest rate with every call successful: "
              f"{max(clean):g} cps" if clean else "setup: no rate without failed calls")
    full = [r["n"] for r in results["listeners"] if r["server"] == "SIP calls"
            and r.get("all_up") and r["media"]["holes"] == 0 and r["media"]["rate"] >= 0.999
            and r["media"]["ssrcs"] == r["n"]]
    if results["listeners"]:
        print(f"listeners: most concurrent calls with 100 % delivery: {max(full)}" if full
              else "listeners: no step with 100 % delivery")
    print(f"logs: {out}")


if __name__ == "__main__":
    main()
