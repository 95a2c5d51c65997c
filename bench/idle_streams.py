"""Idle streams: what declared streams with no sender and no listener cost (issue 16).

    python bench/idle_streams.py [--streams 100,1000] [--previous REV] [--window 10]

For each N in ``--streams``, a gateway process (``python -m gateway serve``) with N
declared streams and nothing else runs with the analysers on and off; its CPU (utime +
stime, psutil) over ``--window`` seconds after ``--warmup`` is reported in % of one core.
With ``--previous REV`` the same runs are made first on the gateway of commit REV
(exported with ``git archive``): before and after in one run. Results:
docs/benchmarks.md ("Analysis at scale").
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import export_tree, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def config(n: int, port: int, analysers: bool) -> str:
    names = ", ".join(f'"ch{i:04d}"' for i in range(n))
    return "\n".join(['log_level = "warning"', "[http]", f"port = {port}",
                      "[sip]", "enabled = false", "[streams]", f"declared = [{names}]",
                      "[processing]", f"analysers = {'true' if analysers else 'false'}", ""])


def run(src: Path, n: int, analysers: bool, args: argparse.Namespace) -> float:
    """CPU of the gateway in % of a core over the window."""
    work = Path(tempfile.mkdtemp(prefix="idle-streams-"))
    port = free_port()
    (work / "gateway.toml").write_text(config(n, port, analysers))
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                             str(work / "gateway.toml")], cwd=src, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(args.warmup)
        gw = psutil.Process(proc.pid)
        t0, c0 = time.monotonic(), sum(gw.cpu_times()[:2])
        time.sleep(args.window)
        return (sum(gw.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 100
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="100,1000")
    parser.add_argument("--previous", help="also run the gateway of this commit, first")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    trees = [("after", ROOT)]
    if args.previous:
        trees.insert(0, ("before", export_tree(args.previous)))
    print(f"# idle declared streams; {os.cpu_count()} CPUs, {platform.processor() or '?'}, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
    print(f"{'tree':<7} {'streams':>7} {'analysers':>9} {'% core':>7} {'% per stream':>13}")
    for label, src in trees:
        for n in [int(s) for s in args.streams.split(",")]:
            for analysers in (True, False):
                cpu = run(src, n, analysers, args)
                print(f"{label:<7} {n:>7} {'on' if analysers else 'off':>9} {cpu:>7.2f} "
                      f"{cpu / n:>13.4f}", flush=True)


if __name__ == "__main__":
    main()
