"""What the analysers cost per active stream and frame, in process (issue 16).

    python bench/analysis_cost.py [--streams 10,100,1000] [--previous REV] [--frames 250]
                                  [--plot docs/analysis_cost.png] [--parts]

N streams of speech-like audio (the test corpus's speech over a -50 dBFS noise floor,
each stream at its own offset, so no silence shortcut applies) go through the analysers
one tick at a time, as the media clock hands them over; the CPU time per stream and
frame (``time.process_time``) is reported. With ``--previous REV`` the gateway of commit
REV (exported with ``git archive``) is measured in the same run, each tree in its own
process. ``--parts`` also times, in this tree, what one frame's analysis cannot do
without: the voice detector's FFT (one 1920-point FFT per stream per 40 ms, float64 as
used, and float32 for comparison) and the K-weighting with peak and mean square (the
levels kernel's arithmetic). Results: docs/benchmarks.md ("Analysis at scale").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = r"""
import json, sys, time
import numpy as np
from gateway.processing import analyzer as an
streams, frames = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(7)
sys.path.insert(0, sys.argv[3])
from speech import recorded
speech = recorded().astype(np.float64)
noise = rng.normal(0, 32768 * 10 ** (-50 / 20), speech.size)
audio = np.clip(np.round(speech + noise), -32768, 32767).astype(np.int16).reshape(-1, 960)
config = an.AnalyzerConfig()
analyzers = [an.StreamAnalyzer(config) for _ in range(streams)]
offsets = rng.integers(0, len(audio), streams)
bank = an.bank_for(config) if hasattr(an, "bank_for") else None
run = bank.analyse if bank is not None else an.analyse_batch

def tick(n):
    items = [(a, n, audio[(o + n) % len(audio)]) for a, o in zip(analyzers, offsets)]
    run(items)

for n in range(50):  # warm up: windows filled, kernels loaded
    tick(n)
t0 = time.process_time()
for n in range(50, 50 + frames):
    tick(n)
cpu = time.process_time() - t0
print(json.dumps({"us_per_stream_frame": cpu / frames / streams * 1e6}))
"""

PARTS = r"""
import json, sys, time
import numpy as np, scipy.fft
from gateway.processing import kernels as k
streams, frames = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(7)

def per_stream_frame(run, repeat):
    run()
    t0 = time.process_time()
    for _ in range(repeat):
        run()
    return (time.process_time() - t0) / repeat / streams * 1e6

out = {}
pairs = rng.normal(0, 3000, (streams // 2, 1920))  # one pair per stream every other frame
for name, dtype in (("fft float64", np.float64), ("fft float32", np.float32)):
    blocks = pairs.astype(dtype)
    out[name] = per_stream_frame(lambda: scipy.fft.rfft(blocks, axis=1), frames)
x = rng.normal(0, 3000, (streams, 960)).astype(np.int16)
rows = np.arange(streams, dtype=np.int64)
F = np.zeros((streams, k.F_COLUMNS))
out["K-weighting, peak, mean square"] = per_stream_frame(
    lambda: k.measure(x, rows, F, np.empty(streams), np.empty(streams), np.empty(streams)),
    frames)
print(json.dumps(out))
"""


def measure_parts(streams: int, frames: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PARTS, str(streams), str(frames)], env=env,
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def measure(src: Path, streams: int, frames: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", MEASURE, str(streams), str(frames),
                          str(ROOT / "tests")], env=env, cwd=src, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])["us_per_stream_frame"]


def export_tree(rev: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="analysis-cost-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "gateway"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="10,100,1000")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--previous", help="a commit to measure in the same run")
    parser.add_argument("--plot", metavar="PNG", help="draw µs per stream-frame against N")
    parser.add_argument("--parts", action="store_true",
                        help="also time the FFT and the K-weighting alone (this tree)")
    args = parser.parse_args()
    trees = [("this tree", ROOT)]
    if args.previous:
        trees.insert(0, (args.previous, export_tree(args.previous)))
    counts = [int(s) for s in args.streams.split(",")]
    results: dict[str, list[float]] = {name: [] for name, _ in trees}
    print("| tree | streams | µs per stream-frame | % of a core per stream |")
    print("|---|---:|---:|---:|")
    for n in counts:
        for name, src in trees:
            us = measure(src, n, args.frames)
            results[name].append(us)
            print(f"| {name} | {n} | {us:.2f} | {us / 20e3 * 100:.4f} |", flush=True)
    if args.parts:
        print("\n| streams | part | µs per stream-frame |\n|---:|---|---:|")
        for n in counts:
            for part, us in measure_parts(n, args.frames).items():
                print(f"| {n} | {part} | {us:.2f} |", flush=True)
    if args.plot:
        plot(counts, results, args.plot)


def plot(counts: list[int], results: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, values in results.items():
        ax.plot(counts, values, marker="o", label=name)
    ax.axhline(2.0, color="grey", linestyle="--", label="target: 2 µs (0.01 % of a core)")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("active streams analysed per tick")
    ax.set_ylabel("CPU µs per stream and 20 ms frame")
    ax.set_title("Analysers' cost per active stream")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
