"""Crash-safe 16-bit PCM WAV files: valid on disk after every flush.

A WAV header carries two sizes (RIFF chunk, data chunk) that a naive writer only fills in
at close, so a crash leaves a file most tools reject. :class:`WavWriter` rewrites both
sizes after each flush, and :func:`repair_wav` fixes the one window a crash can still hit
(samples written, header not yet updated) from the file's real size.

Sizes are 32-bit: a file holds at most ``MAX_DATA_BYTES`` of samples, about 12.4 h at
48 kHz mono 16-bit (24.8 h at 24 kHz, 74.6 h at 8 kHz). The writer refuses to go past it,
so callers rotate to a new file before (by duration).

All calls block: use them from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import numpy as np

from .errors import RecordingError

HEADER_SIZE = 44
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
#: The RIFF size field (36 + data bytes) must fit in 32 bits.
MAX_DATA_BYTES = 0xFFFF_FFFF - (HEADER_SIZE - 8)
_PCM = 1
_BITS = 16


def _header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    block_align = channels * _BITS // 8
    return _HEADER.pack(
        b"RIFF", HEADER_SIZE - 8 + data_bytes, b"WAVE",
        b"fmt ", 16, _PCM, channels, sample_rate, sample_rate * block_align, block_align,
        _BITS, b"data", data_bytes,
    )


def _parse_header(header: bytes) -> tuple[int, int, int]:
    """(sample_rate, channels, data bytes per the header) of a header we write; else error."""
    if len(header) < HEADER_SIZE:
        raise RecordingError(f"not a WAV file: only {len(header)} bytes")
    (riff, _, wave, fmt, fmt_size, audio_format, channels, rate, byte_rate, block_align,
     bits, data, data_bytes) = _HEADER.unpack(header[:HEADER_SIZE])
    if (riff, wave, fmt, data) != (b"RIFF", b"WAVE", b"fmt ", b"data") or fmt_size != 16:
        raise RecordingError("not a WAV file written by the gateway (unexpected chunks)")
    if (audio_format != _PCM or bits != _BITS or channels < 1 or rate < 1
            or block_align != channels * 2 or byte_rate != rate * block_align):
        raise RecordingError("not a 16-bit PCM WAV file written by the gateway")
    return rate, channels, data_bytes


def wav_info(path: str | os.PathLike[str], from_size: bool = False) -> tuple[int, int, float]:
    """(sample_rate, channels, duration_s) of a WAV we wrote.

    ``from_size`` measures the samples actually in the file rather than trusting the header:
    for a file still being written, whose header lags behind its data until the next flush.
    """
    with open(path, "rb") as f:
        rate, channels, data_bytes = _parse_header(f.read(HEADER_SIZE))
        if from_size:
            data_bytes = max(0, os.fstat(f.fileno()).st_size - HEADER_SIZE)
    block = channels * 2
    return rate, channels, data_bytes // block / rate


class WavWriter:
    """Appends 16-bit samples; ``flush()`` leaves a complete, valid WAV on disk.

    ``fsync``: a process crash (even ``kill -9``) keeps everything already handed to the
    kernel, which ``flush()`` always does; only a power cut or kernel panic can lose it.
    ``fsync=True`` also forces it to the disk at every flush, at the cost of a disk
    round trip per flush.
    """

    def __init__(self, path: str | os.PathLike[str], sample_rate: int = 48000,
                 channels: int = 1, fsync: bool = False) -> None:
        if sample_rate < 1 or channels < 1:
            raise ValueError(f"bad WAV format: {sample_rate} Hz, {channels} channels")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.channels = channels
        self.fsync = fsync
        self._block = channels * 2
        self._data_bytes = 0  # accepted by write(), flushed or not
        self._flushed_bytes = 0  # on disk, with the header saying so
        self._pending: list[bytes] = []
        self._failed = False  # a write to the file failed: nothing more is written
        self._file = open(self.path, "wb")  # kept open until close()
        try:
            self._file.write(_header(sample_rate, channels, 0))
            self._sync()
        except BaseException:  # disk full: the caller removes the file
            with contextlib.suppress(OSError):
                self._file.close()
            raise

    # -- state ------------------------------------------------------------------------
    @property
    def frames_written(self) -> int:
        """Sample frames accepted so far (on disk after the next flush)."""
        return self._data_bytes // self._block

    @property
    def bytes_written(self) -> int:
        """Size of the file once everything accepted so far is flushed (header included)."""
        return HEADER_SIZE + self._data_bytes

    @property
    def duration_s(self) -> float:
        return self.frames_written / self.sample_rate

    @property
    def closed(self) -> bool:
        return self._file.closed

    # -- writing ----------------------------------------------------------------------
    def write(self, pcm: np.ndarray) -> None:
        """Queue int16 samples (interleaved if several channels) for the next flush.

        Raises RecordingError, accepting nothing, if the file would pass the 32-bit WAV
        size limit: the caller should have rotated to a new file before.
        """
        if pcm.dtype != np.int16:
            raise ValueError(f"WAV samples must be int16, got {pcm.dtype}")
        if pcm.size % self.channels:
            raise ValueError(f"{pcm.size} samples is not a whole number of "
                             f"{self.channels}-channel frames")
        data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
        if self._data_bytes + len(data) > MAX_DATA_BYTES:
            raise RecordingError(
                f"{self.path.name}: WAV size limit reached at {self.duration_s:.0f} s; "
                "rotate to a new file")
        if data:
            self._pending.append(data)
            self._data_bytes += len(data)

    def flush(self) -> None:
        """Append the queued samples, then make the header's sizes match them.

        The data goes first: a crash in between leaves a header that undercounts, which
        players accept and :func:`repair_wav` fixes, never one that points past the end.
        """
        if self._failed:
            raise RecordingError(f"{self.path.name}: an earlier write failed")
        try:
            if self._data_bytes != self._flushed_bytes:
                f = self._file
                f.write(b"".join(self._pending))
                self._pending.clear()
                f.flush()
                f.seek(4)
                f.write(struct.pack("<I", HEADER_SIZE - 8 + self._data_bytes))
                f.seek(40)
                f.write(struct.pack("<I", self._data_bytes))
                f.seek(0, os.SEEK_END)
                self._flushed_bytes = self._data_bytes
            self._sync()
        except BaseException:
            # Retrying could append some samples twice (after a partial write); the header
            # still describes the last good flush, which is what players and repair keep.
            self._failed = True
            raise

    def close(self) -> None:
        """Flush and close; after a failed write, only close (the file keeps its last
        good flush)."""
        if self._file.closed:
            return
        try:
            if not self._failed:
                self.flush()
        finally:
            self._file.close()

    def _sync(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_wav(path: str | os.PathLike[str]) -> float:
    """Make a crashed WAV's header agree with its data; return its duration in seconds.

    The data chunk becomes every whole sample frame after the header (a trailing partial
    frame, from a write cut short, is truncated). Files that already agree are not
    touched. RecordingError for anything that is not a WAV this module wrote.
    """
    with open(path, "r+b") as f:
        rate, channels, _ = _parse_header(f.read(HEADER_SIZE))
        block = channels * 2
        size = os.fstat(f.fileno()).st_size
        actual = (size - HEADER_SIZE) // block * block
        if actual > MAX_DATA_BYTES:
            raise RecordingError(f"{os.fspath(path)}: larger than a WAV file can be")
        header = _header(rate, channels, actual)
        f.seek(0)
        if size != HEADER_SIZE + actual or f.read(HEADER_SIZE) != header:
            f.truncate(HEADER_SIZE + actual)
            f.seek(0)
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
    return actual // block / rate
