"""Recording files: WAV and Ogg/Opus valid after every flush and repairable after a crash;
the store's names, ids, recovery and retention."""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from audio_checks import dominant_frequency
from conftest import need_program
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.codecs.spec import OPUS
from gateway.codecs.transcode import Packetizer
from gateway.recording import wav
from gateway.recording.ogg import (
    FLAG_BOS,
    FLAG_EOS,
    MAX_PACKET,
    OggOpusWriter,
    iter_pages,
    ogg_crc,
    ogg_duration,
    repair_ogg,
)
from gateway.recording.store import (
    MAX_ID_CHARS,
    MAX_NAME,
    RecordingError,
    RecordingStore,
    safe_name,
    valid_id,
)
from gateway.recording.wav import HEADER_SIZE, WavWriter, repair_wav, wav_info

try:
    import soundfile
except ImportError:  # optional: the stdlib wave module is always checked
    soundfile = None

ROOT = Path(__file__).parent.parent
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def tone(n: int, freq: float = 440.0, start: int = 0) -> np.ndarray:
    t = np.arange(start, start + n) / 48000
    return (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)


def read_wav(path: Path) -> np.ndarray:
    """Samples through the stdlib reader (and soundfile, which must agree)."""
    with wave.open(str(path), "rb") as w:
        assert (w.getsampwidth(), w.getframerate()) == (2, 48000)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        assert len(samples) == w.getnframes() * w.getnchannels()
    if soundfile is not None:
        other, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
        assert rate == 48000
        assert np.array_equal(other.reshape(-1), samples)
    return samples


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(frames) if frames else np.zeros(0, np.float32)


# -- WAV -----------------------------------------------------------------------------------
def test_wav_is_complete_on_disk_after_every_flush(tmp_path):
    path = tmp_path / "a.wav"
    writer = WavWriter(path)
    assert read_wav(path).size == 0  # valid from the start
    written = np.zeros(0, np.int16)
    for i, n in enumerate([960, 1, 4800, 0, 333]):
        chunk = tone(n, start=len(written))
        writer.write(chunk)
        assert len(read_wav(path)) == len(written)  # not yet flushed: disk unchanged
        written = np.concatenate([written, chunk])
        writer.flush()
        assert np.array_equal(read_wav(path), written), f"after flush {i}"
        assert writer.frames_written == len(written)
        assert writer.bytes_written == path.stat().st_size == HEADER_SIZE + 2 * len(written)
        assert writer.duration_s == pytest.approx(len(written) / 48000)
    writer.close()
    writer.close()  # idempotent
    assert np.array_equal(read_wav(path), written)
    assert wav_info(path) == (48000, 1, pytest.approx(len(written) / 48000))


def test_wav_stereo_and_rates(tmp_path):
    path = tmp_path / "s.wav"
    stereo = np.stack([tone(480), -tone(480)], axis=1)
    with WavWriter(path, sample_rate=16000, channels=2) as writer:
        writer.write(stereo)
        with pytest.raises(ValueError):
            writer.write(np.zeros(3, np.int16))  # not whole frames
        with pytest.raises(ValueError):
            writer.write(np.zeros(4, np.float32))
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 16000, 480)
        assert w.readframes(480) == stereo.astype("<i2").tobytes()
    assert repair_wav(path) == pytest.approx(480 / 16000)


