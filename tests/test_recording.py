"""Recording a live stream: what is in the file is what was published, at the right time,
in WAV and Ogg/Opus; controlled and downloaded over the API; safe with odd names; a full
disk stops the recording and nothing else."""

from __future__ import annotations

import os
import subprocess
import time
import wave
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from audio_checks import assert_tone, step_times, step_tone
from conftest import need_program
from stepping import RtpSink, send_tone
from test_rtp_output import add_output, api

from gateway.codecs.g711 import ulaw_decode
from gateway.recording.wav import WavWriter

STEPS = [400.0, 700.0, 1000.0, 1300.0, 1600.0, 1900.0, 2200.0, 2500.0, 2800.0, 3100.0]
STEP_FRAMES = step_tone(STEPS)
#: Samples an Opus decoder drops from the start (the encoder's look-ahead, in OpusHead).
OPUS_PRE_SKIP = 312


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()


def decode_opus(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    pcm = np.concatenate(chunks)
    if pcm.dtype != np.int16:
        pcm = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
    return pcm, 48000


async def start_recording(gw, stream: str, **body) -> dict:
    status, rec = await api(gw, "POST", f"/api/v1/streams/{stream}/outputs",
                            {"type": "recording", **body})
    assert status == 201, rec
    return rec


async def stop_recording(gw, stream: str, rec: dict) -> None:
    status, _ = await api(gw, "DELETE", f"/api/v1/streams/{stream}/outputs/{rec['id']}")
    assert status == 204


async def recording_file(gw, rec: dict) -> Path:
    status, listing = await api(gw, "GET", "/api/v1/recordings")
    assert status == 200
    [item] = [r for r in listing["recordings"] if r["file"].startswith(rec["file"][:-5])]
    return gw.gateway.recordings.store.path_of(item["id"])


def check_steps(pcm: np.ndarray, first: int) -> None:
    """Each frequency change in the file lies where the sender made it: sender frame 50k
    is file frame 50k - ``first``, so step k starts at (50k - first) * 20 ms; step_times
    finds it in the 10 ms window after that (reported at its middle). No frame lost,
    doubled or moved."""
    changes = step_times(pcm, 48000, STEPS)
    frames = len(pcm) // 960
    expected = [((50 * k - first) * 0.02 + 0.005, STEPS[k % len(STEPS)])
                for k in range(1, (first + frames) // 50 + 1) if 0 < 50 * k - first < frames]
    assert len(changes) == len(expected) >= 9, (changes, expected)
    for (t, f), (want_t, want_f) in zip(changes, expected, strict=True):
        assert f == want_f, f"step to {want_f} Hz at {want_t:.3f} s heard as {f} Hz"
        assert abs(t - want_t) < 0.005, f"the step due at {want_t:.3f} s is at {t:.3f} s"


async def test_ten_seconds_of_tone_steps_in_wav_and_opus(stepped_gateway):
    gw = stepped_gateway
    sender = send_tone(gw, "steps", step_tone(STEPS))
    await gw.step(25)
    wav_rec = await start_recording(gw, "steps", format="wav")
    opus_rec = await start_recording(gw, "steps", format="opus")
    first = sender.index  # the sender's frame the next tick writes: frame 0 of both files
    await gw.step(500)
    await stop_recording(gw, "steps", wav_rec)
    await stop_recording(gw, "steps", opus_rec)

    samples, rate = read_wav(await recording_file(gw, wav_rec))
    assert rate == 48000 and len(samples) == 500 * 960
    assert np.array_equal(samples, np.concatenate([STEP_FRAMES(first + i) for i in range(500)]))
    check_steps(samples, first)
    opus, _ = decode_opus(await recording_file(gw, opus_rec))  # the decoder drops pre-skip
    assert len(opus) == 500 * 960 - OPUS_PRE_SKIP, len(opus)
    check_steps(opus, first)


async def test_stopping_during_a_flush_keeps_the_frames_being_written(stepped_gateway,
                                                                       monkeypatch):
    """A stop that arrives while a second of audio is in the writer thread waits for it:
    the file ends with that second, not without it (and not finalized under it)."""
    gw = stepped_gateway
    slow_write = WavWriter.write

    def write(self, pcm):
        time.sleep(0.3)  # a slow disk: the stop below lands inside this write
        slow_write(self, pcm)

    monkeypatch.setattr(WavWriter, "write", write)
    send_tone(gw, "flush", 440)
    rec = await start_recording(gw, "flush", format="wav")
    await gw.step(100)  # two flushes; the second is still being written
    await stop_recording(gw, "flush", rec)
    samples, _ = read_wav(await recording_file(gw, rec))
    assert len(samples) == 100 * 960


async def test_recordings_api_lists_downloads_with_range_and_deletes(stepped_gateway):
    gateway = stepped_gateway
    send_tone(gateway, "tone", 440)
    rec = await start_recording(gateway, "tone", format="wav", sample_rate=16000)
    await gateway.step(75)
    status, listing = await api(gateway, "GET", "/api/v1/recordings")
    [live] = [r for r in listing["recordings"] if r["in_progress"]]
    assert live["stream"] == "tone" and live["format"] == "wav"
    await gateway.step(50)
    await stop_recording(gateway, "tone", rec)
    status, listing = await api(gateway, "GET", "/api/v1/recordings")
    [done] = [r for r in listing["recordings"] if r["id"] == live["id"]]
    assert not done["in_progress"] and done["duration_s"] == 2.5
    url = f"{gateway.url}/api/v1/recordings/{done['id']}"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200 and r.content_type == "audio/wav"
            whole = await r.read()
        async with http.get(url, headers={"Range": "bytes=44-1043"}) as r:
            assert r.status == 206 and await r.read() == whole[44:1044]
    path = gateway.gateway.recordings.store.path_of(done["id"])
    samples, rate = read_wav(path)
    assert rate == 16000 and len(samples) == 2.5 * rate
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=1.5)
    status, _ = await api(gateway, "DELETE", f"/api/v1/recordings/{done['id']}")
    assert status == 204 and not path.exists()
    status, _ = await api(gateway, "GET", f"/api/v1/recordings/{done['id']}")
    assert status == 404


@pytest.mark.parametrize("name", ["x..", "a~b.c-d_e", "UPPER.lower", "0"])
async def test_unusual_stream_names_record_inside_the_directory(stepped_gateway, name):
    gateway = stepped_gateway
    rec = await start_recording(gateway, name)
    await gateway.step(15)
    await stop_recording(gateway, name, rec)
    root = gateway.gateway.recordings.store.directory.resolve()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files and all(p.resolve().is_relative_to(root) for p in files)


async def test_traversal_names_and_ids_are_refused(gateway):
    for name in ("..%2F..%2Fetc%2Fx", "%2E%2E"):
        status, _ = await api(gateway, "POST", f"/api/v1/streams/{name}/outputs",
                              {"type": "recording"})
        assert status in (400, 404)
    for rid in ("Li4vLi4vZXRjL3Bhc3N3ZA", "..", "%2E%2E%2Fx"):
        status, _ = await api(gateway, "GET", f"/api/v1/recordings/{rid}")
        assert status == 404


async def test_bad_recording_requests(gateway):
    for body, fieldname in (({"format": "mp3"}, "format"), ({"sample_rate": 44100}, "sample_rate"),
                            ({"format": "opus", "sample_rate": 16000}, "sample_rate"),
                            ({"colour": "red"}, "colour")):
        status, problem = await api(gateway, "POST", "/api/v1/streams/x/outputs",
                                    {"type": "recording", **body})
        assert status == 400 and problem["errors"][0]["field"] == fieldname, problem


async def test_unwritable_directory_is_a_clear_error(gateway_factory, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    gw = await gateway_factory(recording={"directory": str(blocker / "rec")})
    status, problem = await api(gw, "POST", "/api/v1/streams/x/outputs", {"type": "recording"})
    assert status == 500 and "cannot record" in problem["detail"], problem


async def test_full_disk_stops_the_recording_with_an_event_and_forwarding_goes_on(
    gateway_factory, tmp_path, caplog
):
    if os.geteuid() != 0:
        need_program("__root_for_tmpfs__")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        gw = await gateway_factory(stepped=True, recording={"directory": str(mount)})
        send_tone(gw, "tone", 440)
        sink = RtpSink()
        await add_output(gw, "tone", host="127.0.0.1", port=sink.port, codec="PCMU")
        events = gw.gateway.events.subscribe("tone")
        rec = await start_recording(gw, "tone", format="wav")  # 96 kB/s: full in ~3 s
        recorder = gw.gateway.recordings.find(rec["id"])
        for _ in range(50):
            await gw.step(10)
            if recorder.state != "recording":
                break
        got = []
        while not events.queue.empty():
            got.append(events.queue.get_nowait())
        [event] = [e for e in got if e["type"] == "recording_failed"]
        assert "No space left on device" in event["error"]
        status, info = await api(gw, "GET", f"/api/v1/streams/tone/outputs/{rec['id']}")
        assert info["state"] == "failed" and "No space left" in info["error"]
        assert "No space left on device" in caplog.text
        # Its file stays, unfinished (the next start finishes it), not "in progress".
        status, listing = await api(gw, "GET", "/api/v1/recordings")
        [item] = listing["recordings"]
        assert not item["in_progress"] and not item["recovered"], item
        assert item["error"].startswith("recording failed: No space left on device"), item
        files = sorted(mount.rglob("*"))
        status, problem = await api(gw, "POST", "/api/v1/streams/tone/outputs",
                                    {"type": "recording"})
        assert status == 507, problem
        assert sorted(mount.rglob("*")) == files  # no empty file left claiming a name
        before = len(sink.drain())
        await gw.step(100)
        after = sink.drain()[before:]
        assert len(after) == 100  # every frame still forwarded
        assert_tone(ulaw_decode(b"".join(p[12:] for p in after)), 440, rate=8000,
                    min_seconds=2.0)
        sink.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
