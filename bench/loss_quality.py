"""Speech quality after packet loss: fade-repeat vs Opus PLC vs Opus FEC vs RED, offline and
on the gateway's real paths, plus what each costs in CPU.

Speech (``--speech FILE``, default linphone's recorded ``hello16000.wav``; ``--speech
espeak`` for espeak-ng's) is sent as 20 ms Opus at ``--bitrate``, packets are dropped at
random (seeded; and in bursts of two) before they reach the gateway, and what comes out
is scored with PESQ-WB (ITU-T P.862.2, ``pesq`` package) against the speech sent. Modes:

* fade     the gateway before issue 15: sender without FEC, the last packet repeated at
           falling gain for a lost one
* plc      sender without FEC, libopus's packet loss concealment
* fec      sender with in-band FEC (for 10 % expected loss): a lost packet decoded from
           the next one, else PLC (the gateway now)
* red      sender without FEC, RED (RFC 2198, the previous packet as the redundant block,
           as browsers send it); what RED does not cover: PLC
* red+fec  both, as Chrome sends once its receiver reports show loss

Paths (``--paths``):

* offline  the gateway's ``Playout`` (jitter buffer, decoder, concealment) fed packet i
           just before tick i: no sockets, deterministic; with CPU per tick per mode
* rtp      RTP -> RTP: an RTP input on a stepped media clock (packets sent as in
           offline), an Opus RTP output (the gateway's shared encoder, a second Opus
           encode), decoded by libopus; RTP inputs do not negotiate RED, so no RED rows
* webrtc   WHIP -> WHEP in real time: an aiortc publisher (FFmpeg's libopus, FEC on or
           off; RED added in the client) drops its packets before sending them, an
           aiortc WHEP listener records what it hears (the gateway's Opus encode on the
           way). A run whose timing the loaded machine upset (late packets: the client in
           this process stalled) is run again once; upsets are counted in the output.

    python bench/loss_quality.py --paths offline,rtp,webrtc --json out.json --plot loss.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/: speech, packets, PESQ, clients

from speech import (  # noqa: E402
    FRAME,
    RECORDED,
    drops,
    opus_packets,
    pesq_wb,
    recorded,
    speech,
)

from gateway.codecs import libopus  # noqa: E402
from gateway.codecs.opus_encoder import LibOpusEncoder  # noqa: E402
from gateway.codecs.spec import OPUS  # noqa: E402
from gateway.ingress.playout import Concealment, Playout  # noqa: E402
from gateway.rtp.red import red_with_previous  # noqa: E402

RED_PT = 63


@dataclass(frozen=True)
class Mode:
    name: str
    fec: bool  # the sender adds in-band FEC
    red: bool  # the sender sends RED
    concealment: Concealment


MODES = {m.name: m for m in (
    Mode("fade", False, False, Concealment.FADE),
    Mode("plc", False, False, Concealment.PLC),
    Mode("fec", True, False, Concealment.FEC),
    Mode("red", False, True, Concealment.FEC),
    Mode("red+fec", True, True, Concealment.FEC),
)}
LABELS = {"fade": "fade-repeat (before)", "plc": "Opus PLC", "fec": "Opus FEC (now)",
          "red": "RED", "red+fec": "RED + FEC"}


def load(path: str | None) -> np.ndarray:
    return speech() if path == "espeak" else recorded(path or RECORDED)


def lost_set(count: int, percent: float, burst: int, seed: int) -> set[int]:
    return drops(count, percent / 100, seed, burst) if percent else set()


# -- offline ------------------------------------------------------------------------------
def red_payloads(packets: list[bytes]) -> list[bytes]:
    """Each packet as browsers send RED: itself plus the previous one."""
    return [red_with_previous(OPUS.payload_type, p, packets[i - 1] if i else None, FRAME)
            for i, p in enumerate(packets)]


def play(packets: list[bytes], lost: set[int], mode: Mode) -> tuple[np.ndarray, float, Playout]:
    """The playout's output, CPU seconds per tick, and the playout (its counters)."""
    playout = Playout({OPUS.payload_type: OPUS}, min_depth=1, max_depth=5,
                      concealment=mode.concealment)
    pt = OPUS.payload_type
    if mode.red:
        playout.red_payload_types.add(RED_PT)
        pt = RED_PT
    out = []
    start = time.process_time()
    for tick, packet in enumerate(packets):
        if tick not in lost:
            playout.push(tick, pt, packet, 1)
        frame = playout.pull()
        out.append(frame if frame is not None else np.zeros(FRAME, np.int16))
    cpu = (time.process_time() - start) / len(packets)
    return np.concatenate(out), cpu, playout


def sender_packets(reference: np.ndarray, mode: Mode, bitrate: int) -> list[bytes]:
    packets = opus_packets(reference, bitrate=bitrate, fec=mode.fec,
                           loss_percent=10 if mode.fec else 0)
    return red_payloads(packets) if mode.red else packets


