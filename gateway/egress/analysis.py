"""Live processing as an egress: analysers and user plug-ins on every stream's frames.

The media clock hands the frames to them directly after each tick (no task, no ring
reader, no wake-up per stream): the analysers of every stream with a sender run as one
batch (``AnalysisBank``: their state in rows of arrays, one compiled kernel call for all
of them), and plug-ins get the
frame in their worker thread's queue (never waited for: a slow plug-in drops frames,
counted). A stream without a sender is analysed frame by frame only for
``SETTLE_FRAMES`` after its last sender frame; after that it is *idle* and costs nothing:
its silence is added at once (exactly) when it is next asked for a snapshot, gains a
sender, or its silence alarm falls due. Events go to the event bus; snapshots to the
stream's API view.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import ConfigError, ProcessingConfig
from ..core.audio import FRAME_SECONDS
from ..core.events import EventBus
from ..core.registry import StreamRegistry
from ..core.stream import Stream
from ..models.info import AnalysisInfo, PluginInfo, PluginsAnalysis
from ..processing.analyzer import SETTLE_FRAMES, AnalyzerConfig, StreamAnalyzer, bank_for
from ..processing.levels import FLOOR_DBFS
from ..processing.plugins import PluginError, PluginRunner, load_processor, resolve

log = logging.getLogger(__name__)

#: Plug-in results are collected (and plug-in failures noticed) this often, in frames.
COLLECT_EVERY = 5


class StreamProcessing:
    """The analysers and plug-ins of one stream, fed by ``Processing`` on each tick."""

    def __init__(self, stream: Stream, analyzer: StreamAnalyzer | None,
                 runners: list[PluginRunner], events: EventBus,
                 leads: Callable[[Stream], bool] = lambda stream: True) -> None:
        self.stream = stream
        self.leads = leads  # in a cluster, one node raises a stream's alarms
        self.analyzer = analyzer
        self.runners = runners
        self.events = events
        #: Frames the analysers never saw while analysing frame by frame: media time the
        #: clock jumped over after a stall.
        self.skipped = 0
        self._reported: set[int] = set()
        last = stream.ring.head - 1
        self.analysed_to = last  # the analysers' state is as of this frame
        self.submitted_to = last  # the plug-ins' last frame
        self.fed_at = last - SETTLE_FRAMES - 1  # the last frame written with a sender
        self.idle = True  # no sender for SETTLE_FRAMES: analysed at once, when needed
        self.stopped = False

    def publish(self, events: list[dict[str, Any]]) -> None:
        if events and self.leads(self.stream):
            for event in events:
                kind = event.pop("type")
                self.events.publish(kind, self.stream.name, **event)

    def switch_off(self, exc: BaseException) -> None:
        log.error("stream %s: analysers failed; switched off", self.stream.name,
                  exc_info=exc)
        self.drop_analyzer()

    def drop_analyzer(self) -> None:
        """No analysers any more (their bank row, if any, is given back)."""
        analyzer, self.analyzer = self.analyzer, None
        if analyzer is not None:
            analyzer.discard()

    def release_row(self) -> bool:
        """Move the analysers' state out of the bank into their objects (a stream that
        falls idle or stops); False if that failed and they were switched off."""
        if self.analyzer is None:
            return True
        try:
            self.analyzer.release()
        except Exception as exc:
            self.switch_off(exc)
            return False
        return True

    def catch_up(self, last: int | None = None) -> None:
        """An idle stream's silence up to frame ``last`` (its newest), added at once."""
        if last is None:
            last = self.stream.ring.head - 1
        if self.analyzer is None or not self.idle or last <= self.analysed_to:
            return
        try:
            events = self.analyzer.add_silence(self.analysed_to + 1, last)
        except Exception as exc:
            self.switch_off(exc)
            return
        self.analysed_to = last
        self.publish(events)

    def silence_due(self) -> int | None:
        """The frame at which an idle stream's silence alarm will be raised, if it will."""
        if self.analyzer is None:
            return None
        self.analyzer.sync()
        return self.analyzer.silence.due(self.analysed_to, FLOOR_DBFS)

    def feed_plugins(self) -> None:
        stream = self.stream
        index = stream.ring.head - 1
        if index <= self.submitted_to:
            return
        self.submitted_to = index
        frame = stream.ring.get(index)
        timestamp = stream.created + index * FRAME_SECONDS
        for runner in self.runners:
            runner.submit(index, timestamp, frame)
        if index % COLLECT_EVERY == 0:
            self._collect()

    def _collect(self) -> None:
        for runner in self.runners:
            for event in runner.take_events():
                self.events.publish("plugin_result", self.stream.name, plugin=runner.name,
                                    frame=event.get("frame"), timestamp=event.get("timestamp"),
                                    result=event.get("result"))
            if runner.state == "failed" and id(runner) not in self._reported:
                self._reported.add(id(runner))  # the runner logged it, with the traceback
                self.events.publish("plugin_failed", self.stream.name, plugin=runner.name,
                                    error=runner.error)

    def stop(self) -> None:
        self.stopped = True
        self.release_row()
        for runner in self.runners:
            runner.stop(timeout=0)  # only signals: a stuck plug-in must not hold the loop

    def snapshot(self) -> AnalysisInfo | PluginsAnalysis:
        plugins = [PluginInfo(**runner.snapshot()) for runner in self.runners]
        if self.analyzer is None:
            return PluginsAnalysis(skipped_frames=self.skipped, plugins=plugins)
        self.catch_up()
        return AnalysisInfo(**self.analyzer.snapshot(), skipped_frames=self.skipped,
                            plugins=plugins)


