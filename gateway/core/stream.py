"""A named live stream: one ring of canonical frames, one sender slot, many listeners."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np

from .audio import FRAME_SAMPLES, SILENCE
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

    def info(self) -> dict[str, Any]: ...


class Listener(Protocol):
    """An egress session, registered so it can be listed and stopped."""

    kind: str
    id: str

    def info(self) -> dict[str, Any]: ...

    async def close(self, reason: str = "") -> None: ...


class Stream:
    """Frames enter through ``tick()`` (driven by the media clock) and leave through the ring.

    Every tick writes exactly one frame: the sender's frame, or silence while the sender
    is absent or late, so frame index n always means time n * 20 ms on the stream.
    """

    def __init__(self, name: str, ring_frames: int, persistent: bool = False) -> None:
        self.name = name
        self.ring: Ring[np.ndarray] = Ring(ring_frames)
        self.persistent = persistent  # declared in configuration: never reaped when idle
        self.source: FrameSource | None = None
        self.listeners: dict[str, Listener] = {}
        self.egress: dict[Any, Any] = {}  # shared encoders by key; owned by egress.encoders
        self.analysis: Any = None  # levels, loudness, plug-ins; owned by egress.analysis
        self.created = time.time()
        self.idle_since: float | None = time.monotonic()
        self.frames_from_sender = 0
        self.frames_silence = 0
        self.senders_total = 0

    # -- sender slot -------------------------------------------------------------
    def attach(self, source: FrameSource) -> None:
        if self.source is not None:
            raise StreamBusy(f"stream {self.name!r} already has a sender ({self.source.id})")
        self.source = source
        self.senders_total += 1
        log.info("stream %s: sender %s (%s) attached", self.name, source.id, source.kind)

    def detach(self, source: FrameSource) -> None:
        if self.source is source:
            self.source = None
            log.info("stream %s: sender %s detached", self.name, source.id)

    # -- media clock -------------------------------------------------------------
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

    # -- listeners ---------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self.listeners[listener.id] = listener

    def remove_listener(self, listener: Listener) -> None:
        self.listeners.pop(listener.id, None)

    @property
    def idle(self) -> bool:
        return self.source is None and not self.listeners and self.ring.readers == 0

    def close(self) -> None:
        self.ring.close()

    def info(self) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for listener in self.listeners.values():
            by_kind[listener.kind] = by_kind.get(listener.kind, 0) + 1
        return {
            "name": self.name,
            "sender": self.source.info() if self.source else None,
            "listeners": len(self.listeners),
            "listeners_by_kind": by_kind,
            "frames_written": self.ring.head,
            "frames_from_sender": self.frames_from_sender,
            "frames_silence": self.frames_silence,
            "duration_s": round(self.ring.head * FRAME_SAMPLES / 48000, 2),
            "encoders": [enc.info() for enc in self.egress.values()],
            "analysis": self.analysis.snapshot() if self.analysis is not None else None,
            "persistent": self.persistent,
        }
