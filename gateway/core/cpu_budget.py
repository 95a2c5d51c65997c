"""Work that can wait is paced to the CPU a container quota leaves the media.

A container CPU limit is a CFS quota: e.g. 50 ms of CPU in every 100 ms period. A burst
of other work (a flood of SIP requests, API listings) that needs more than what is left
of the current period throttles the whole process until the next period, and the media
clock's tick due meanwhile runs tens of milliseconds late for every listener. Slicing
the burst (gateway/sip/udp.py, gateway/web/turns.py) lets ticks run between slices, but
does not make its CPU fit in the period.

So before each slice of such work the process looks at its own CPU over the last
``WINDOW_S`` (the period Docker and Kubernetes use): a slice runs only while that stays
under ``LIMIT`` of the quota. If no 100 ms window exceeds the quota, no period does, and
the kernel never throttles; the burst is spread over as many periods as it needs. The
media's own work is never paced. Paced work still progresses while the media alone
fills the quota (one slice every ``MAX_WAIT_S``): the gateway is then overloaded, and
admission control refuses newcomers.

Without a quota below one core nothing is paced (one event loop cannot use more than a
core, so the kernel has nothing to throttle it for).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

#: The span the process's CPU is judged over: Docker's and Kubernetes' CFS period.
WINDOW_S = 0.1
#: Share of the quota the process stays under, paced work included.
LIMIT = 0.9
#: A paced slice runs at least this often, however full the quota.
MAX_WAIT_S = 0.05
#: How long paced work waits before it looks again.
RETRY_S = 0.005
#: CPU samples are this far apart at least (a slice is ~1 ms).
SAMPLE_GAP_S = 0.002


class CpuBudget:
    def __init__(self, now: Callable[[], float] = time.perf_counter,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self._now = now
        self._cpu = cpu
        #: Cores the process may use (the gateway sets it from its cgroup quota).
        self.cores = 1.0
        self._samples: deque[tuple[float, float]] = deque()
        self._last_slice = -MAX_WAIT_S
        self.waits = 0  # times paced work was told to wait

    @property
    def paced(self) -> bool:
        return self.cores < 1.0

    def used_s(self) -> float:
        """CPU the process used over the last WINDOW_S (over the span since the newest
        sample at least that old: a longer gap is averaged, a shorter history scaled)."""
        now, cpu = self._now(), self._cpu()
        samples = self._samples
        if not samples or now - samples[-1][0] >= SAMPLE_GAP_S:
            samples.append((now, cpu))
        while len(samples) > 2 and samples[1][0] <= now - WINDOW_S:
            samples.popleft()
        t0, c0 = samples[0]
        span = now - t0
        return (cpu - c0) * WINDOW_S / span if span > 0 else 0.0

    def wait_s(self) -> float:
        """0 if a slice of paced work may run now, else how long to wait first."""
        if self.cores >= 1.0:
            return 0.0
        full = self.used_s() >= LIMIT * self.cores * WINDOW_S
        now = self._now()
        if full and now - self._last_slice < MAX_WAIT_S:
            self.waits += 1
            return RETRY_S
        self._last_slice = now
        return 0.0

    async def turn(self) -> None:
        """Wait until a slice of paced work may run."""
        while (wait := self.wait_s()) > 0:
            await asyncio.sleep(wait)
