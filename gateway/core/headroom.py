"""Admission control from measured headroom: refuse new work before it hurts anyone.

A gateway past its capacity does not slow down gently. Its media clock falls behind, and
every listener loses audio at once. So new sessions, calls and outputs are refused while:

* the process's CPU use is near what it may use: one core at most (one event loop), or
  less under a container CPU limit (a cgroup quota, read from /sys/fs/cgroup), where the
  kernel throttles the process long before it uses a whole core; or
* the media clock already runs late (its ticks' lateness, p99 over the last second).

A session costs more while it sets up (ICE checks, a DTLS handshake) than once it plays.
So capacity is judged by the steady cost per session, learnt from CPU windows in which
nothing was setting up, and a CPU peak or late clock ticks while sessions set up (under a
container quota, a burst of handshakes uses up a 100 ms period's quota and the process
waits for the next) are answered "busy" with a short Retry-After: the newcomer comes
back a second later instead of five, and a burst of arrivals is paced rather than
turned away (measured: bench/overload_ramp.py, docs/benchmarks.md). Each admission also
adds its steady cost to the estimate until the next sample, so a burst between two
samples cannot overshoot.
Refusals are counted per kind and logged once per episode.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..models.info import AdmissionInfo
from .lateness import recent_quantile_ms

log = logging.getLogger(__name__)

#: Seconds between CPU samples; the CPU rate is averaged over ``CPU_WINDOW`` samples.
SAMPLE_S = 0.25
CPU_WINDOW = 4
#: Sessions admitted this recently are still setting up: CPU windows overlapping them do
#: not teach the steady cost per session.
SETTLE_S = 2.0
#: Retry-After of a refusal while sessions set up (the CPU peak passes within seconds).
BUSY_RETRY_S = 1
#: An overload episode ends after this long with nothing refused-worthy (one log line
#: per episode even while the gateway hovers at its limit).
EPISODE_CLEAR_S = 1.0
#: The kinds of new work admission control decides on; each has a refusal counter from
#: the start (0), so a dashboard or an alert has every series before the first refusal.
KINDS = ("webrtc_publish", "webrtc_listen", "rtp_output", "recording", "dial_out", "sip")


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """Cores this process may use under its cgroup's CPU quota (v1 or v2), or None."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: "0::/path"
            try:
                quota, period = (root / rel / "cpu.max").read_text().split()
            except (OSError, ValueError):
                continue
            if quota != "max":
                return int(quota) / int(period)
        elif "cpu" in controllers.split(","):
            base = root / "cpu" if (root / "cpu").is_dir() else root / controllers
            try:
                quota = int((base / rel / "cpu.cfs_quota_us").read_text())
                period = int((base / rel / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:
                return quota / period
    return None


def available_cores() -> float:
    """What one gateway process can use: one core (one event loop), fewer under a quota."""
    cores = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") \
        else float(os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(1.0, cores, limit if limit is not None else cores)


def process_cpu_seconds() -> float:
    """All threads' CPU time, to the microsecond (``os.times`` counts 10 ms clock ticks:
    a tenth of a 0.1-core quota's second, too coarse to judge it by)."""
    return time.process_time()


@dataclass
class Refusal:
    """Why new work was refused, for the 503 problem and its Retry-After."""

    reason: str
    retry_after_s: int


@dataclass
class AdmissionConfig:
    #: Refuse new work when CPU use exceeds this share of what the process may use.
    cpu_limit: float = 0.85
    #: ... or when the media clock's ticks run this late (p99 over the last second, ms).
    lateness_limit_ms: float = 40.0
    retry_after_s: int = 5
    enabled: bool = True


@dataclass
class Admission:
    config: AdmissionConfig = field(default_factory=AdmissionConfig)
    #: Lateness of the media clock's recent ticks, seconds (the clock's own record).
    lateness: Callable[[], list[float]] = list
    #: Sessions and calls now admitted (the load the CPU estimate is shared by).
    load: Callable[[], int] = lambda: 0
    cpu_seconds: Callable[[], float] = process_cpu_seconds
    cores: Callable[[], float] = available_cores
    now: Callable[[], float] = time.monotonic
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    episodes: int = 0

    def __post_init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=CPU_WINDOW + 1)
        self._available = self.cores()
        self.cpu_share = 0.0  # CPU use over the window / available cores
        self.idle_share = 0.0  # CPU share with nothing admitted (media clock, meters)
        #: Steady CPU share per admitted session, from windows with nothing setting up.
        self.session_share: float | None = None
        self._admitted_since_sample = 0
        self._last_admitted = -SETTLE_S - CPU_WINDOW * SAMPLE_S
        self._refusing: str | None = None  # the episode's reason while refusing
        self._episode_refusals = 0
        self._clear_since: float | None = None

    # -- measurement ---------------------------------------------------------------------
    def sample(self) -> None:
        """Take a CPU sample (every SAMPLE_S, from the gateway's sampler task)."""
        now, cpu = self.now(), self.cpu_seconds()
        self._samples.append((now, cpu))
        if len(self._samples) >= 2:
            (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
            if t1 > t0:
                self.cpu_share = (c1 - c0) / (t1 - t0) / self._available
                if len(self._samples) == self._samples.maxlen and not self._settling(t0):
                    self._learn(self.load())
        if len(self._samples) == self._samples.maxlen:  # a quota may change at run time
            self._rescale(self.cores())
        self._admitted_since_sample = 0
        self._end_episode_if_clear()

    def _rescale(self, available: float) -> None:
        """Shares learnt are shares of what was available: keep their CPU time when that
        changes (``docker update --cpus``)."""
        if available != self._available:
            ratio = self._available / available
            self.idle_share *= ratio
            if self.session_share is not None:
                self.session_share *= ratio
            self._available = available

    def _settling(self, since: float) -> bool:
        """Whether a session admitted after ``since`` may still be setting up."""
        return self._last_admitted > since - SETTLE_S

    def _learn(self, load: int) -> None:
        if load == 0:
            self.idle_share += (self.cpu_share - self.idle_share) / 4
            return
        share = max(0.0, self.cpu_share - self.idle_share) / load
        old = self.session_share
        self.session_share = share if old is None else old + (share - old) / 4

    def lateness_p99_ms(self) -> float:
        return recent_quantile_ms(self.lateness(), 0.99)

    def predicted_share(self) -> float:
        """The steady CPU share once what is admitted (and one more) plays.

        Until a steady window has been seen, the measured share (set-up costs and all)
        shared by the sessions stands in for the steady cost: cautious, never blind."""
        load = self.load()
        if self.session_share is None:
            per_session = max(0.0, self.cpu_share - self.idle_share) / max(1, load)
            return self.cpu_share + self._admitted_since_sample * per_session
        return self.idle_share + (load + self._admitted_since_sample) * self.session_share

    # -- decision ------------------------------------------------------------------------
    def check(self) -> tuple[str, int] | None:
        """Why the gateway cannot take more now and when to ask again, or None."""
        if not self.config.enabled:
            return None
        settling = self._settling(self.now())
        late = self.lateness_p99_ms()
        if late > self.config.lateness_limit_ms:
            return (f"{'busy setting up sessions: ' if settling else ''}media clock running "
                    f"{late:.0f} ms late (limit {self.config.lateness_limit_ms:g} ms)",
                    BUSY_RETRY_S if settling else self.config.retry_after_s)
        share = self.predicted_share()
        if self.cpu_share > self.config.cpu_limit and settling:
            if share <= self.config.cpu_limit:
                return (f"busy setting up sessions (CPU at {self.cpu_share:.0%} of the "
                        f"{self._available:.2g} cores this process may use)", BUSY_RETRY_S)
        else:
            share = max(share, self.cpu_share)  # nothing setting up: what is measured
        if share > self.config.cpu_limit:
            return (f"CPU at {share:.0%} of the {self._available:.2g} cores this process may "
                    f"use (limit {self.config.cpu_limit:.0%})", self.config.retry_after_s)
        return None

    def admit(self, kind: str) -> Refusal | None:
        """Admit one new piece of work of ``kind`` (one of KINDS), or say why not."""
        verdict = self.check()
        if verdict is None:
            self._admitted_since_sample += 1
            self._last_admitted = self.now()
            return None
        if self._refusing is None:
            self._refusing = verdict[0]
            self.episodes += 1
            log.warning("overloaded: refusing new sessions, calls and outputs (%s); those "
                        "already admitted keep running", verdict[0])
        return self._refuse(kind, verdict)

    def refuse_while_refusing(self, kind: str) -> Refusal | None:
        """While an episode lasts, refuse (and count) ``kind`` if the gateway still cannot
        take more; else None, and the work goes through ``admit`` once it commits to
        something. Outside an episode this costs one attribute test: for paths that must
        stay cheap when the gateway is busy (SIP INVITEs at datagram read)."""
        if self._refusing is None:
            return None
        verdict = self.check()
        if verdict is None:
            return None
        return self._refuse(kind, verdict)

    def _refuse(self, kind: str, verdict: tuple[str, int]) -> Refusal:
        reason, retry_after_s = verdict
        self.refused[kind] = self.refused.get(kind, 0) + 1
        self._episode_refusals += 1
        return Refusal(f"the gateway is at capacity: {reason}", retry_after_s)

    def _end_episode_if_clear(self) -> None:
        """An episode ends once nothing would be refused for EPISODE_CLEAR_S, so a gateway
        hovering at its limit logs one episode, not one per sample."""
        if self._refusing is None:
            return
        if self.check() is not None:
            self._clear_since = None
            return
        now = self.now()
        if self._clear_since is None:
            self._clear_since = now
        if now - self._clear_since >= EPISODE_CLEAR_S:
            log.info("admitting again after %d refusals", self._episode_refusals)
            self._refusing = None
            self._episode_refusals = 0
            self._clear_since = None

    @property
    def refusing(self) -> bool:
        """New work would be refused now (whether or not any has been offered)."""
        return self.check() is not None

    def refusing_cheaply(self) -> bool:
        """``refusing`` within an episode; outside one, False at the cost of one attribute
        test (SIP reads every INVITE through it) and nothing counted."""
        return self._refusing is not None and self.check() is not None

    @property
    def cores_available(self) -> float:
        """Cores this process may use, as last read (one, or less under a quota)."""
        return self._available

    def info(self) -> AdmissionInfo:
        return AdmissionInfo(
            refusing=self.refusing,
            cpu_share=round(self.cpu_share, 3),
            cores_available=round(self.cores_available, 3),
            clock_lateness_p99_ms=round(self.lateness_p99_ms(), 2),
            refused=dict(self.refused),
            episodes=self.episodes,
        )
