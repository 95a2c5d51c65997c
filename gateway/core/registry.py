"""The registry of live streams and the media clock that drives them all."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection

from .audio import SILENCE
from .clock import MediaClock, Phase, RealTimeClock
from .counters import GatewayCounters
from .stream import Stream

log = logging.getLogger(__name__)

STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,63}$")


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
    """Owns every stream; one clock task ticks all of them every 20 ms (of ``clock``)."""

    def __init__(
        self,
        ring_frames: int = 50,
        allow_dynamic: bool = True,
        idle_timeout: float = 60.0,
        declared: tuple[str, ...] = (),
        clock: MediaClock | None = None,
    ) -> None:
        self.ring_frames = ring_frames
        self.allow_dynamic = allow_dynamic
        self.idle_timeout = idle_timeout
        self.clock: MediaClock = clock if clock is not None else RealTimeClock()
        self.streams: dict[str, Stream] = {}
        self.counters = GatewayCounters()  # this gateway's, shared by its streams
        self.ticks = 0
        self.skipped_frames = 0  # by clock jumps after stalls
        self._task: asyncio.Task[None] | None = None
        #: Called with each stream as it is created or removed (analysers, auto-recording).
        self.on_created: list[Callable[[Stream], None]] = []
        self.on_removed: list[Callable[[Stream], None]] = []
        #: Called after each tick (each phase of a period) with the streams it wrote that
        #: have a sender: the media clock hands their frames to consumers directly
        #: (the analysers), without a task waking per stream.
        self.on_tick: list[Callable[[list[Stream]], None]] = []
        for name in declared:
            self.streams[name] = Stream(check_stream_name(name), ring_frames, persistent=True,
                                       counters=self.counters)

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
            stream = Stream(check_stream_name(name), self.ring_frames, counters=self.counters)
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
            self._task = asyncio.create_task(self.clock.run(self), name="media-clock")

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

    @property
    def running(self) -> bool:
        """The media clock is ticking (started, not stopped, not crashed)."""
        return self._task is not None and not self._task.done()

    @property
    def clock_late_ticks(self) -> int:
        """Ticks skipped because the event loop stalled."""
        return self.clock.late_ticks

    def tick(self, phase: Phase = Phase.ALL) -> None:
        """One frame on every stream (the clock calls this every 20 ms of media time):
        at Phase.LOCAL the streams not fed by another node, at Phase.REMOTE the rest. A
        stream whose sender changes between the two is still written once a period."""
        if phase is not Phase.REMOTE:
            self.ticks += 1
        period = self.ticks
        fed = []
        for stream in list(self.streams.values()):
            if stream.written_in == period or (phase is Phase.LOCAL and stream.fed_remotely):
                continue
            stream.written_in = period
            if stream.source is not None:
                fed.append(stream)
            stream.tick()
        for hook in self.on_tick:
            try:
                hook(fed)
            except Exception:
                log.exception("media clock: tick hook %r failed", hook)
        if phase is not Phase.REMOTE and self.ticks % 50 == 0:
            self._reap_idle()

    def skip(self, frames: int) -> None:
        """The clock jumped ``frames`` ticks after a stall: every stream's timeline jumps
        with it (silence, not delivered), so RTP timestamps keep following real time and
        listeners are not left ``frames`` × 20 ms late for good."""
        self.skipped_frames += frames
        for stream in list(self.streams.values()):
            stream.ring.advance(frames, SILENCE)

    @property
    def media_frames(self) -> int:
        """Media time in frames since start: ticks plus the frames clock jumps skipped
        (every stream's frame index moves with it)."""
        return self.ticks + self.skipped_frames

    def behind(self, ignore: Collection[object] = ()) -> list[str]:
        """Streams with a reader that has not read the newest frame or packet yet."""
        return [name for name, stream in self.streams.items()
                if stream.readers_behind(ignore)]

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
                self._remove(stream)

    def discard_if_idle(self, stream: Stream) -> None:
        """Remove ``stream`` now if nothing uses it: the session that created it failed,
        and offers that fail must not leave streams behind until the idle timeout."""
        if not stream.persistent and stream.idle and self.streams.get(stream.name) is stream:
            self._remove(stream)

    def _remove(self, stream: Stream) -> None:
        del self.streams[stream.name]
        self._notify(self.on_removed, stream)
        stream.close()
