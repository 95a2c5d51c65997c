"""Recording a live stream: what is in the file is what was published, at the right time,
in WAV and Ogg/Opus; controlled and downloaded over the API; safe with odd names; a full
disk stops the recording and nothing else."""

from __future__ import annotations

import asyncio
import os
import subprocess
import wave
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from audio_checks import assert_tone, step_times, step_tone
from conftest import need_program
from test_rtp_output import api, publish_tone

from gateway.webrtc.client import Listener, Publisher, ToneTrack

STEPS = [400.0, 700.0, 1000.0, 1300.0, 1600.0, 1900.0, 2200.0, 2500.0, 2800.0, 3100.0]


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


def check_steps(pcm: np.ndarray, step_wall: list[float]) -> None:
    """Each frequency change in the file lies where the publisher made it (± 40 ms), in
    the publisher's order: no frame lost, doubled or moved."""
    changes = step_times(pcm, 48000, STEPS)
    assert len(changes) >= 8, changes
    best = None
    for k0 in range(1, len(step_wall) - len(changes) + 1):
        if STEPS[k0 % len(STEPS)] != changes[0][1]:
            continue
        ks = range(k0, k0 + len(changes))
        if any(STEPS[k % len(STEPS)] != f for k, (_, f) in zip(ks, changes, strict=True)):
            continue
        offsets = np.array([t - step_wall[k] for k, (t, _) in zip(ks, changes, strict=True)])
        spread = np.max(np.abs(offsets - np.median(offsets)))
        if best is None or spread < best:
            best = spread
    assert best is not None, f"steps out of order: {changes}"
    assert best <= 0.04, f"a step is {best * 1000:.0f} ms from where it was published"


async def test_ten_seconds_of_tone_steps_in_wav_and_opus(gateway):
    track = ToneTrack(generator=step_tone(STEPS))
    pub = Publisher(gateway.url, "steps", track)
    await pub.negotiate()
    await pub.connected()
    await asyncio.sleep(0.5)
    wav_rec = await start_recording(gateway, "steps", format="wav")
    opus_rec = await start_recording(gateway, "steps", format="opus")
    await asyncio.sleep(10.0)
    await stop_recording(gateway, "steps", wav_rec)
    await stop_recording(gateway, "steps", opus_rec)
    await pub.delete()
    # publisher step k began when frame 50k was handed over (monotonic clock)
    step_wall = track.sent_at[::50]

    wav_path = await recording_file(gateway, wav_rec)
    samples, rate = read_wav(wav_path)
    assert rate == 48000
    assert abs(len(samples) / rate - 10.0) <= 0.1, len(samples) / rate
    opus_path = await recording_file(gateway, opus_rec)
    opus, _ = decode_opus(opus_path)
    assert abs(len(opus) / 48000 - 10.0) <= 0.1, len(opus) / 48000

    for pcm in (samples, opus):
        check_steps(pcm, step_wall)


async def test_recordings_api_lists_downloads_with_range_and_deletes(gateway):
    pub = await publish_tone(gateway, "tone", 440)
    rec = await start_recording(gateway, "tone", format="wav", sample_rate=16000)
    await asyncio.sleep(1.5)
    status, listing = await api(gateway, "GET", "/api/v1/recordings")
    [live] = [r for r in listing["recordings"] if r["in_progress"]]
    assert live["stream"] == "tone" and live["format"] == "wav"
    await asyncio.sleep(1.0)
    await stop_recording(gateway, "tone", rec)
    await pub.delete()
    status, listing = await api(gateway, "GET", "/api/v1/recordings")
    [done] = [r for r in listing["recordings"] if r["id"] == live["id"]]
    assert not done["in_progress"] and 2.0 <= done["duration_s"] <= 3.0
    url = f"{gateway.url}/api/v1/recordings/{done['id']}"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200 and r.content_type == "audio/wav"
            whole = await r.read()
        async with http.get(url, headers={"Range": "bytes=44-1043"}) as r:
            assert r.status == 206 and await r.read() == whole[44:1044]
    path = gateway.gateway.recordings.store.path_of(done["id"])
    samples, rate = read_wav(path)
    assert rate == 16000
    assert_tone(samples[rate // 2 :], 440, rate=rate, min_seconds=1.5)
    status, _ = await api(gateway, "DELETE", f"/api/v1/recordings/{done['id']}")
    assert status == 204 and not path.exists()
    status, _ = await api(gateway, "GET", f"/api/v1/recordings/{done['id']}")
    assert status == 404


@pytest.mark.parametrize("name", ["x..", "a~b.c-d_e", "UPPER.lower", "0"])
async def test_unusual_stream_names_record_inside_the_directory(gateway, name):
    rec = await start_recording(gateway, name)
    await asyncio.sleep(0.3)
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
        gw = await gateway_factory(recording={"directory": str(mount)})
        pub = await publish_tone(gw, "tone", 440)
        listener = Listener(gw.url, "tone")
        await listener.negotiate()
        await listener.connected()
        events = gw.gateway.events.subscribe("tone")
        rec = await start_recording(gw, "tone", format="wav")  # 96 kB/s: full in ~3 s
        event = await asyncio.wait_for(events.get(), 1)
        while event["type"] != "recording_failed":
            event = await asyncio.wait_for(events.get(), 8)
        assert "No space left on device" in event["error"]
        status, info = await api(gw, "GET", f"/api/v1/streams/tone/outputs/{rec['id']}")
        assert info["state"] == "failed" and "No space left" in info["error"]
        assert "No space left on device" in caplog.text
        before = listener.frames
        await asyncio.sleep(2.0)
        assert listener.frames - before >= 95  # still ~50 frames a second
        assert_tone(listener.audio()[-48000:], 440, min_seconds=1.0)
        await listener.delete()
        await pub.delete()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
