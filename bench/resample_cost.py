"""What resampling one 20 ms frame costs, between 48 kHz and the codecs' rates.

    python bench/resample_cost.py [--previous REV]

Every RTP/SIP input at a telephone rate is resampled up to 48 kHz and every output at one
is resampled down, per stream and frame: on 2026-12-06 a profile of 40 PCMU streams with
an RTP listener each put half of the gateway's CPU in ``Resampler.process``. CPU time
(``time.process_time``) per 20 ms frame, best of 3 x 2,000 frames of noise, for each rate
pair; with ``--previous REV`` the resampler of commit REV (exported with ``git archive``)
is measured in the same run, each tree in its own process. Results: docs/benchmarks.md
("Resampling").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis_cost import export_tree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [(8000, 48000), (48000, 8000), (16000, 48000), (48000, 16000), (44100, 48000),
         (48000, 44100)]

MEASURE = r"""
import json, sys, time
import numpy as np
from gateway.codecs.resample import Resampler
out = {}
for a, b in json.loads(sys.argv[1]):
    r = Resampler(a, b)
    x = np.random.default_rng(1).integers(-20000, 20000, a // 50).astype(np.int16)
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(2000):
            r.process(x)
        best = min(best, (time.process_time() - t0) / 2000)
    out[f"{a}->{b}"] = best * 1e6
print(json.dumps(out))
"""


def measure(src: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(src), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(PAIRS)], env=env,
                         cwd=src, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--previous", help="a commit to measure in the same run")
    args = parser.parse_args()
    trees = [("this tree", ROOT)]
    if args.previous:
        trees.insert(0, (args.previous, export_tree(args.previous)))
    results = {name: measure(src) for name, src in trees}
    names = list(results)
    print("| rates | " + " | ".join(f"{n}, µs per 20 ms" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for pair in results[names[0]]:
        print(f"| {pair} | " + " | ".join(f"{results[n][pair]:.1f}" for n in names) + " |")


if __name__ == "__main__":
    main()
