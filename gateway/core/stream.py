"""A named live stream: one ring of canonical frames, one sender slot, many outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from ..models.info import SenderInfo, StreamInfo
from .audio import FRAME_SAMPLES, SILENCE
from .counters import GatewayCounters, SenderCounters, SenderStats
from .outputs import OutputRegistry
from .ring import Ring

log = logging.getLogger(__name__)


class StreamBusy(Exception):
    """The stream already has an active sender."""


class FrameSource(Protocol):
    """An ingress: asked for one canonical frame on every media clock tick."""

    kind: str
    id: str

    def pull(self) -> np.ndarray | None:
        """The next 20 ms frame, or None when nothing is available yet."""

    def stats(self) -> SenderStats | None:
        """Its playout's counters and delays (None: it has no jitter buffer)."""

    def info(self) -> SenderInfo: ...


class Stream:
    """Frames enter through ``tick()`` (driven by the media clock) and leave through the ring.

    Every tick writes exactly one frame: the sender's frame, or silence while the sender
    is absent or late, so frame index n always means time n * 20 ms on the stream.
    """

    def __init__(self, name: str, ring_frames: int, persistent: bool = False,
                 counters: GatewayCounters | None = None) -> None:
        self.name = name
        self.ring: Ring[np.ndarray] = Ring(ring_frames)
        self.persistent = persistent  # declared in configuration: never reaped when idle
        self.source: FrameSource | None = None
        self.outputs = OutputRegistry()
        #: The gateway's counters (shared by its streams; a stream alone gets its own).
        self.counters = counters if counters is not None else GatewayCounters()
        self.egress: dict[Any, Any] = {}  # shared encoders by key; owned by egress.encoders
        self.analysis: Any = None  # levels, loudness, plug-ins; owned by egress.analysis
        self.created = time.time()
        self.idle_since: float | None = time.monotonic()
        self.frames_from_sender = 0
        self.frames_silence = 0
        self.written_in = -1  # the registry's last period that wrote this stream's frame
        self.senders_total = 0
        self._ended_senders: dict[str, SenderCounters] = {}  # by kind
        self._ended_skips: dict[str, int] = {}  # of packet rings that ended with their encoder
        #: Called when the sender changes or the stream gains its first reader or loses its
        #: last one (a cluster node subscribes to another node's stream while it has readers).
        self.on_change: Callable[[Stream], None] | None = None
        self.ring.on_demand = self._changed

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    # -- sender slot -------------------------------------------------------------
    def attach(self, source: FrameSource) -> None:
        if self.source is not None:
            raise StreamBusy(f"stream {self.name!r} already has a sender ({self.source.id})")
        self.source = source
        self.senders_total += 1
        log.info("stream %s: sender %s (%s) attached", self.name, source.id, source.kind)
        self._changed()

    def detach(self, source: FrameSource) -> None:
        """Free the sender slot; what the sender counted stays in the stream's totals."""
        if self.source is source:
            self.source = None
            stats = source.stats()
            if stats is not None:
                ended = self._ended_senders.setdefault(source.kind, SenderCounters())
                ended.add(stats.counters)
            log.info("stream %s: sender %s detached", self.name, source.id)
            self._changed()

    def sender_totals(self) -> dict[str, SenderCounters]:
        """Per kind of sender, what every sender the stream had counted (for metrics)."""
        totals = {kind: replace(ended) for kind, ended in self._ended_senders.items()}
        source = self.source
        if source is not None and (stats := source.stats()) is not None:
            totals.setdefault(source.kind, SenderCounters()).add(stats.counters)
        return totals

    # -- media clock -------------------------------------------------------------
    @property
    def fed_remotely(self) -> bool:
        """Its sender is another node of the cluster (written late in the period)."""
        return self.source is not None and self.source.kind == "cluster"

    def tick(self) -> None:
        """Write this tick's frame. Never blocks; listeners read at their own pace."""
        frame = None
        if self.source is not None:
            try:
                frame = self.source.pull()
            except Exception:
                log.exception("stream %s: sender %s failed", self.name, self.source.id)
                frame = None
        if frame is None:
            frame = SILENCE
            self.frames_silence += 1
        else:
            self.frames_from_sender += 1
        self.ring.write(frame)

    # -- readers -----------------------------------------------------------------
    def end_packet_ring(self, ring: Ring[Any]) -> None:
        """A shared encoder stopped: keep what its packet ring's readers skipped."""
        for kind, n in ring.skipped_by_kind().items():
            self._ended_skips[kind] = self._ended_skips.get(kind, 0) + n

    def skipped_by_kind(self) -> dict[str, int]:
        """Frames (packets, for readers of a shared encoder) slow readers lost, by reader
        kind, over the stream's life."""
        skipped = dict(self._ended_skips)
        for ring in (self.ring, *(encoder.packets for encoder in list(self.egress.values()))):
            for kind, n in ring.skipped_by_kind().items():
                skipped[kind] = skipped.get(kind, 0) + n
        return skipped

    def readers_behind(self, ignore: Collection[object] = ()) -> int:
        """Readers of the frames, or of a shared encoder's packets, that have not read the
        newest one (what a stepped test clock waits for)."""
        rings = [self.ring, *(encoder.packets for encoder in self.egress.values())]
        return sum(ring.behind(ignore) for ring in rings)

    @property
    def idle(self) -> bool:
        return self.source is None and not self.outputs and self.ring.readers == 0

    def close(self) -> None:
        self.ring.close()

    def info(self) -> StreamInfo:
        return StreamInfo(
            name=self.name,
            sender=self.source.info() if self.source else None,
            listeners=len(self.outputs),
            listeners_by_kind=self.outputs.count_by_kind(),
            frames_written=self.ring.head,
            frames_from_sender=self.frames_from_sender,
            frames_silence=self.frames_silence,
            duration_s=round(self.ring.head * FRAME_SAMPLES / 48000, 2),
            encoders=[enc.info() for enc in self.egress.values()],
            analysis=self.analysis.snapshot() if self.analysis is not None else None,
            persistent=self.persistent,
        )