@FAST
@given(
    chunks=st.lists(st.integers(0, 3000), min_size=1, max_size=8),
    crash_at=st.integers(0, 7),
    cut=st.floats(0, 1),
    riff_updated=st.booleans(),
)
def test_wav_crash_during_a_flush_is_repaired_to_a_prefix(chunks, crash_at, cut, riff_updated):
    """The process dies during flush number ``crash_at``: part of the new data reached the
    file (cut anywhere, mid-sample too), the header still describes the previous flush
    (or only its RIFF size was updated). Repair keeps a prefix of what was written and
    loses at most that unflushed flush."""
    crash_at = min(crash_at, len(chunks) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.wav"
        writer = WavWriter(path)
        written = np.zeros(0, np.int16)
        snapshots = [path.read_bytes()]
        for n in chunks:
            chunk = tone(n, start=len(written))
            written = np.concatenate([written, chunk])
            writer.write(chunk)
            writer.flush()
            snapshots.append(path.read_bytes())
        writer.close()
        before, after = snapshots[crash_at], snapshots[crash_at + 1]
        image = bytearray(after[: len(before) + round(cut * (len(after) - len(before)))])
        image[40:44] = before[40:44]
        if not riff_updated:
            image[4:8] = before[4:8]
        path.write_bytes(bytes(image))

        duration = repair_wav(path)
        samples = read_wav(path)
        assert np.array_equal(samples, written[: len(samples)])
        assert len(samples) >= (len(before) - HEADER_SIZE) // 2  # flushed data survives
        assert len(samples) == (len(image) - HEADER_SIZE) // 2
        assert duration == len(samples) / 48000
        assert repair_wav(path) == duration  # idempotent


@FAST
@given(n=st.integers(0, 5000), cut=st.integers(0, 10_100))
def test_wav_cut_anywhere_is_repaired_or_refused(n, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.wav"
        samples = tone(n)
        with WavWriter(path) as writer:
            writer.write(samples)
        cut = min(cut, path.stat().st_size)
        os.truncate(path, cut)
        if cut < HEADER_SIZE:
            with pytest.raises(RecordingError):
                repair_wav(path)
            return
        assert repair_wav(path) == (cut - HEADER_SIZE) // 2 / 48000
        assert np.array_equal(read_wav(path), samples[: (cut - HEADER_SIZE) // 2])


def test_repair_wav_refuses_other_files(tmp_path):
    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 100)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(os.urandom(1000))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path in (eight_bit, junk, empty):
        before = path.read_bytes()
        with pytest.raises(RecordingError):
            repair_wav(path)
        assert path.read_bytes() == before  # refused files are left alone


def test_wav_refuses_to_pass_the_32_bit_size_limit(tmp_path, monkeypatch):
    assert wav.MAX_DATA_BYTES // 2 / 48000 / 3600 == pytest.approx(12.43, abs=0.01)
    monkeypatch.setattr(wav, "MAX_DATA_BYTES", 1000)
    path = tmp_path / "big.wav"
    writer = WavWriter(path)
    writer.write(tone(400))
    with pytest.raises(RecordingError, match="rotate"):
        writer.write(tone(101))  # 1002 bytes
    writer.write(tone(100))  # exactly at the limit is fine
    writer.close()
    assert len(read_wav(path)) == 500


# -- Ogg: CRC and pages ------------------------------------------------------------------
def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x8000_0000 else r << 1
        table.append(r & 0xFFFF_FFFF)
    return tuple(table)


CRC_TABLE = _crc_table()


def ogg_crc_reference(data: bytes) -> int:
    """The Ogg CRC as RFC 3533 defines it: poly 0x04C11DB7, init 0, unreflected, no xor.

    Table-driven and pure Python (~1.5 ms per 8 kB page), so the writer uses ``ogg_crc``;
    this is the readable definition that one is checked by.
    """
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF_FFFF) ^ CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def test_ogg_crc_check_value():
    # CRC-32/POSIX (same polynomial, init 0, unreflected) is 0x765E7680, xored with ~0.
    assert ogg_crc_reference(b"123456789") == 0x765E7680 ^ 0xFFFF_FFFF
    assert ogg_crc(b"123456789") == 0x765E7680 ^ 0xFFFF_FFFF
    assert ogg_crc(b"") == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fast_crc_equals_the_table_driven_one(data):
    assert ogg_crc(data) == ogg_crc_reference(data)


def assert_pages_have_valid_crcs(data: bytes) -> int:
    """Every page of an Ogg file written by someone else has the CRC we compute."""
    pages = list(iter_pages(data))
    assert pages and sum(p.size for _, p in pages) == len(data)  # iter_pages checks CRCs
    for offset, page in pages:
        raw = bytearray(data[offset : offset + page.size])
        stored = int.from_bytes(raw[22:26], "little")
        raw[22:26] = bytes(4)
        assert ogg_crc_reference(bytes(raw)) == stored
    return len(pages)


def test_crc_matches_pages_muxed_by_ffmpeg(tmp_path):
    path = tmp_path / "ff.opus"
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        for i in range(50):
            frame = av.AudioFrame.from_ndarray(tone(960, start=960 * i).reshape(1, -1),
                                               format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, 960 * i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert assert_pages_have_valid_crcs(path.read_bytes()) >= 3


@pytest.mark.peer("ffmpeg")
def test_crc_matches_pages_written_by_the_ffmpeg_program(tmp_path):
    need_program("ffmpeg")
    path = tmp_path / "x.opus"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:d=1",
                    "-c:a", "libopus", str(path)], check=True, timeout=30)
    data = path.read_bytes()
    assert assert_pages_have_valid_crcs(data) >= 3
    first = next(iter_pages(data))[1]
    assert first.flags & FLAG_BOS and first.body.startswith(b"OpusHead")


def test_headers_granules_flags_and_sequence(tmp_path):
    path = tmp_path / "h.opus"
    writer = OggOpusWriter(path, pre_skip=312, serial=0xDEADBEEF, tags={"TITLE": "t"})
    writer.write_packet(b"\x08" * 10, samples=120)
    writer.flush()  # 120 samples < pre-skip: the first audio page waits
    assert len(list(iter_pages(path.read_bytes()))) == 2
    for _ in range(3):
        writer.write_packet(b"\x08" * 10, samples=120)
    writer.flush()
    for _ in range(50):
        writer.write_packet(b"\xfc" * 100)
    writer.flush()
    writer.flush()  # nothing queued: no empty page
    writer.close()
    pages = [p for _, p in iter_pages(path.read_bytes())]
    assert [p.sequence for p in pages] == list(range(len(pages)))
    assert {p.serial for p in pages} == {0xDEADBEEF}
    assert [p.flags for p in pages] == [FLAG_BOS, 0, 0, 0, FLAG_EOS]
    assert [p.granule for p in pages] == [0, 0, 480, 480 + 50 * 960, 480 + 50 * 960]
    head = pages[0].body
    assert head[:8] == b"OpusHead" and head[8] == 1 and head[9] == 1  # version, channels
    assert int.from_bytes(head[10:12], "little") == 312
    assert int.from_bytes(head[12:16], "little") == 48000
    assert pages[1].body.startswith(b"OpusTags\x0d\x00\x00\x00audio-gateway\x01\x00\x00\x00")
    assert pages[1].body.endswith(b"TITLE=t")
    assert writer.duration_s == (480 + 50 * 960 - 312) / 48000
    assert ogg_duration(path) == writer.duration_s


def test_long_packets_span_lacing_values_and_full_pages_are_closed(tmp_path):
    path = tmp_path / "l.opus"
    sizes = [1, 254, 255, 256, 509, 510, 511, 1275, MAX_PACKET, 0, 7]
    packets = [os.urandom(n) for n in sizes] + [bytes([i % 256]) for i in range(600)]
    with OggOpusWriter(path) as writer:
        for packet in packets:
            writer.write_packet(packet)  # no flush: pages close themselves when full
        with pytest.raises(ValueError):
            writer.write_packet(b"x" * (MAX_PACKET + 1))
        with pytest.raises(ValueError):
            writer.write_packet(b"x", samples=0)
    pages = [p for _, p in iter_pages(path.read_bytes())][2:]
    assert all(len(p.lacing) <= 255 for p in pages) and len(pages) >= 4
    assert [q for p in pages for q in p.packets()] == packets
    assert sum(len(p.packets()) for p in pages) == len(packets)
    counts = np.cumsum([len(p.packets()) for p in pages])
    assert [p.granule for p in pages] == [960 * int(c) for c in counts]


# -- Ogg: decoding and repair ------------------------------------------------------------
@pytest.fixture(scope="module")
def opus_file(tmp_path_factory) -> Path:
    """3 s of 440 Hz through the gateway's own Opus encoder, flushed once a second."""
    packetizer = Packetizer(OPUS)
    packets: list[bytes] = []
    for i in range(150):
        packets += packetizer.encode(tone(960, start=960 * i))
    assert len(packets) == 150
    path = tmp_path_factory.mktemp("ogg") / "tone.opus"
    with OggOpusWriter(path) as writer:
        for i, packet in enumerate(packets, 1):
            writer.write_packet(packet)
            if i % 50 == 0:
                writer.flush()
    return path


def test_opus_file_decodes_to_the_tone(opus_file):
    path = opus_file
    samples = decode(path)
    assert len(samples) / 48000 == pytest.approx(3.0, abs=0.02)
    assert dominant_frequency(samples[4800:]) == pytest.approx(440, rel=0.01)
    assert ogg_duration(path) == pytest.approx(3.0, abs=0.02)
    assert repair_ogg(path) == ogg_duration(path)  # a complete file is left as is


@pytest.mark.peer("ffprobe")
def test_ffprobe_and_ffmpeg_read_the_opus_file(opus_file):
    need_program("ffprobe", "ffmpeg")
    path = opus_file
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name",
         "-of", "json", str(path)], capture_output=True, text=True, check=True, timeout=30)
    info = json.loads(probe.stdout)
    assert info["streams"][0]["codec_name"] == "opus"
    assert float(info["format"]["duration"]) == pytest.approx(3.0, abs=0.02)
    run = subprocess.run(["ffmpeg", "-v", "warning", "-i", str(path), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def header_end(data: bytes) -> int:
    pages = list(iter_pages(data))
    return sum(p.size for _, p in pages[:2])


def packets_before(data: bytes, cut: int) -> int:
    """Audio packets whose bytes all lie before ``cut``."""
    count = 0
    for offset, page in list(iter_pages(data))[2:]:
        end = offset + page.size - len(page.body)
        for packet in page.packets():
            end += len(packet)
            count += end <= cut
    return count


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0, 1), garbage=st.sampled_from([b"", b"\0" * 4096, b"OggS\0\x02"]))
def test_opus_file_cut_anywhere_is_repaired_to_a_playable_prefix(opus_file, fraction,
                                                                 garbage):
    path = opus_file
    data = path.read_bytes()
    start = header_end(data)
    cut = start + round(fraction * (len(data) - start))
    # Audio wholly on disk before the cut, whichever page it is on.
    ends = [(off + page.size, page.granule) for off, page in iter_pages(data)]
    playable = max((g for end, g in ends if end <= cut), default=0)
    with tempfile.TemporaryDirectory() as tmp:
        damaged = Path(tmp) / "cut.opus"
        damaged.write_bytes(data[:cut] + garbage)
        duration = repair_ogg(damaged)
        lost = packets_before(data, cut) * 960 - playable
        assert 0 <= lost < 50 * 960  # less than the one page (one flush) the cut tore
        if playable == 0:  # headers only (cut in the first second): one page of silence
            assert damaged.read_bytes()[:start] == data[:start]
            assert duration == (960 - 312) / 48000
            assert not decode(damaged).any()
            return
        assert duration == max(0, playable - 312) / 48000  # every complete page kept
        assert damaged.read_bytes() == data[: len(damaged.read_bytes())]  # a prefix
        samples = decode(damaged)
        assert len(samples) == max(0, playable - 312)
        if len(samples) > 24000:
            assert dominant_frequency(samples[4800:]) == pytest.approx(440, rel=0.01)