class Processing:
    """Starts a StreamProcessing for every stream as it appears."""

    def __init__(self, config: ProcessingConfig, registry: StreamRegistry,
                 events: EventBus) -> None:
        self.config = config
        self.registry = registry
        self.events = events
        self.streams: dict[str, StreamProcessing] = {}
        #: Whether this node raises a stream's analyser events (alarms, voice): always on a
        #: single gateway; in a cluster, the node of its sender (see Gateway).
        self.leads: Callable[[Stream], bool] = lambda stream: True
        self.analyzer_config = AnalyzerConfig(
            silence_threshold_dbfs=config.silence_threshold_dbfs,
            silence_after_s=config.silence_after_s,
        )
        self._awake: dict[StreamProcessing, None] = {}  # analysed frame by frame (ordered)
        self._plugged: dict[StreamProcessing, None] = {}  # with plug-ins: every frame
        self._due: list[tuple[int, int, StreamProcessing]] = []  # (media frame, seq, stream)
        self._seq = itertools.count()
        #: The state of the streams analysed frame by frame (``_awake``).
        self.bank = bank_for(self.analyzer_config)

    def check(self) -> None:
        """Every configured plug-in class can be imported (else the gateway does not start)."""
        for i, entry in enumerate(self.config.plugins):
            try:
                resolve(entry.processor)
            except PluginError as exc:
                raise ConfigError(f"processing.plugins[{i}].processor: {exc}") from None

    def start(self) -> None:
        self.registry.on_created.append(self._attach)
        self.registry.on_removed.append(self._detach)  # declared streams: at registry.start
        self.registry.on_tick.append(self._on_tick)

    def stop(self) -> None:
        for processing in self.streams.values():
            processing.stop()
        self.streams.clear()
        self._awake.clear()
        self._plugged.clear()
        self._due.clear()

    # -- the media clock's hand-off ----------------------------------------------------
    def _on_tick(self, fed: list[Stream]) -> None:
        """After each tick: the new frame of every stream with a sender, and of those
        still settling after losing theirs, through the analysers as one batch; every
        plug-in stream's frame to its plug-ins; idle streams whose alarm falls due."""
        for stream in fed:
            sp = stream.analysis
            if isinstance(sp, StreamProcessing) and sp.analyzer is not None:
                if sp.idle:
                    sp.catch_up(stream.ring.head - 2)  # the silence before this frame
                    sp.idle = False
                    self._awake[sp] = None
                sp.fed_at = stream.ring.head - 1
        items: list[tuple[StreamAnalyzer, int, np.ndarray]] = []
        owners: list[StreamProcessing] = []
        for sp in list(self._awake):
            stream = sp.stream
            index = stream.ring.head - 1
            if sp.analyzer is None:  # switched off after a failure
                del self._awake[sp]
                continue
            if index <= sp.analysed_to:
                continue  # not written in this phase
            if sp.analysed_to - sp.fed_at >= SETTLE_FRAMES:  # that much silence analysed
                self._fall_idle(sp)
                continue
            if index > sp.analysed_to + 1:
                sp.skipped += index - sp.analysed_to - 1
            sp.analysed_to = index
            items.append((sp.analyzer, index, stream.ring.get(index)))
            owners.append(sp)
        if items:
            self._analyse(items, owners)
        for sp in list(self._plugged):
            sp.feed_plugins()
        now = self.registry.media_frames
        while self._due and self._due[0][0] <= now:
            _, _, sp = heapq.heappop(self._due)
            if not sp.stopped and sp.idle:
                sp.catch_up()

    def _analyse(self, items: list[tuple[StreamAnalyzer, int, np.ndarray]],
                 owners: list[StreamProcessing]) -> None:
        def failed(i: int, exc: Exception) -> None:
            owners[i].switch_off(exc)

        try:
            results = self.bank.analyse(items, failed)
        except Exception as exc:  # in the arithmetic shared by all: none can go on
            for sp in owners:
                sp.switch_off(exc)
            return
        for sp, events in zip(owners, results, strict=True):
            if events:
                sp.publish(events)

    def _fall_idle(self, sp: StreamProcessing) -> None:
        """No sender for SETTLE_FRAMES: stop analysing frame by frame; come back when
        its silence alarm is due."""
        del self._awake[sp]
        sp.idle = True
        if sp.release_row():
            self._schedule_due(sp)

    def _schedule_due(self, sp: StreamProcessing) -> None:
        due = sp.silence_due()
        if due is not None:  # on the registry's media time, which clock jumps move too
            at = self.registry.media_frames + max(0, due - (sp.stream.ring.head - 1))
            heapq.heappush(self._due, (at, next(self._seq), sp))

    def _attach(self, stream: Stream) -> None:
        if stream.name in self.streams:
            return
        runners = []
        for entry in self.config.plugins:
            if not fnmatch.fnmatchcase(stream.name, entry.stream):
                continue
            try:
                processor = load_processor(entry.processor, stream.name, entry.options)
            except PluginError as exc:
                log.error("stream %s: %s", stream.name, exc)
                self.events.publish("plugin_failed", stream.name, plugin=entry.processor,
                                    error=str(exc))
                continue
            runners.append(PluginRunner(processor, name=entry.processor,
                                        stream=stream.name).start())
        analyzer = StreamAnalyzer(self.analyzer_config) if self.config.analysers else None
        if analyzer is None and not runners:
            return
        processing = StreamProcessing(stream, analyzer, runners, self.events,
                                      lambda s: self.leads(s))
        self.streams[stream.name] = processing
        stream.analysis = processing
        if runners:
            self._plugged[processing] = None
        self._schedule_due(processing)  # idle from the start

    def _detach(self, stream: Stream) -> None:
        processing = self.streams.pop(stream.name, None)
        if processing is not None:
            processing.stop()
            self._awake.pop(processing, None)
            self._plugged.pop(processing, None)
