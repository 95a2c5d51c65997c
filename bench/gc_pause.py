"""How long a full garbage collection pauses the gateway's event loop, with and without
``gc.freeze()`` after start-up (what ``gateway serve`` does).

The objects made by importing aiortc, av, numpy and scipy and by building the app live for
the whole process, yet every generation-2 collection walks them all; while it runs, no
packet is sent. Baseline: the same process before the freeze.

    python bench/gc_pause.py [--repeat 7] [--sessions 200]

``--sessions``: also keep that many aiortc peer connections alive (what listeners leave on
the heap), made after the freeze, so they are walked in both cases.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time


def full_collection_ms(repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()

    from aiortc import RTCPeerConnection

    from gateway.app import create_app
    from gateway.config import load

    app = create_app(load(None, {}, {}))
    assert app is not None
    startup_objects = len(gc.get_objects())

    def run(label: str) -> None:
        times = full_collection_ms(args.repeat)
        print(f"{label:<28} tracked={len(gc.get_objects()):>7}  "
              f"full collection median {statistics.median(times):7.2f} ms  "
              f"max {max(times):7.2f} ms")

    print(f"python {platform.python_version()} on {platform.machine()}; "
          f"{startup_objects} objects tracked after start-up; "
          f"{args.sessions} peer connections")
    held = [RTCPeerConnection() for _ in range(args.sessions)]
    run("baseline (no freeze)")
    del held
    gc.collect()
    gc.freeze()  # as `gateway serve` does just before serving
    held = [RTCPeerConnection() for _ in range(args.sessions)]
    run("gc.freeze() after start-up")
    assert len(held) == args.sessions  # alive until here
    print(f"frozen objects: {gc.get_freeze_count()}")

if __name__ == "__main__":
    main()
