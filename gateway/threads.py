"""Bounds on the threads the gateway runs beside its event loop.

* FFmpeg starts no worker threads. PyAV's audio encoder passes every frame through a
  filter graph (to cut frames to the codec's frame size), and FFmpeg gives each graph
  its own pool of one thread per core (2 on 2 cores, 32 on 32). The pool sleeps as long
  as its encoder exists, which for an encoder in a reference cycle means until the next
  full garbage collection: every shared encoder, and every aiortc Opus encoder, held one.
  Frames of 20 ms need none, so FFmpeg is told the machine has one core
  (``av_cpu_force_count``, process-wide; PyAV does not expose it: called through ctypes).
* asyncio's default executor (recording file I/O) gets a fixed size and named threads,
  instead of min(32, cores + 4) anonymous ones that, once started, never end.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


def _loaded_libavutil() -> list[str]:
    """Paths of the libavutil copies this process has loaded (PyAV wheels bundle one)."""
    import av  # noqa: F401  (loads libavutil)

    found = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)  # address perms offset dev inode path
                if len(fields) == 6 and "libavutil" in fields[5]:
                    found.add(fields[5].strip())
    except OSError:  # no /proc: a system FFmpeg, if any, is what PyAV uses
        pass
    system = ctypes.util.find_library("avutil")
    return sorted(found) or ([system] if system else [])


def limit_ffmpeg_threads() -> bool:
    """Make FFmpeg single-threaded in this process; False if libavutil was not found."""
    done = False
    for path in _loaded_libavutil():
        try:
            lib = ctypes.CDLL(path)
            lib.av_cpu_force_count(ctypes.c_int(1))
            done = True
        except (OSError, AttributeError) as exc:
            log.warning("cannot limit FFmpeg's threads through %s: %s", path, exc)
    if not done:
        log.warning("libavutil not found: FFmpeg may start idle threads per encoder")
    return done


def io_executor(threads: int) -> ThreadPoolExecutor:
    """The event loop's default executor: at most ``threads`` named worker threads."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-io")
