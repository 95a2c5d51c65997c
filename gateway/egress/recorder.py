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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.ids import new_id

from ..codecs.resample import Resampler
from ..codecs.spec import OPUS
from ..core.audio import FRAME_MS, SAMPLE_RATE, SILENCE
from ..core.counters import OutputCounters
from ..core.events import EventBus
from ..core.ring import RingClosed
from ..core.stream import Stream
from ..models.info import RecorderInfo
from ..recording.errors import RecordingError
from ..recording.ogg import OggOpusWriter
from ..recording.store import RecordingStore
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
        self.id = new_id(8)
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
        self._skipped_before = 0  # what its released ring reader skipped

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Open the first file (a failure here raises), then record in the background."""
        if self.format == "opus":
            self._encoder = shared_encoder(self.stream, OPUS, self.opus_bitrate, 20)
            self._reader = self._encoder.subscribe(kind="recording")
        else:
            self._reader = self.stream.ring.reader(kind="recording")
        try:
            await asyncio.to_thread(self._open_segment, time.time())
        except (OSError, RecordingError):
            self._release_reader()
            raise
        self.state = "recording"
        self.stream.outputs.add(self)  # until closed: a failed one stays listed
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
        self.stream.outputs.remove(self)
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close(self, reason)
        if was == "recording":
            log.info("recording %s of stream %s stopped (%s): %.1f s", self.id,
                     self.stream.name, reason, self.frames * FRAME_MS / 1000)

    # -- the egress loop -------------------------------------------------------------
    async def _run(self) -> None:
        pending: list[Any] = []
        flushing: asyncio.Future[None] | None = None
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
                    # shielded: a stop during the write waits for it below (a thread
                    # cannot be cancelled, and the final write must come after it)
                    flushing = asyncio.ensure_future(asyncio.to_thread(self._write, chunk))
                    await asyncio.shield(flushing)
        except asyncio.CancelledError:
            if await self._flushed(flushing):
                await self._finish(pending)
            raise
        except (OSError, RecordingError) as exc:
            self._fail(exc)
            return
        await self._finish(pending)

    async def _flushed(self, flushing: asyncio.Future[None] | None) -> bool:
        """Wait for a flush still in its thread; False if it failed (recording failed)."""
        if flushing is None:
            return True
        try:
            await flushing
        except (OSError, RecordingError) as exc:
            self._fail(exc)
            return False
        return True

    async def _finish(self, pending: list[Any]) -> None:
        try:
            await asyncio.to_thread(self._write, pending, True)
        except (OSError, RecordingError) as exc:
            self._fail(exc)
        finally:
            self._release_reader()
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
        if self.path is not None:  # its .part stays, unfinished, for the next start
            self.store.release(self.path, f"recording failed: {reason}")
        self._release_reader()

    def _release_reader(self) -> None:
        if self._reader is None:
            return
        self._skipped_before = self._reader.skipped
        if self._encoder is not None:
            self._encoder.unsubscribe(self._reader)
        else:
            self._reader.close()
        self._reader = None

    # -- the writer thread (blocking file I/O, never on the event loop) -----------------
    def _open_segment(self, started: float) -> None:
        self.path = self.store.new_path(self.stream.name, self.format, started)
        try:
            if self.format == "wav":
                self._writer = WavWriter(self.path, self.sample_rate, fsync=self.fsync)
            else:
                self._writer = OggOpusWriter(self.path, fsync=self.fsync)
        except BaseException:  # not even the header fits: no file is left behind
            self.store.discard(self.path)
            raise
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

    @property
    def skipped(self) -> int:
        """Frames (Opus packets) lost by reading too slowly."""
        return self._reader.skipped if self._reader is not None else self._skipped_before

    def counters(self) -> OutputCounters:
        """Frames and audio bytes written: bytes exact for WAV (16-bit mono), from the
        bitrate for Opus; one error once the recording failed."""
        if self.format == "wav":
            size = self.frames * round(self.sample_rate * FRAME_MS / 1000) * 2
        else:
            size = self.frames * self.opus_bitrate * FRAME_MS // 8000
        return OutputCounters(self.frames, size, self.skipped, int(self.state == "failed"))

    def info(self) -> RecorderInfo:
        return RecorderInfo(
            id=self.id,
            type="recording",
            stream=self.stream.name,
            state=self.state,
            error=self.error,
            format=self.format,  # type: ignore[arg-type]
            sample_rate=self.sample_rate,
            duration_s=round(self.frames * FRAME_MS / 1000, 2),
            gap_frames=self.gap_frames,
            skipped_frames=self.skipped,
            file=self.path.name if self.path else None,
            files=[p.name for p in self.files],
            since=self.started,
        )
