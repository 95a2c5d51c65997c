"""The registry of live streams and the media clock that drives them all."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from .audio import FRAME_SECONDS
from .stream import Stream

log = logging.getLogger(__name__)

STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,63}$")
#: If the event loop stalls longer than this, the clock jumps instead of bursting frames.
MAX_CATCH_UP_FRAMES = 10


class UnknownStream(KeyError):
    """No stream by that name, and dynamic streams are not allowed."""


def check_stream_name(name: str) -> str:
    if not STREAM_NAME.match(name):
        raise ValueError(
            f"invalid stream name {name!r}: use 1-64 of A-Z a-z 0-9 . _ ~ -, "
            "starting with a letter or digit"
        )
    return name


class StreamRegistry:
    """Owns every stream; one clock task ticks all of them every 20 ms."""

    def __init__(
        self,
        ring_frames: int = 50,
        allow_dynamic: bool = True,
        idle_timeout: float = 60.0,
        declared: tuple[str, ...] = (),
    ) -> None:
        self.ring_frames = ring_frames
        self.allow_dynamic = allow_dynamic
        self.idle_timeout = idle_timeout
        self.streams: dict[str, Stream] = {}
        self.clock_late_ticks = 0  # ticks skipped because the loop stalled
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None
        #: Called with each stream as it is created or removed (analysers, auto-recording).
        self.on_created: list[Callable[[Stream], None]] = []
        self.on_removed: list[Callable[[Stream], None]] = []
        for name in declared:
            self.streams[name] = Stream(check_stream_name(name), ring_frames, persistent=True)

    def get(self, name: str) -> Stream:
        try:
            return self.streams[name]
        except KeyError:
            raise UnknownStream(name) from None

    def get_or_create(self, name: str) -> Stream:
        stream = self.streams.get(name)
        if stream is None:
            if not self.allow_dynamic:
                raise UnknownStream(name)
            stream = Stream(check_stream_name(name), self.ring_frames)
            self.streams[name] = stream
            log.info("stream %s created", name)
            self._notify(self.on_created, stream)
        return stream

    def _notify(self, hooks: list[Callable[[Stream], None]], stream: Stream) -> None:
        for hook in hooks:
            try:
                hook(stream)
            except Exception:
                log.exception("stream %s: hook %r failed", stream.name, hook)

    # -- clock -------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock; hooks hear about the declared streams now."""
        for stream in list(self.streams.values()):
            if stream.persistent:
                self._notify(self.on_created, stream)
        if self._task is None:
            self._task = asyncio.create_task(self._run_clock(), name="media-clock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for stream in self.streams.values():
            stream.close()

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            behind = int((loop.time() - deadline) / FRAME_SECONDS)
            if behind > MAX_CATCH_UP_FRAMES:
                self.clock_late_ticks += behind
                log.warning("media clock %d ticks late; jumping ahead", behind)
                deadline += behind * FRAME_SECONDS
            for stream in list(self.streams.values()):
                stream.tick()
            self.ticks += 1
            if self.ticks % 50 == 0:
                self._reap_idle()
            deadline += FRAME_SECONDS
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    def _reap_idle(self) -> None:
        now = time.monotonic()
        for name, stream in list(self.streams.items()):
            if stream.persistent or not stream.idle:
                stream.idle_since = None
                continue
            if stream.idle_since is None:
                stream.idle_since = now
            elif now - stream.idle_since > self.idle_timeout:
                log.info("stream %s removed after %.0f s idle", name, self.idle_timeout)
                del self.streams[name]
                self._notify(self.on_removed, stream)
                stream.close()