def run_offline(reference, modes, cases, seeds, bitrate) -> tuple[list[dict], dict]:
    results, cpu = [], {m.name: [] for m in modes}
    packets = {m.name: sender_packets(reference, m, bitrate) for m in modes}
    for percent, burst in cases:
        for seed in range(1, seeds + 1):
            lost = lost_set(len(reference) // FRAME, percent, burst, seed)
            for mode in modes:
                audio, seconds, playout = play(packets[mode.name], lost, mode)
                cpu[mode.name].append(seconds)
                results.append(row("offline", mode, percent, burst, seed, lost,
                                   pesq_wb(reference, audio), playout))
    return results, {k: 1e6 * float(np.median(v)) for k, v in cpu.items()}


def row(path: str, mode: Mode, percent: float, burst: int, seed: int, lost: set[int],
        score: float, playout: Playout | None, upset: int = 0) -> dict:
    info = playout.info() if playout is not None else None
    return {"path": path, "mode": mode.name, "loss": percent, "burst": burst, "seed": seed,
            "dropped": len(lost), "pesq": score, "upset": upset,
            "fec_recovered": info.fec_recovered if info else None,
            "red_recovered": info.red_recovered if info else None}


def encoder_cpu(reference: np.ndarray, bitrate: int) -> dict[str, float]:
    """The shared encoder's cost per 20 ms frame with in-band FEC off and on."""
    out = {}
    for name, loss in (("encode, FEC off", 0), ("encode, FEC on (10 %)", 10)):
        enc = LibOpusEncoder(bitrate)
        enc.set_expected_loss(loss)
        start = time.process_time()
        for i in range(0, len(reference), FRAME):
            enc.encode_packets(reference[i : i + FRAME])
        out[name] = 1e6 * (time.process_time() - start) / (len(reference) // FRAME)
    return out


# -- RTP -> RTP on a stepped clock -----------------------------------------------------------
async def run_rtp(reference, modes, cases, seeds, bitrate) -> list[dict]:
    from conftest import free_port, start_gateway
    from stepping import RtpSink
    from test_loss_recovery import send_lossy
    from test_rtp_input import add_input
    from test_rtp_output import add_output

    from gateway.rtp.packet import RtpPacket

    gw = await start_gateway(stepped=True)
    results = []
    try:
        n = 0
        for mode in modes:
            if mode.red:
                continue  # RTP inputs do not negotiate RED
            packets = sender_packets(reference, mode, bitrate)
            for percent, burst in cases:
                for seed in range(1, seeds + 1):
                    lost = lost_set(len(packets), percent, burst, seed)
                    n += 1
                    stream, port = f"rtp{n}", free_port(socket.SOCK_DGRAM)
                    created = await add_input(gw, stream, type="rtp", port=port, codec="opus")
                    sink = RtpSink()
                    await add_output(gw, stream, host="127.0.0.1", port=sink.port,
                                     codec="opus")
                    rtp_input = gw.gateway.rtp_inputs[created["id"]]
                    rtp_input.playout.concealment = mode.concealment
                    await send_lossy(gw, created["id"], port, packets, lost)
                    await asyncio.sleep(0.05)
                    decoder = libopus.OpusDecoder()
                    heard = np.concatenate([decoder.decode(RtpPacket.parse(p).payload)
                                            for p in sink.drain()])
                    sink.close()
                    results.append(row("rtp", mode, percent, burst, seed, lost,
                                       pesq_wb(reference, heard), rtp_input.playout))
                    print(_line(results[-1]), flush=True)
    finally:
        await gw.runner.cleanup()
    return results


# -- WHIP -> WHEP in real time ----------------------------------------------------------------
LEAD_IN = 75  # packets of silence before the speech: the listener is connected by then


async def run_webrtc(reference, modes, cases, seeds, bitrate) -> list[dict]:
    from conftest import start_gateway
    from lossy_webrtc import LossyPublisher, aiortc_opus

    from gateway.webrtc.client import Listener

    gw = await start_gateway()
    sent_pcm = np.concatenate((np.zeros(LEAD_IN * FRAME, np.int16), reference))
    results = []
    n = 0
    try:
        for percent, burst in cases:
            for seed in range(1, seeds + 1):
                lost = lost_set(len(reference) // FRAME, percent, burst, seed)
                drop = {i + LEAD_IN for i in lost}
                for mode in modes:
                    for _attempt in range(2):
                        n += 1
                        stream = f"whip{n}"
                        with aiortc_opus(fec=mode.fec, bitrate=bitrate):
                            pub = LossyPublisher(gw.url, stream, sent_pcm, drop, red=mode.red)
                            await pub.negotiate()
                            playout = gw.gateway.registry.get(stream).source.playout
                            playout.concealment = mode.concealment
                            lis = Listener(gw.url, stream)
                            await lis.negotiate()
                            await pub.connected()
                            await lis.connected()
                            await asyncio.sleep(len(sent_pcm) / 48000 + 0.5)
                        stats = playout.jitter.stats
                        upset = stats.late + stats.underruns + stats.resets
                        heard = lis.audio()
                        await lis.delete()
                        await pub.delete()
                        if not upset:
                            break
                    assert lis.sample_rate == 48000, lis.sample_rate
                    score = pesq_wb(reference, heard, max_lag=len(heard) // 2)
                    results.append(row("webrtc", mode, percent, burst, seed, lost, score,
                                       playout, upset))
                    print(_line(results[-1]), flush=True)
    finally:
        await gw.runner.cleanup()
    return results


def _line(r: dict) -> str:
    return (f"{r['path']} {r['mode']} {r['loss']:g} % burst {r['burst']} seed {r['seed']}: "
            f"PESQ-WB {r['pesq']:.2f} ({r['dropped']} dropped, FEC {r['fec_recovered']}, "
            f"RED {r['red_recovered']}, upset {r['upset']})")


# -- report -----------------------------------------------------------------------------------
def table(results: list[dict], path: str, modes: list[Mode], cases) -> str:
    names = [m.name for m in modes if any(r["mode"] == m.name and r["path"] == path
                                          for r in results)]
    lines = ["| loss | " + " | ".join(LABELS[n] for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for percent, burst in cases:
        cells = []
        for name in names:
            got = [r["pesq"] for r in results if r["path"] == path and r["mode"] == name
                   and r["loss"] == percent and r["burst"] == burst]
            cells.append(f"{np.mean(got):.2f}" if got else "–")
        label = f"{percent:g} %" + (" in bursts of 2" if burst == 2 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], paths: list[str], modes: list[Mode], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"offline": "playout, offline", "rtp": "RTP → RTP", "webrtc": "WHIP → WHEP"}
    fig, axes = plt.subplots(1, len(paths), figsize=(5 * len(paths), 4), sharey=True,
                             squeeze=False)
    for ax, path in zip(axes[0], paths, strict=True):
        for mode in modes:
            points = sorted({r["loss"] for r in results if r["path"] == path
                             and r["mode"] == mode.name and r["burst"] == 1})
            if not points:
                continue
            ys = [np.mean([r["pesq"] for r in results if r["path"] == path and
                           r["mode"] == mode.name and r["burst"] == 1 and r["loss"] == x])
                  for x in points]
            ax.plot(points, ys, marker="o", label=LABELS[mode.name])
        ax.axhline(4.0, color="grey", lw=0.6, ls=":")
        ax.axhline(3.5, color="grey", lw=0.6, ls=":")
        ax.set_title(titles[path])
        ax.set_xlabel("random packet loss, %")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("PESQ-WB (MOS-LQO)")
    axes[0][0].set_ylim(1, 4.6)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speech", help=f"a speech recording (any rate), default {RECORDED}; "
                                    "'espeak' for espeak-ng's voice")
    p.add_argument("--bitrate", type=int, default=32000, help="the sender's Opus bit rate")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--paths", default="offline")
    p.add_argument("--losses", default="0,1,3,5,10,20", help="random loss, %%")
    p.add_argument("--burst-losses", default="6,10", help="loss in bursts of 2, %%")
    p.add_argument("--seeds", type=int, default=3, help="loss patterns per case (offline, rtp)")
    p.add_argument("--webrtc-seeds", type=int, default=1, help="loss patterns per case")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--plot", help="PESQ-WB against loss per path, PNG (matplotlib)")
    args = p.parse_args()

    reference = load(args.speech)
    modes = [MODES[m] for m in args.modes.split(",")]
    paths = args.paths.split(",")
    cases = [(float(x), 1) for x in args.losses.split(",") if x]
    cases += [(float(x), 2) for x in args.burst_losses.split(",") if x]
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()},"
          f" {libopus.version()}; {len(reference) / 48000:.1f} s of "
          f"{args.speech or RECORDED}, sender's Opus {args.bitrate // 1000} kbit/s", flush=True)
    results: list[dict] = []
    cpu: dict[str, float] = {}
    if "offline" in paths:
        offline, cpu = run_offline(reference, modes, cases, args.seeds, args.bitrate)
        results += offline
        cpu.update(encoder_cpu(reference, 64000))
    if "rtp" in paths:
        results += asyncio.run(run_rtp(reference, modes, cases, args.seeds, args.bitrate))
    if "webrtc" in paths:
        results += asyncio.run(run_webrtc(reference, modes, cases, args.webrtc_seeds,
                                          args.bitrate))
    for path in paths:
        print(f"\n## {path}\n\n{table(results, path, modes, cases)}")
    if cpu:
        print("\nCPU per stream and 20 ms tick (ingress: decode + concealment + RED split, "
              "median; egress: the shared encoder at 64 kbit/s): " +
              ", ".join(f"{k} {v:.0f} µs" for k, v in cpu.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "cpu_us": cpu}, indent=1))
    if args.plot:
        plot(results, paths, modes, args.plot)


if __name__ == "__main__":
    main()
