"""Recording as an egress: a stream's frames (or its shared Opus packets) into files.

The recorder reads the ring with its own cursor like any listener and hands one second
at a time to a worker thread, which appends it and makes the file valid on disk again
(WAV header sizes rewritten, Ogg page closed). So a crash loses at most the last
``flush_interval_s``, and a full or unwritable disk stops this recording with an event,
never the forwarding.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs.resample import Resampler
from ..codecs.spec import OPUS
from ..core.audio import FRAME_MS, SAMPLE_RATE, SILENCE
from ..core.events import EventBus
from ..core.ring import RingClosed
from ..core.stream import Stream
from ..recording.ogg import OggOpusWriter
from ..recording.store import RecordingError, RecordingStore
from ..recording.wav import WavWriter
from .encoders import shared_encoder

log = logging.getLogger(__name__)


class Recorder:
    """One recording of one stream, in segments of ``segment_s``."""

    kind = "recording"

    def __init__(self, stream: Stream, store: RecordingStore, events: EventBus,
                 fmt: str = "wav", sample_rate: int = SAMPLE_RATE, segment_s: float = 3600.0,
                 record_gaps: bool = True, flush_interval_s: float = 1.0, fsync: bool = False,
                 opus_bitrate: int = 64000) -> None:
        self.id = secrets.token_urlsafe(8)
        self.stream = stream
        self.store = store
        self.events = events
        self.format = fmt
        self.sample_rate = sample_rate if fmt == "wav" else SAMPLE_RATE
        self.segment_s = segment_s
        self.record_gaps = record_gaps
        self.frames_per_flush = max(1, round(flush_interval_s * 1000 / FRAME_MS))
        self.fsync = fsync
        self.opus_bitrate = opus_bitrate
        self.state = "starting"
        self.error: str | None = None
        self.started = time.time()
        self.frames = 0  # 20 ms frames (or Opus packets) written
        self.gap_frames = 0  # sender-less frames left out (record_gaps = false)
        self.path: Path | None = None  # the segment being written
        self.files: list[Path] = []  # finished segments
        self._writer: WavWriter | OggOpusWriter | None = None
        self._segment_frames = 0
        self._resampler = Resampler(SAMPLE_RATE, self.sample_rate) if (
            self.sample_rate != SAMPLE_RATE) else None
        self._task: asyncio.Task[None] | None = None
        #: Told once when the recording is stopped (the manager forgets it then).
        self.on_close: Callable[[Recorder, str], None] | None = None
        self._reader: Any = None
        self._encoder: Any = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Open the first file (a failure here raises), then record in the background."""
        if self.format == "opus":
            self._encoder = shared_encoder(self.stream, OPUS, self.opus_bitrate, 20)
            self._reader = self._encoder.subscribe()
        else:
            self._reader = self.stream.ring.reader()
        try:
            await asyncio.to_thread(self._open_segment, time.time())
        except (OSError, RecordingError):
            self._release_reader()
            raise
        self.state = "recording"
        self.stream.add_listener(self)  # type: ignore[arg-type]
        self._task = asyncio.create_task(self._run(), name=f"record-{self.stream.name}")
        log.info("recording %s of stream %s started: %s", self.id, self.stream.name, self.path)

    async def close(self, reason: str = "stopped") -> None:
        """Stop and finalize: the rest is flushed, the file renamed to its final name."""
        was = self.state
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close(self, reason)
        if was == "recording":
            log.info("recording %s of stream %s stopped (%s): %.1f s", self.id,
                     self.stream.name, reason, self.frames * FRAME_MS / 1000)

    # -- the egress loop -------------------------------------------------------------
    async def _run(self) -> None:
        pending: list[Any] = []
        try:
            while True:
                try:
                    _, item = await self._reader.read()
                except RingClosed:
                    break
                if self.format == "wav":
                    if item is SILENCE and not self.record_gaps:
                        self.gap_frames += 1
                        continue
                    pending.append(item)
                else:  # Opus packets: a gap is a packet made while nobody sent
                    if self.stream.source is None and not self.record_gaps:
                        self.gap_frames += 1
                        continue
                    pending.append(item.payload)
                if len(pending) >= self.frames_per_flush:
                    chunk, pending = pending, []
                    await asyncio.to_thread(self._write, chunk)
        except asyncio.CancelledError:
            await self._finish(pending)
            raise
        except (OSError, RecordingError) as exc:
            self._fail(exc)
            return
        await self._finish(pending)

    async def _finish(self, pending: list[Any]) -> None:
        try:
            await asyncio.to_thread(self._write, pending, True)
        except (OSError, RecordingError) as exc:
            self._fail(exc)
        finally:
            self._release_reader()
            self.stream.remove_listener(self)  # type: ignore[arg-type]
            if self.state == "recording":
                self.state = "stopped"

    def _fail(self, exc: OSError | RecordingError) -> None:
        self.state = "failed"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.error = f"{reason} ({self.path})"
        log.error("recording %s of stream %s failed: %s; forwarding continues",
                  self.id, self.stream.name, self.error)
        self.events.publish("recording_failed", self.stream.name, recording=self.id,
                            error=self.error)
        try:
            if self._writer is not None:
                self._writer.close()
        except (OSError, RecordingError):
            pass
        self._release_reader()
        self.stream.remove_listener(self)  # type: ignore[arg-type]

    def _release_reader(self) -> None:
        if self._reader is None:
            return
        if self._encoder is not None:
            self._encoder.unsubscribe(self._reader)
        else:
            self._reader.close()
        self._reader = None

    # -- the writer thread (blocking file I/O, never on the event loop) -----------------
    def _open_segment(self, started: float) -> None:
        self.path = self.store.new_path(self.stream.name, self.format, started)
        if self.format == "wav":
            self._writer = WavWriter(self.path, self.sample_rate, fsync=self.fsync)
        else:
            self._writer = OggOpusWriter(self.path, fsync=self.fsync)
        self._segment_frames = 0

    def _write(self, chunk: list[Any], final: bool = False) -> None:
        writer = self._writer
        if writer is None:
            return
        if chunk:
            if isinstance(writer, WavWriter):
                pcm = np.concatenate(chunk)
                if self._resampler is not None:
                    pcm = self._resampler.process(pcm)
                writer.write(pcm)
            else:
                for packet in chunk:
                    writer.write_packet(packet)
            self.frames += len(chunk)
            self._segment_frames += len(chunk)
        if final:
            writer.close()
            self._writer = None
            self._finalize_segment()
            return
        writer.flush()
        if self._segment_frames * FRAME_MS / 1000 >= self.segment_s:
            writer.close()
            self._finalize_segment()
            self._open_segment(time.time())

    def _finalize_segment(self) -> None:
        if self.path is not None:
            self.files.append(self.store.finish(self.path))
            self.path = None

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "recording",
            "stream": self.stream.name,
            "state": self.state,
            "error": self.error,
            "format": self.format,
            "sample_rate": self.sample_rate,
            "duration_s": round(self.frames * FRAME_MS / 1000, 2),
            "gap_frames": self.gap_frames,
            "skipped_frames": getattr(self._reader, "skipped", 0),
            "file": self.path.name if self.path else None,
            "files": [p.name for p in self.files],
            "since": self.started,
        }