@pytest.mark.peer("ffmpeg")
def test_ffmpeg_plays_a_repaired_opus_file(opus_file, tmp_path):
    need_program("ffmpeg")
    data = opus_file.read_bytes()
    damaged = tmp_path / "cut.opus"
    damaged.write_bytes(data[: len(data) * 5 // 6])  # in the middle of the third second
    assert repair_ogg(damaged) == pytest.approx(2.0 - 312 / 48000)
    run = subprocess.run(["ffmpeg", "-v", "warning", "-i", str(damaged), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


@pytest.mark.peer("ffmpeg")
def test_opus_file_without_audio_still_opens_everywhere(tmp_path):
    """A recording stopped, or crashed, before its first packet: FFmpeg and libsndfile
    refuse an Ogg Opus file with no audio packet, so 20 ms of silence is written."""
    need_program("ffmpeg")
    stopped, crashed = tmp_path / "stopped.opus", tmp_path / "crashed.opus"
    OggOpusWriter(stopped).close()
    with OggOpusWriter(crashed) as writer:
        writer.flush()
        headers = crashed.read_bytes()
    crashed.write_bytes(headers + b"OggS\0")  # killed while writing its first page
    assert repair_ogg(crashed) == (960 - 312) / 48000
    for path in (stopped, crashed):
        assert ogg_duration(path) == (960 - 312) / 48000
        samples = decode(path)
        assert len(samples) == 960 - 312 and not samples.any()
        if soundfile is not None:
            assert len(soundfile.read(path)[0]) == 960 - 312
        run = subprocess.run(["ffmpeg", "-v", "warning", "-i", str(path), "-f", "null", "-"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def test_repair_ogg_refuses_what_is_not_ogg_opus(opus_file, tmp_path):
    data = opus_file.read_bytes()
    cases = {
        "empty": b"",
        "junk": os.urandom(5000),
        "torn OpusHead": data[:30],
        "no OpusTags": data[: header_end(data) - 1],
        "not opus": data.replace(b"OpusHead", b"OpusHeaX", 1),
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.opus"
        path.write_bytes(content)
        with pytest.raises(RecordingError):
            repair_ogg(path)
        assert path.read_bytes() == content, name


# -- a real crash ------------------------------------------------------------------------
CRASH_SCRIPT = """
import os, signal, sys
import numpy as np
from gateway.recording.ogg import OggOpusWriter
from gateway.recording.wav import WavWriter
w = WavWriter(sys.argv[1])
o = OggOpusWriter(sys.argv[2])
w.write(np.arange(4800, dtype=np.int16))
o.write_packet(b"\\xfc\\xff\\xfe")
w.flush()
o.flush()
w.write(np.arange(960, dtype=np.int16))  # never flushed
o.write_packet(b"\\xfc\\xff\\xfe")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_keeps_every_flushed_sample(tmp_path):
    wav_path, ogg_path = tmp_path / "k.wav", tmp_path / "k.opus"
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(wav_path), str(ogg_path)],
                          cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert np.array_equal(read_wav(wav_path), np.arange(4800, dtype=np.int16))  # no repair
    assert ogg_duration(ogg_path) == (960 - 312) / 48000
    assert len(decode(ogg_path)) == 960 - 312


# -- store: names --------------------------------------------------------------------------
SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


@pytest.mark.parametrize("stream", [
    "../../etc/x", "/abs", "a\0b", "ünïcødé 🎵", "x" * 1000, ".", "..", "", "...",
    "CON", "con.txt", "lpt1", "a/b", "a\\b", ".hidden", "trailing.", "a_0123456789ab",
])
def test_safe_name_of_hostile_stream_names(stream, tmp_path):
    name = safe_name(stream)
    assert SAFE.match(name) and not name.startswith(".") and not name.endswith(".")
    assert len(name) <= MAX_NAME and name not in (".", "..")
    assert name.split(".")[0].lower() not in ("con", "lpt1")
    assert name != stream  # each of these had to change, so carries a hash
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_names_keep_ordinary_names():
    for stream in ("studio-1", "room_2.mix", "A"):
        assert safe_name(stream) == stream


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_safe_name_properties(a, b):
    name = safe_name(a)
    assert SAFE.match(name) and not name.startswith(".") and len(name) <= MAX_NAME
    base = Path("/srv/recordings")
    assert (base / name).resolve().is_relative_to(base)
    assume(a != b)
    assert safe_name(a) != safe_name(b)


# -- store: files ------------------------------------------------------------------------
T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def record_wav(store: RecordingStore, stream: str, started: float, seconds: float,
               finish: bool = True) -> Path:
    path = store.new_path(stream, "wav", started)
    with WavWriter(path) as writer:
        writer.write(tone(int(seconds * 48000)))
    return store.finish(path) if finish else path


def test_new_path_finish_and_list(tmp_path):
    store = RecordingStore(tmp_path / "rec")
    part = store.new_path("../studio/ä", "wav", T0)
    name = safe_name("../studio/ä")
    assert part.parent == store.directory / name
    assert re.fullmatch(rf"{re.escape(name)}-20231114T221320250Z\.wav\.part", part.name)
    assert part.resolve().is_relative_to(store.directory)
    assert store.new_path("../studio/ä", "wav", T0) != part  # same millisecond
    with pytest.raises(ValueError):
        store.new_path("x", "mp3", T0)

    writer = WavWriter(part)
    writer.write(tone(24000))
    writer.flush()
    writer.write(tone(4800))  # not flushed: the listing shows what is on disk
    (entry,) = store.list()
    assert entry["in_progress"] and entry["stream"] == "../studio/ä"
    assert entry["format"] == "wav" and entry["started"] == T0 and not entry["recovered"]
    assert entry["duration_s"] == 0.5 and entry["bytes"] == part.stat().st_size
    assert store.path_of(entry["id"]) == part
    assert re.fullmatch(r"[A-Za-z0-9_-]+", entry["id"])
    with pytest.raises(RecordingError):
        store.delete(entry["id"])
    writer.close()

    final = store.finish(part)
    assert final.name == part.name.removesuffix(".part") and not part.exists()
    (done,) = store.list()
    assert done["id"] == entry["id"]  # the id survives finishing
    assert not done["in_progress"] and done["duration_s"] == 0.6
    assert store.path_of(done["id"]) == final

    opus = store.new_path("../studio/ä", "opus", T0 + 1)
    with OggOpusWriter(opus) as writer:
        for _ in range(100):
            writer.write_packet(b"\xfc\xff\xfe")
    store.finish(opus)
    listed = store.list()
    assert [e["format"] for e in listed] == ["wav", "opus"]  # oldest first
    assert listed[1]["duration_s"] == round((96000 - 312) / 48000, 3)


def test_the_longest_names_give_ids_within_the_limit(tmp_path):
    store = RecordingStore(tmp_path / "rec")
    for _ in range(12):  # the same millisecond: "-1" ... "-11" suffixes
        final = record_wav(store, "ä" * 500, T0, 0.01)
    (longest,) = [e["id"] for e in store.list() if e["file"] == final.name]
    assert valid_id(longest) and store.path_of(longest) == final
    assert len(longest) <= MAX_ID_CHARS and not valid_id("a" * (MAX_ID_CHARS + 1))


def test_path_of_refuses_ids_outside_the_directory(tmp_path):
    store = RecordingStore(tmp_path / "rec")
    final = record_wav(store, "s", T0, 0.1)
    outside = tmp_path / "secret.wav"
    outside.write_bytes(final.read_bytes())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.wav").write_bytes(final.read_bytes())
    (store.directory / "link").symlink_to(tmp_path / "elsewhere")
    (store.directory / "s" / "notes.txt").write_text("hi")

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    for bad in ["", "!!!", "..", "%2e%2e", b64("../secret.wav"), b64("s/../../secret.wav"),
                b64("/etc/passwd"), b64(str(outside)), b64("s/x/../../../secret.wav"),
                b64("link/x.wav"), b64("s/notes.txt"), b64(f"s/{final.name}.part"),
                b64("s/missing.wav"), b64(f"s/{final.name}") + "=", b64("s\\x.wav"),
                b64(f"./s/{final.name}"), b64(f"s//{final.name}"),
                b64("s/" + "a" * 260 + ".wav"), "A" * 5000]:  # too long for a file name
        with pytest.raises(KeyError):
            store.path_of(bad)
    assert store.path_of(b64(f"s/{final.name}")) == final
    assert [e["file"] for e in store.list()] == [final.name]  # symlinked folder skipped


def test_recover_repairs_finishes_and_keeps_broken_files(tmp_path, opus_file):
    store = RecordingStore(tmp_path)
    # A WAV whose last flush was cut mid-sample before its header update.
    wav_part = store.new_path("a", "wav", T0)
    with WavWriter(wav_part) as writer:
        writer.write(tone(4800))
    header = wav_part.read_bytes()[:HEADER_SIZE]
    with open(wav_part, "ab") as f:
        f.write(tone(961).tobytes()[:-1])
    with open(wav_part, "r+b") as f:
        f.write(header)
    # An Ogg file cut inside its last page.
    data = opus_file.read_bytes()
    opus_part = store.new_path("b", "opus", T0 + 1)
    opus_part.write_bytes(data[: len(data) - 100])
    # Garbage, and a part without its sidecar.
    junk_part = store.new_path("c", "wav", T0 + 2)
    junk_part.write_bytes(b"RIFF")
    orphan = store.directory / "d" / "d-x.wav.part"
    orphan.parent.mkdir()
    orphan.write_bytes(wav_part.read_bytes())
    # Someone else's recording in progress is not ours to touch.
    (store.directory / "e").mkdir()
    (store.directory / "e" / "notes.part").write_text("x")

    store = RecordingStore(tmp_path)  # the next start
    report = {r["stream"]: r for r in store.recover()}
    assert set(report) == {"a", "b", "c", "d"}
    assert report["a"]["recovered"] and report["a"]["duration_s"] == 5760 / 48000
    assert report["b"]["duration_s"] == pytest.approx((96000 - 312) / 48000, abs=1e-3)
    assert report["c"]["broken"] and not report["c"]["recovered"]
    assert Path(report["c"]["path"]).name == junk_part.name.replace(".part", ".broken")
    assert Path(report["c"]["path"]).read_bytes() == b"RIFF"  # kept, not deleted
    assert report["d"]["duration_s"] == 5760 / 48000
    assert np.array_equal(read_wav(Path(report["a"]["path"]))[:4800], tone(4800))

    listed = {e["stream"]: e for e in store.list()}
    assert set(listed) == {"a", "b", "d"}
    assert all(e["recovered"] and not e["in_progress"] for e in listed.values())
    assert listed["a"]["started"] == T0
    assert store.recover() == []  # nothing left to do


def test_retention_by_age_then_size(tmp_path):
    store = RecordingStore(tmp_path, max_age_s=150)
    old = record_wav(store, "s", T0, 0.1)
    middle = record_wav(store, "s", T0 + 100, 0.1)
    new = record_wav(store, "s", T0 + 200, 0.1)
    running = record_wav(store, "s", T0 - 1000, 0.1, finish=False)  # oldest, in progress
    assert sorted(store.enforce_retention(T0 + 300)) == sorted([old, middle])
    assert not old.exists() and not Path(f"{old}.json").exists()
    assert new.exists() and running.exists()

    size = new.stat().st_size
    store.max_age_s, store.max_total_bytes = None, 3 * size
    newer = record_wav(store, "t", T0 + 300, 0.1)
    newest = record_wav(store, "t", T0 + 400, 0.1)
    # Four files of one size: the in-progress one counts but only finished ones go.
    assert store.enforce_retention(T0 + 500) == [new]
    assert store.enforce_retention(T0 + 500) == []
    store.max_total_bytes = size
    assert store.enforce_retention(T0 + 500) == [newer, newest]
    (entry,) = store.list()
    assert entry["in_progress"] and running.exists()


def test_delete(tmp_path):
    store = RecordingStore(tmp_path)
    final = record_wav(store, "s", T0, 0.1)
    (entry,) = store.list()
    store.delete(entry["id"])
    assert not final.exists() and not Path(f"{final}.json").exists()
    assert store.list() == []
    with pytest.raises(KeyError):
        store.delete(entry["id"])


# -- write failures (disk full) ----------------------------------------------------------
class DiskFull:
    """A file whose next write stores half its bytes, then fails like a full disk."""

    def __init__(self, file) -> None:
        self._file = file

    def write(self, data: bytes) -> int:
        self._file.write(data[: len(data) // 2])
        self._file.flush()
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def test_a_failed_wav_flush_leaves_the_last_good_one(tmp_path):
    path = tmp_path / "full.wav"
    writer = WavWriter(path)
    writer.write(tone(4800))
    writer.flush()
    writer._file = DiskFull(writer._file)
    writer.write(tone(961))
    with pytest.raises(OSError):
        writer.flush()
    with pytest.raises(RecordingError):
        writer.flush()  # no retry that could write samples twice
    writer.close()  # only closes
    assert np.array_equal(read_wav(path), tone(4800))  # the header was never advanced
    repair_wav(path)
    assert np.array_equal(read_wav(path)[:4800], tone(4800))


def test_a_failed_ogg_page_write_leaves_a_repairable_file(tmp_path):
    path = tmp_path / "full.opus"
    writer = OggOpusWriter(path)
    for _ in range(50):
        writer.write_packet(b"\xfc\xff\xfe")
    writer.flush()
    writer._file = DiskFull(writer._file)
    writer.write_packet(b"\xfc\xff\xfe")
    with pytest.raises(OSError):
        writer.flush()
    writer.close()  # writes no EOS page after the torn one
    assert repair_ogg(path) == (48000 - 312) / 48000
    assert len(decode(path)) == 48000 - 312


def test_new_path_is_unique_across_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = RecordingStore(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: store.new_path("s", "wav", T0), range(16)))
    assert len(set(paths)) == 16


# -- recovery when writes fail (disk full, over quota, read-only, I/O errors) -------------
WRITING = set("wxa+")


class FaultyFile:
    """A file whose writes fail: all of them (``write``), or those that would make it
    larger (``full``: a full disk still lets a file be overwritten or shortened)."""

    def __init__(self, file, step: str, error) -> None:
        self._file, self._step, self._error = file, step, error

    def write(self, data):
        if self._step == "full":
            self._file.flush()
            size = len(data.encode() if isinstance(data, str) else data)
            if self._file.tell() + size > os.fstat(self._file.fileno()).st_size:
                raise self._error()
        elif self._step == "write":
            raise self._error()
        return self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def __getattr__(self, name: str):
        return getattr(self._file, name)


@contextlib.contextmanager
def failing(step: str, err: int):
    """Make the recording modules' file writes fail with ``err`` at one ``step``: opening
    for writing, writing, fsync, every rename (sidecars included), the rename of a
    ``.part`` only, or ``full`` (writes that would grow a file)."""
    import builtins

    from gateway.recording import ogg as ogg_module
    from gateway.recording import store as store_module

    def error() -> OSError:
        return OSError(err, os.strerror(err))

    def faulty_open(file, mode="r", *args, **kwargs):
        if WRITING & set(mode) and step == "open":
            raise error()
        f = builtins.open(file, mode, *args, **kwargs)
        return FaultyFile(f, step, error) if WRITING & set(mode) else f

    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        if step == "replace" or (step == "rename" and str(src).endswith(".part")):
            raise error()
        return real_replace(src, dst)

    def fsync(fd: int) -> None:
        if step == "fsync":
            raise error()
        real_fsync(fd)

    with pytest.MonkeyPatch.context() as patch:
        for module in (store_module, wav, ogg_module):
            patch.setattr(module, "open", faulty_open, raising=False)
        patch.setattr(os, "replace", replace)
        patch.setattr(os, "fsync", fsync)
        yield


def leave_crashed_recordings(directory: Path, opus_file: Path) -> dict[str, Path]:
    """What a crashed run on a filling disk leaves: a WAV whose last second reached the
    file but not its header (cut mid-sample), an Ogg/Opus file cut inside a page, one
    that crashed before its first audio page, an empty ``.part`` (the header did not
    fit), an empty sidecar, a temporary one and one whose recording never started."""
    store = RecordingStore(directory)
    wav_part = store.new_path("a", "wav", T0)
    with WavWriter(wav_part) as writer:
        writer.write(tone(48000))
    with open(wav_part, "ab") as f:
        f.write(tone(24001, start=48000).tobytes()[:-1])
    data = opus_file.read_bytes()
    opus_part = store.new_path("b", "opus", T0 + 1)
    opus_part.write_bytes(data[: len(data) - 100])
    Path(f"{opus_part.with_suffix('')}.json").write_bytes(b"")  # its sidecar is empty
    empty_opus = store.new_path("c", "opus", T0 + 2)
    OggOpusWriter(empty_opus)._file.close()  # crashed: no audio page, no EOS
    store.new_path("d", "wav", T0 + 3)  # its sidecar claimed the name, the file never came
    store.new_path("e", "wav", T0 + 4).touch()
    tmp = wav_part.with_name(wav_part.name.removesuffix(".part") + ".json.tmp")
    tmp.touch()
    return {"a": wav_part, "b": opus_part, "c": empty_opus}


def files_in(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("step, err", [
    ("full", errno.ENOSPC), ("full", errno.EDQUOT),
    *((step, err) for step in ("open", "write", "fsync", "replace", "rename")
      for err in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)),
], ids=lambda v: errno.errorcode[v] if isinstance(v, int) else v)
def test_recovery_that_cannot_write_is_completed_by_the_next_start(tmp_path, opus_file,
                                                                   step, err):
    parts = leave_crashed_recordings(tmp_path, opus_file)
    cut = opus_file.read_bytes()[:-100]
    *_, (offset, page) = iter_pages(cut)
    whole_pages = offset + page.size

    store = RecordingStore(tmp_path)  # restart, the disk still full (or read-only, ...)
    with failing(step, err):
        report = store.recover()
    assert [(r["stream"], r["recovered"], r["broken"]) for r in report] == [
        ("a", False, False), ("b", False, False), ("c", False, False)]
    # Consistent: each file is still its .part, listed (not in progress) with the reason;
    # the leftovers of interrupted writes are gone and no new ones were made.
    assert files_in(tmp_path) == {f"{s}/{p.name}" for s, p in parts.items()} | {
        f"{s}/{p.name.removesuffix('.part')}.json" for s, p in parts.items()}
    listed = {e["stream"]: e for e in store.list()}
    assert set(listed) == {"a", "b", "c"}
    assert listed["b"]["started"] == T0 + 1  # from its name: repairs change the mtime
    for entry in listed.values():
        assert not entry["in_progress"] and not entry["recovered"]
        assert os.strerror(err) in entry["error"] and "next start" in entry["error"]
        assert store.path_of(entry["id"]).name.endswith(".part")  # can be downloaded
    # Nothing lost: the samples and the complete pages are all still there.
    wav_data = parts["a"].read_bytes()[HEADER_SIZE : HEADER_SIZE + 2 * 72000]
    assert np.array_equal(np.frombuffer(wav_data, "<i2"), tone(72000))
    assert parts["b"].read_bytes()[:whole_pages] == cut[:whole_pages]
    assert listed["a"]["duration_s"] == 1.5
    assert listed["b"]["duration_s"] == pytest.approx(2.0, abs=0.01)  # its 2 whole seconds

    store = RecordingStore(tmp_path)  # restart with space
    report = store.recover()
    assert [(r["stream"], r["recovered"]) for r in report] == [
        ("a", True), ("b", True), ("c", True)]
    listed = {e["stream"]: e for e in store.list()}
    assert all(e["recovered"] and not e["in_progress"] and e["error"] is None
               for e in listed.values())
    assert not any(name.endswith((".part", ".tmp")) for name in files_in(tmp_path))
    assert (listed["a"]["started"], listed["b"]["started"]) == (T0, T0 + 1)
    samples = read_wav(tmp_path / "a" / listed["a"]["file"])
    assert np.array_equal(samples, tone(72000))
    assert dominant_frequency(samples) == pytest.approx(440, rel=0.01)
    samples = decode(tmp_path / "b" / listed["b"]["file"])
    assert len(samples) / 48000 == pytest.approx(listed["b"]["duration_s"], abs=0.001)
    assert dominant_frequency(samples[4800:]) == pytest.approx(440, rel=0.01)
    assert len(decode(tmp_path / "c" / listed["c"]["file"])) == 960 - 312  # 20 ms silence
    assert store.recover() == []


def test_a_start_on_a_full_disk_leaves_no_file_claiming_a_name(tmp_path):
    store = RecordingStore(tmp_path)
    for step in ("full", "write", "open"):
        with failing(step, errno.ENOSPC), pytest.raises(OSError):
            store.new_path("s", "wav", T0)
    assert files_in(tmp_path) == set()
    part = store.new_path("s", "wav", T0)
    with failing("full", errno.ENOSPC), pytest.raises(OSError):
        WavWriter(part)  # the header does not fit
    store.discard(part)  # what the recorder does then
    assert files_in(tmp_path) == set() and store.list() == []


def test_a_failed_recording_is_unfinished_not_in_progress(tmp_path):
    store = RecordingStore(tmp_path)
    part = store.new_path("s", "wav", T0)
    writer = WavWriter(part)
    writer.write(tone(4800))
    writer.flush()
    (entry,) = store.list()
    assert entry["in_progress"] and entry["error"] is None
    writer.close()
    store.release(part, "recording failed: No space left on device")
    (entry,) = store.list()
    assert not entry["in_progress"] and not entry["recovered"]
    assert entry["error"] == "recording failed: No space left on device"
    assert store.enforce_retention(T0 + 1e9) == []  # retention keeps what is unfinished
    (item,) = RecordingStore(tmp_path).recover()  # the next start finishes it
    assert item["recovered"] and item["duration_s"] == 0.1


def test_an_unfinished_recording_can_be_deleted(tmp_path):
    store = RecordingStore(tmp_path)
    record_wav(store, "s", T0, 0.1, finish=False)
    store = RecordingStore(tmp_path)  # after a crash: nobody writes it
    (entry,) = store.list()
    assert not entry["in_progress"] and "next start" in entry["error"]
    store.delete(entry["id"])  # a full disk's user frees space
    assert files_in(tmp_path) == set()
