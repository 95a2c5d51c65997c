"""SIP overload benchmark (issue 14): new calls offered above capacity, three gateways.

    python bench/sip_overload.py                         # 100-400 calls/s, 3 configs, ~15 min
    python bench/sip_overload.py --rates 400 --seconds 10 --configs defaults
    python bench/sip_overload.py --json out.json --out /tmp/sipover

Needs sipp (3.6.1 tested) on PATH. For every offered rate and configuration, a fresh gateway
(`python -m gateway serve --config FILE`, as bench/sip_load.py starts it: SIP on a free UDP
port, stream "room" fed by a paced 440 Hz PCMU RTP source, the per-source rate limit and
max_calls raised, rtp_timeout_s raised) gets sipp calls (bench/sipp/uac_call_or_503.xml:
INVITE -> 200 -> ACK -> hold --hold-ms -> BYE -> 200, or INVITE -> 503 -> ACK; both count as
a success for sipp) at the offered rate for --seconds. Configurations, in the same run:

* defaults: sip.max_setup_rate (120/s) and admission control, as shipped;
* admission-only: sip.max_setup_rate = 0 (admission control still refuses at datagram read
  while it is refusing anyway, and in the call's answering task);
* baseline: both off (GATEWAY_SIP__MAX_SETUP_RATE=0, GATEWAY_ADMISSION__ENABLED=false):
  only the transaction table's cap refuses (now also at datagram read, and the socket is
  still read in batches);
* previous (with --previous REV): the gateway of commit REV (git archive, no worktree) with
  its own defaults: before this change, main had admission control, refused in the call's
  answering task (after 100 Trying and a transaction), and read one datagram per wake-up.

Reported per row: calls offered; *admitted* (calls whose INVITE got 200); *failed* (sipp's
failed calls: timeouts, unexpected messages; every call either ends with its BYE answered or
is refused with 503, else it fails); *refused* (INVITEs answered 503); *bye ok* (admitted
calls whose BYE got 200); sipp's *retransmissions* (INVITE and BYE); INVITE -> 503 and
INVITE -> 200 times p50 / p99 / max, per call from sipp's -trace_msg timestamps (first
INVITE sent to first final response received; sipp's own rtd cannot tell the two finals
apart); the admitted calls' RTP (one SSRC per call at the receiver, sequence holes);
gateway CPU (cores) and the media clock's late ticks; the gateway's own refusal counters
(GET /api/v1/sip invites_refused, admission refused sip); sipp's CPU and the rest of the
machine ("other") and a calibration loop ("calib", ms) so noisy rows can be told apart.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from sip_load import (  # bench/ is on sys.path when run as a script
    SCENARIOS,
    CpuWindow,
    Gateway,
    Receiver,
    Sipp,
    calibrate,
    describe_checkout,
    machine,
    pids,
    snapshot,
    wait_quiet,
)

SCENARIO = "uac_call_or_503.xml"
CONFIGS: dict[str, dict[str, str]] = {
    "defaults": {},
    "admission-only": {"GATEWAY_SIP__MAX_SETUP_RATE": "0"},
    "baseline": {"GATEWAY_SIP__MAX_SETUP_RATE": "0", "GATEWAY_ADMISSION__ENABLED": "false"},
}
_BLOCK = re.compile(
    rb"^-{20,} (?P<ts>[^\n]*)\n(?:UDP|TCP) message (?P<dir>sent|received)[^\n]*\n\n"
    rb"(?P<first>[^\r\n]*)\r?\n(?P<rest>.*?)(?=^-{20,} |\Z)", re.M | re.S)
_CALL_ID = re.compile(rb"^Call-ID:\s*(\S+)", re.M | re.I)
_CSEQ = re.compile(rb"^CSeq:\s*\d+\s+(\S+)", re.M | re.I)


def _stamp(text: bytes) -> float:
    return datetime.strptime(text.decode().strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def read_trace(path: Path) -> dict:
    """Per call from sipp's -trace_msg: the first INVITE sent, its first final response and
    when; BYEs answered 200."""
    calls: dict[bytes, dict] = {}
    if not path.exists():
        return {}
    data = path.read_bytes()
    for m in _BLOCK.finditer(data):
        rest = m["rest"]
        cid = _CALL_ID.search(rest)
        if cid is None:
            continue
        call = calls.setdefault(cid[1], {})
        first = m["first"]
        if m["dir"] == b"sent":
            if first.startswith(b"INVITE ") and "invite_at" not in call:
                call["invite_at"] = _stamp(m["ts"])
            continue
        if not first.startswith(b"SIP/2.0 "):
            continue
        status = int(first[8:11])
        method = _CSEQ.search(rest)
        if method is None or status < 200:
            continue
        if method[1] == b"INVITE" and "final" not in call:
            call["final"] = status
            call["final_at"] = _stamp(m["ts"])
        elif method[1] == b"BYE" and status == 200:
            call["bye_ok"] = True
    latencies: dict[int, list[float]] = {200: [], 503: []}
    finals: dict[int, int] = {}
    bye_ok = admitted_no_bye = 0
    for call in calls.values():
        status = call.get("final")
        if status is None:
            continue
        finals[status] = finals.get(status, 0) + 1
        if status in latencies and "invite_at" in call:
            latencies[status].append((call["final_at"] - call["invite_at"]) * 1000)
        if status == 200:
            if call.get("bye_ok"):
                bye_ok += 1
            else:
                admitted_no_bye += 1
    return {"calls_seen": len(calls), "finals": finals, "bye_ok": bye_ok,
            "admitted_without_bye_200": admitted_no_bye,
            "refused_ms": spread(latencies[503]), "setup_ms": spread(latencies[200])}


def spread(values: list[float]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "n": len(values)}


def run(out: Path, config: str, rate: float, args: argparse.Namespace) -> dict:
    name = f"{config}-{rate:g}"
    calls = max(1, round(rate * args.seconds))
    rx = Receiver()
    gw_args = argparse.Namespace(**vars(args))
    if config == "previous":
        gw_args.gateway_src = args.previous_src
    gw = Gateway(out, name, gw_args, env=CONFIGS.get(config, {}))
    try:
        late0 = gw.stats()["clock_late_ticks"]
        rx.record()
        timeout = args.seconds + args.hold_ms / 1000 + 80  # + Timer B (32 s) and then some
        sipp = Sipp(out, name, SCENARIO, gw, rate, calls,
                    {"rtp_port": rx.port, "hold_ms": args.hold_ms}, limit=100000,
                    timeout=timeout,
                    extra=["-trace_msg", "-message_file", "messages.log"])
        cpu = CpuWindow(pids(gw, rx, sipp)).start()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = sipp.wait()  # reaps sipp: its CPU is in RUSAGE_CHILDREN from now on
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = cpu.stop()
        # /proc is gone once sipp exited, so CpuWindow saw none of it: count it here
        used["sipp"] = (after.ru_utime + after.ru_stime - children.ru_utime
                        - children.ru_stime) / used["wall"]
        used["other"] = max(0.0, used["other"] - used["sipp"])
        time.sleep(0.3)
        media = rx.stop(0, 0)
        stats = gw.stats()
        trace = read_trace(sipp.dir / "messages.log")
        sip = gw.sip_info()
        row = {"config": config, "rate": rate, "calls": calls, **result, **trace,
               "cpu": used, "media": media, "late_ticks": stats["clock_late_ticks"] - late0,
               "calls_left": stats["sip_calls"],
               "admission": stats.get("admission", {}), "sip": sip, "dir": str(sipp.dir)}
    finally:
        gw.close()
        rx.close()
    if not args.keep_traces:
        (out / name / "messages.log").unlink(missing_ok=True)
    return row


def fmt(d: dict | None) -> str:
    return f"{d['p50']:.0f} / {d['p99']:.0f} / {d['max']:.0f}" if d else "-"


HEADER = ("| config | offered/s | calls | admitted | failed | refused (503) | bye ok | retr | "
          "503 ms p50 / p99 / max | 200 ms p50 / p99 / max | RTP ssrcs / holes | gw cores | "
          "late ticks | refused by the gateway | sipp | other | calib |")


def row_text(r: dict) -> str:
    finals = r.get("finals", {})
    admitted = finals.get(200, 0)
    refused = finals.get(503, 0)
    others = {k: v for k, v in finals.items() if k not in (200, 503)}
    refused_text = f"{refused}" + (f" (+{others})" if others else "")
    by = {k: v for k, v in (r["sip"].get("invites_refused") or {}).items() if v}
    adm = (r.get("admission") or {}).get("refused", {}).get("sip", 0)
    gw_refused = ", ".join(f"{k} {v}" for k, v in by.items())
    if adm:
        gw_refused += f"; admission sip {adm}"
    if r["sip"].get("overload_rejected"):
        gw_refused += f"; table {r['sip']['overload_rejected']}"
    media = r["media"]
    return (f"| {r['config']} | {r['rate']:g} | {r['calls']} | {admitted} | "
            f"{r.get('failed', '?')} | {refused_text} | {r.get('bye_ok', 0)} | "
            f"{r.get('retrans', '?')} | {fmt(r.get('refused_ms'))} | {fmt(r.get('setup_ms'))} | "
            f"{media.get('ssrcs', 0)} / {media.get('holes', 0)} | {r['cpu']['gateway']:.2f} | "
            f"{r['late_ticks']} | {gw_refused or '-'} | {r['cpu']['sipp']:.2f} | "
            f"{r['cpu']['other']:.2f} | {r['calib_ms']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100,200,300,400",
                        help="offered call rates, calls per second (default 100,200,300,400)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"which gateways, in order (default {','.join(CONFIGS)}; "
                             "previous is added by --previous)")
    parser.add_argument("--previous", metavar="REV",
                        help="also run the gateway of commit REV with its defaults")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="how long each rate is offered (calls = rate x seconds)")
    parser.add_argument("--hold-ms", type=int, default=1000, help="admitted calls' length")
    parser.add_argument("--rtp-ports", default="20000-29999",
                        help="the gateway's sip.rtp_port_min-rtp_port_max")
    parser.add_argument("--quiet-wait", type=float, default=15.0,
                        help="before each step wait up to this long for the rest of the "
                             "machine to be idle (< 0.15 cores)")
    parser.add_argument("--log-level", default="warning", help="the gateway's log level")
    parser.add_argument("--gateway-rev",
                        help="run the gateway of this commit (git archive into --out)")
    parser.add_argument("--keep-traces", action="store_true",
                        help="keep sipp's -trace_msg files (tens of MB per step)")
    parser.add_argument("--out", help="directory for logs (default: a new temporary one)")
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args()
    args.tone = True
    if shutil.which("sipp") is None:
        sys.exit("sipp not found on PATH (apt-get install sip-tester)")
    if not (SCENARIOS / SCENARIO).exists():
        sys.exit(f"missing {SCENARIOS / SCENARIO}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sip_overload-"))
    out.mkdir(parents=True, exist_ok=True)
    args.gateway_src, source = str(Path(__file__).resolve().parent.parent), describe_checkout()
    if args.gateway_rev:
        args.gateway_src, source = snapshot(args.gateway_rev, out)
    rates = [float(r) for r in args.rates.split(",") if r]
    configs = [c for c in args.configs.split(",") if c]
    if args.previous:
        args.previous_src, previous = snapshot(args.previous, out)
        configs.append("previous")
        source += f"; previous: {previous}"
    results: dict = {"machine": machine(), "gateway": source, "args": vars(args), "rows": []}
    print(f"# SIP overload; {results['machine']}; gateway: {source}; logs in {out}")
    print(f"# {args.seconds:g} s per step, admitted calls hold {args.hold_ms} ms\n")
    print(HEADER)
    print("|" + "---|" * (HEADER.count(" | ") + 1))
    for rate in rates:
        for config in configs:
            before = {"busy_before": wait_quiet(args.quiet_wait), "calib_ms": calibrate()}
            row = run(out, config, rate, args) | before
            print(row_text(row), flush=True)
            results["rows"].append(row)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
