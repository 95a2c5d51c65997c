"""Ogg/Opus files from Opus packets the gateway already encoded (RFC 7845 over RFC 3533).

The gateway encodes Opus once per stream; a recording muxes those 20 ms packets into Ogg
pages itself instead of encoding a second time. Each ``flush()`` closes one page, so after
a crash every complete page on disk is playable and :func:`repair_ogg` only has to cut a
torn last page off.

Pages never split a packet (a 20 ms Opus packet is at most 1275 bytes, a page holds
65 024), so every page's granule position counts exactly the packets on it and after.

All calls block: use them from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import RecordingError

RATE = 48000  # Opus granule positions always count 48 kHz samples
#: libopus's look-ahead at 48 kHz (6.5 ms), what its encoder asks players to skip.
DEFAULT_PRE_SKIP = 312
VENDOR = "audio-gateway"

FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04

_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq,
HEADER_SIZE = _PAGE_HEADER.size  # 27                              crc, segment count
MAX_SEGMENTS = 255
#: The longest packet that fits one page: 255 lacing values, the last one < 255.
MAX_PACKET = 254 * 255 + 254
MAX_PAGE = HEADER_SIZE + MAX_SEGMENTS + MAX_SEGMENTS * 255
#: Opus packets last 2.5 to 120 ms.
MAX_PACKET_SAMPLES = 120 * RATE // 1000
#: 20 ms of digital silence (CELT, full band, mono; the packet libopus makes for zeros).
SILENCE_PACKET = b"\xf8\xff\xfe"


def silence_packets(pre_skip: int) -> int:
    """How many 20 ms silence packets make an otherwise empty file valid and playable:
    RFC 7845 needs the last granule past pre-skip, and FFmpeg and libsndfile refuse a file
    with no audio packet at all (a recording stopped, or crashed, before its first one)."""
    return pre_skip // 960 + 1


# -- CRC ---------------------------------------------------------------------------------
_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes) -> int:
    """The Ogg CRC computed by zlib's (C, table-driven) reflected CRC-32: ~100x faster
    than the table-driven pure-Python definition the tests check it against.

    An unreflected CRC equals the reflected CRC of the bit-reversed bytes, bit-reversed.
    zlib's init/final ~ are cancelled by starting from 0xFFFFFFFF and inverting the result.
    """
    reflected = zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFF_FFFF) ^ 0xFFFF_FFFF
    return int.from_bytes(reflected.to_bytes(4, "little").translate(_BIT_REVERSED), "big")


# -- pages -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OggPage:
    flags: int
    granule: int  # -1: no packet ends on this page
    serial: int
    sequence: int
    lacing: bytes
    body: bytes

    @property
    def size(self) -> int:
        return HEADER_SIZE + len(self.lacing) + len(self.body)

    def packets(self) -> list[bytes]:
        """The packets on this page (a packet continued onto the next page comes last)."""
        out, start, length = [], 0, 0
        for value in self.lacing:
            length += value
            if value < 255:
                out.append(self.body[start : start + length])
                start, length = start + length, 0
        if length:
            out.append(self.body[start : start + length])
        return out


def build_page(flags: int, granule: int, serial: int, sequence: int, lacing: bytes,
               body: bytes) -> bytes:
    header = _PAGE_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    page = bytearray(header + lacing + body)
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def parse_page(buf: bytes, offset: int = 0) -> OggPage | None:
    """The complete page at ``offset`` if its CRC checks out, else None."""
    end = offset + HEADER_SIZE
    if len(buf) < end:
        return None
    capture, version, flags, granule, serial, seq, crc, count = _PAGE_HEADER.unpack_from(
        buf, offset)
    if capture != b"OggS" or version != 0 or len(buf) < end + count:
        return None
    lacing = bytes(buf[end : end + count])
    body_end = end + count + sum(lacing)
    if len(buf) < body_end:
        return None
    raw = bytearray(buf[offset:body_end])
    raw[22:26] = b"\0\0\0\0"
    if ogg_crc(bytes(raw)) != crc:
        return None
    return OggPage(flags, granule, serial, seq, lacing, bytes(buf[end + count : body_end]))


def iter_pages(buf: bytes) -> Iterator[tuple[int, OggPage]]:
    """(offset, page) of consecutive valid pages from the start, up to the first bad one."""
    offset = 0
    while (page := parse_page(buf, offset)) is not None:
        yield offset, page
        offset += page.size


def lacing_values(length: int) -> bytes:
    """Segment table entries of one packet: 255 per full segment, then the rest (< 255)."""
    return b"\xff" * (length // 255) + bytes([length % 255])


def opus_head(channels: int, pre_skip: int, input_rate: int = RATE) -> bytes:
    """RFC 7845 §5.1, channel mapping family 0 (mono or stereo)."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate, 0, 0)


