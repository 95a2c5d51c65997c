"""Every recording of the gateway: started by the API or the config, listed, retained.

File work (recovery after a crash, listing, retention) runs in threads; the event loop
only starts and stops recorders.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..config import AutoRecording, RecordingConfig
from ..core.events import EventBus
from ..core.registry import StreamRegistry
from ..core.stream import Stream
from ..recording.errors import RecordingError
from ..recording.store import RecordingStore
from .recorder import Recorder

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 60.0


class Recordings:
    def __init__(self, config: RecordingConfig, registry: StreamRegistry, events: EventBus,
                 opus_bitrate: int = 64000) -> None:
        self.config = config
        self.registry = registry
        self.events = events
        self.opus_bitrate = opus_bitrate
        self.store = RecordingStore(
            Path(config.directory),
            max_age_s=config.max_age_days * 86400 or None,
            max_total_bytes=int(config.max_total_mb * 1e6) or None,
        )
        self.active: dict[str, Recorder] = {}
        self.recovered: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Ends every recorder id (".<node>" in a cluster: any node can tell where it is).
        self.id_suffix = ""
        #: In a cluster: runs an automatic recording on one node only (ClusterNode.once).
        self.once: Callable[[str, Callable[[], Awaitable[Any]],
                             Callable[[], Awaitable[Any]]], None] | None = None

    async def start(self) -> None:
        """Repair what a crash left behind, then start the configured automatic recordings."""
        try:
            self.recovered = await asyncio.to_thread(self.store.recover)
        except OSError as exc:
            log.error("recordings directory %s: %s", self.config.directory, exc)
        for item in self.recovered:
            if item["broken"]:
                log.error("recording %s cannot be repaired (%s): kept as it is",
                          item["path"], item["error"])
            elif not item["recovered"]:
                log.error("recording %s is left unfinished: %s", item["path"], item["error"])
            else:
                log.warning("recording recovered after an interrupted run: %s (%.1f s)",
                            item["path"], item["duration_s"])
        self.registry.on_created.append(self._auto)  # declared streams: at registry.start
        self._spawn(self._retain())

    async def stop(self) -> None:
        """Finalize every recording (shutdown)."""
        await asyncio.gather(*(r.close("gateway shutting down")
                               for r in list(self.active.values())))
        for task in list(self._tasks):
            task.cancel()

    async def record(self, stream: Stream, fmt: str | None = None,
                     sample_rate: int | None = None) -> Recorder:
        recorder = Recorder(
            stream, self.store, self.events, fmt or self.config.format,
            sample_rate or self.config.sample_rate, self.config.segment_s,
            self.config.record_gaps, self.config.flush_interval_s, self.config.fsync,
            self.opus_bitrate,
        )
        recorder.id += self.id_suffix
        await recorder.start()
        recorder.on_close = self._closed
        self.active[recorder.id] = recorder
        self.events.publish("recording_started", stream.name, recording=recorder.id)
        return recorder

    def _closed(self, recorder: Recorder, reason: str) -> None:
        """Every way a recording is stopped (API DELETE, listener close, shutdown) ends here."""
        self.active.pop(recorder.id, None)
        self.events.publish("recording_stopped", recorder.stream.name, recording=recorder.id,
                            reason=reason)

    async def delete(self, recording_id: str) -> None:
        """Remove a finished or unfinished recording (KeyError: unknown; RecordingError:
        being recorded)."""
        await asyncio.to_thread(self.store.delete, recording_id)

    def find(self, recorder_id: str) -> Recorder | None:
        return self.active.get(recorder_id)

    async def list(self) -> list[dict[str, Any]]:
        if not self.store.directory.is_dir():  # made by the first recording
            return []
        return await asyncio.to_thread(self.store.list)

    def _auto(self, stream: Stream) -> None:
        if any(r.stream is stream and r.state == "recording" for r in self.active.values()):
            return
        for entry in self.config.auto:
            if fnmatch.fnmatchcase(stream.name, entry.stream):
                if self.once is None:
                    self._spawn(self._auto_record(stream, entry))
                else:
                    self.once(f"record.{stream.name}",
                              lambda entry=entry: self._auto_record(stream, entry),
                              lambda: self._stop_auto(stream))
                return

    async def _auto_record(self, stream: Stream, entry: AutoRecording) -> None:
        try:
            await self.record(stream, entry.format, entry.sample_rate)
        except (OSError, RecordingError) as exc:
            log.error("automatic recording of %s failed to start: %s", stream.name, exc)
            self.events.publish("recording_failed", stream.name, error=str(exc))

    async def _stop_auto(self, stream: Stream) -> None:
        """Another node records this stream now (this one lost the job's lease)."""
        for recorder in list(self.active.values()):
            if recorder.stream is stream:
                await recorder.close("recorded by another node of the cluster")

    async def _retain(self) -> None:
        while True:
            try:
                deleted = []
                if self.store.directory.is_dir():  # made by the first recording
                    deleted = await asyncio.to_thread(self.store.enforce_retention, time.time())
                for path in deleted:
                    log.info("recording %s deleted by retention", path)
            except OSError as exc:
                log.warning("recording retention: %s", exc)
            await asyncio.sleep(RETENTION_EVERY_S)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
