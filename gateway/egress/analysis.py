"""Live processing as an egress: analysers and user plug-ins on every stream's frames.

Each stream gets one task that reads its ring with a passive cursor (it does not keep an
idle stream alive) and feeds the built-in analysers on the event loop (tens of µs per
frame) and each plug-in's worker thread (never waited for: a slow plug-in drops frames,
counted). Events go to the event bus; snapshots to the stream's API view.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable

from ..config import ConfigError, ProcessingConfig
from ..core.audio import FRAME_SECONDS
from ..core.events import EventBus
from ..core.registry import StreamRegistry
from ..core.ring import RingClosed
from ..core.stream import Stream
from ..models.info import AnalysisInfo, PluginInfo, PluginsAnalysis
from ..processing.analyzer import AnalyzerConfig, StreamAnalyzer
from ..processing.plugins import PluginError, PluginRunner, load_processor, resolve

log = logging.getLogger(__name__)

#: Plug-in results are collected (and plug-in failures noticed) this often, in frames.
COLLECT_EVERY = 5


class StreamProcessing:
    """The analysers and plug-ins of one stream."""

    def __init__(self, stream: Stream, analyzer: StreamAnalyzer | None,
                 runners: list[PluginRunner], events: EventBus,
                 leads: Callable[[Stream], bool] = lambda stream: True) -> None:
        self.stream = stream
        self.leads = leads  # in a cluster, one node raises a stream's alarms
        self.analyzer = analyzer
        self.runners = runners
        self.events = events
        self.skipped = 0
        self._reported: set[int] = set()
        self._reader = stream.ring.reader(passive=True, kind="analysis")
        self._task = asyncio.create_task(self._run(), name=f"analyse-{stream.name}")

    async def _run(self) -> None:
        stream = self.stream
        publish = self.events.publish
        try:
            while True:
                index, frame = await self._reader.read()
                if self.analyzer is not None:
                    try:
                        events = self.analyzer.process(index, frame)
                        if events and self.leads(stream):
                            for event in events:
                                kind = event.pop("type")
                                publish(kind, stream.name, **event)
                    except Exception:
                        log.exception("stream %s: analysers failed; switched off", stream.name)
                        self.analyzer = None
                if self.runners:
                    timestamp = stream.created + index * FRAME_SECONDS
                    for runner in self.runners:
                        runner.submit(index, timestamp, frame)
                    if index % COLLECT_EVERY == 0:
                        self._collect()
        except RingClosed:
            pass

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
        self._task.cancel()
        self._reader.close()
        for runner in self.runners:
            runner.stop(timeout=0)  # only signals: a stuck plug-in must not hold the loop

    def snapshot(self) -> AnalysisInfo | PluginsAnalysis:
        plugins = [PluginInfo(**runner.snapshot()) for runner in self.runners]
        if self.analyzer is None:
            return PluginsAnalysis(skipped_frames=self._reader.skipped, plugins=plugins)
        return AnalysisInfo(**self.analyzer.snapshot(), skipped_frames=self._reader.skipped,
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

    def stop(self) -> None:
        for processing in self.streams.values():
            processing.stop()
        self.streams.clear()

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

    def _detach(self, stream: Stream) -> None:
        processing = self.streams.pop(stream.name, None)
        if processing is not None:
            processing.stop()