def opus_tags(vendor: str = VENDOR, tags: Mapping[str, str] | None = None) -> bytes:
    """RFC 7845 §5.2: vendor string and ``KEY=value`` comments."""
    comments = [f"{k}={v}".encode() for k, v in (tags or {}).items()]
    out = bytearray(b"OpusTags")
    for item in [vendor.encode(), len(comments), *comments]:
        if isinstance(item, int):
            out += struct.pack("<I", item)
        else:
            out += struct.pack("<I", len(item)) + item
    return bytes(out)


# -- writer ------------------------------------------------------------------------------
class OggOpusWriter:
    """Muxes Opus packets into an Ogg file; ``flush()`` closes the page in progress.

    ``pre_skip`` is the number of decoded samples players drop at the start (the encoder's
    look-ahead). ``fsync`` as for :class:`~gateway.recording.wav.WavWriter`: flushing
    always reaches the kernel, which survives a process crash; fsync also survives a
    power cut.
    """

    def __init__(self, path: str | os.PathLike[str], channels: int = 1,
                 pre_skip: int = DEFAULT_PRE_SKIP, serial: int | None = None,
                 fsync: bool = False, tags: Mapping[str, str] | None = None) -> None:
        if channels not in (1, 2):
            raise ValueError(f"Opus mapping family 0 is mono or stereo, not {channels}")
        if not 0 <= pre_skip <= 0xFFFF:
            raise ValueError(f"pre-skip out of range: {pre_skip}")
        self.path = Path(path)
        self.channels = channels
        self.pre_skip = pre_skip
        self.serial = secrets.randbits(32) if serial is None else serial & 0xFFFF_FFFF
        self.fsync = fsync
        self.packets_written = 0
        self.granule = 0  # 48 kHz samples of every packet accepted, pre-skip included
        self.bytes_written = 0  # bytes of the pages written to the file
        self._sequence = 0
        self._audio_pages = 0
        self._lacing = bytearray()
        self._body: list[bytes] = []
        self._failed = False  # a write to the file failed: nothing more is written
        tags_packet = opus_tags(VENDOR, tags)
        if len(tags_packet) > MAX_PACKET:
            raise ValueError("OpusTags too large for one page")
        self._file: BinaryIO = open(self.path, "wb")  # kept open until close()
        try:
            self._write_page(FLAG_BOS, 0, lacing_values(19), opus_head(channels, pre_skip))
            self._write_page(0, 0, lacing_values(len(tags_packet)), tags_packet)
            self._sync()
        except BaseException:  # disk full: the caller removes the file
            with contextlib.suppress(OSError):
                self._file.close()
            raise

    @property
    def duration_s(self) -> float:
        """Playable duration of every packet accepted so far (pre-skip removed)."""
        return max(0, self.granule - self.pre_skip) / RATE

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write_packet(self, packet: bytes, samples: int = 960) -> None:
        """Queue one Opus packet lasting ``samples`` at 48 kHz (960 = 20 ms).

        A page that would pass 255 segments is closed first. ValueError for a packet too
        long for any page (impossible for real Opus packets) rather than a corrupt file.
        """
        if len(packet) > MAX_PACKET:
            raise ValueError(f"packet of {len(packet)} bytes does not fit an Ogg page")
        if not 0 < samples <= MAX_PACKET_SAMPLES:
            raise ValueError(f"an Opus packet lasts 1..{MAX_PACKET_SAMPLES} samples")
        lacing = lacing_values(len(packet))
        if len(self._lacing) + len(lacing) > MAX_SEGMENTS:
            self._close_page(0)
        self._lacing += lacing
        self._body.append(bytes(packet))
        self.packets_written += 1
        self.granule += samples

    def flush(self) -> None:
        """Write the queued packets as one page; it reaches the kernel (and disk if fsync).

        The first audio page waits until it holds at least pre-skip samples (never the
        case with 20 ms packets): a granule below pre-skip is invalid in RFC 7845.
        """
        if self._lacing and (self._audio_pages or self.granule >= self.pre_skip):
            self._close_page(0)
        self._sync()

    def close(self) -> None:
        """Write the last page with the end-of-stream flag and close the file."""
        if self._file.closed:
            return
        try:
            if not self._failed:
                if not self.packets_written:
                    for _ in range(silence_packets(self.pre_skip)):
                        self.write_packet(SILENCE_PACKET)
                # With nothing queued the EOS page is empty, repeating the last granule.
                self._close_page(FLAG_EOS)
                self._sync()
        finally:
            self._file.close()

    def _close_page(self, flags: int) -> None:
        self._write_page(flags, self.granule, bytes(self._lacing), b"".join(self._body))
        self._lacing.clear()
        self._body.clear()
        self._audio_pages += 1

    def _write_page(self, flags: int, granule: int, lacing: bytes, body: bytes) -> None:
        if self._failed:
            raise RecordingError(f"{self.path.name}: an earlier write failed")
        page = build_page(flags, granule, self.serial, self._sequence, lacing, body)
        try:
            self._file.write(page)
        except BaseException:
            # After a partial page, more pages would follow a torn one mid-file; stopping
            # here leaves a torn tail, which repair_ogg cuts off.
            self._failed = True
            raise
        self._sequence += 1
        self.bytes_written += len(page)

    def _sync(self) -> None:
        try:
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except BaseException:
            self._failed = True
            raise

    def __enter__(self) -> OggOpusWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading back and repair -------------------------------------------------------------
def _read_head(f: BinaryIO) -> tuple[int, int, int]:
    """(serial, pre_skip, end of the header pages) of an Ogg Opus file, else RecordingError."""
    pages: list[OggPage] = []
    for amount in (4096, 2 * MAX_PAGE):  # our header pages take ~100 bytes
        f.seek(0)
        pages = [page for _, page in itertools.islice(iter_pages(f.read(amount)), 2)]
        if len(pages) == 2:
            break
    if not pages or not pages[0].flags & FLAG_BOS or not pages[0].body.startswith(b"OpusHead"):
        raise RecordingError("not an Ogg Opus file (no OpusHead page)")
    if len(pages[0].body) < 19:
        raise RecordingError("truncated OpusHead")
    if len(pages) < 2 or not pages[1].body.startswith(b"OpusTags"):
        raise RecordingError("Ogg Opus file without its OpusTags page")
    pre_skip = struct.unpack_from("<H", pages[0].body, 10)[0]
    return pages[0].serial, pre_skip, pages[0].size + pages[1].size


def _pages_backwards(f: BinaryIO, size: int, serial: int) -> Iterator[tuple[int, OggPage]]:
    """Valid complete pages of ``serial``, last first: only the tail is read in practice."""
    chunk = 16384  # a page per second of 64 kbit/s Opus is ~8 kB
    hi = size  # look for pages starting below hi
    while hi > 0:
        lo = max(0, hi - chunk)
        chunk = min(2 * chunk, 4 * MAX_PAGE)
        f.seek(lo)
        buf = f.read(min(size, hi + MAX_PAGE) - lo)
        p = buf.rfind(b"OggS", 0, hi - lo + 3)
        while p >= 0:
            page = parse_page(buf, p)
            if page is not None and page.serial == serial:
                yield lo + p, page
            p = buf.rfind(b"OggS", 0, p + 3)
        hi = lo


def _last_page(f: BinaryIO, size: int, serial: int) -> tuple[int, OggPage]:
    for offset, page in _pages_backwards(f, size, serial):
        return offset, page
    raise RecordingError("no complete Ogg page")  # unreachable once _read_head passed


def _duration(f: BinaryIO, size: int, serial: int, pre_skip: int) -> float:
    for _, page in _pages_backwards(f, size, serial):
        if page.granule >= 0:
            return max(0, page.granule - pre_skip) / RATE
    return 0.0


def ogg_duration(path: str | os.PathLike[str]) -> float:
    """Playable seconds up to the last complete page (works on files being written)."""
    with open(path, "rb") as f:
        serial, pre_skip, _ = _read_head(f)
        return _duration(f, os.fstat(f.fileno()).st_size, serial, pre_skip)


def repair_ogg(path: str | os.PathLike[str]) -> float:
    """Cut a crashed Ogg Opus file after its last complete, CRC-valid page; return seconds.

    Pages are never rewritten: a missing end-of-stream flag is fine for players. A file
    with no complete audio page (a crash in the first second) gets a page of silence, so
    it still opens everywhere.
    RecordingError if this is not an Ogg Opus file with both header pages.
    """
    with open(path, "r+b") as f:
        serial, pre_skip, header_end = _read_head(f)
        size = os.fstat(f.fileno()).st_size
        offset, page = _last_page(f, size, serial)
        end = max(offset + page.size, header_end)
        if end == header_end:
            f.truncate(end)
            f.seek(end)
            count = silence_packets(pre_skip)
            lacing = lacing_values(len(SILENCE_PACKET)) * count
            f.write(build_page(FLAG_EOS, 960 * count, serial, 2, lacing, SILENCE_PACKET * count))
            f.flush()
            end = f.tell()
            os.fsync(f.fileno())
        elif end != size:
            f.truncate(end)
            os.fsync(f.fileno())
        return _duration(f, end, serial, pre_skip)
