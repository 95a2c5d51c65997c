"""kill -9 while recording: the next start repairs the file, lists it, and it holds
everything up to at most one second before the kill; a start on a full disk leaves the
files consistent for the start after it."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
import soundfile
from audio_checks import assert_tone
from conftest import free_port, need_program

from gateway.webrtc.client import Publisher, ToneTrack


async def start_gateway(config_path, port: int, log: Path | None = None
                        ) -> asyncio.subprocess.Process:
    stderr = open(log, "ab") if log else asyncio.subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )
    finally:
        if log:
            stderr.close()
    async with aiohttp.ClientSession() as http:
        for _ in range(150):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("gateway did not start")


async def test_kill_9_loses_at_most_the_last_second(tmp_path):
    port = free_port()
    recordings = tmp_path / "recordings"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[http]\nport = {port}\n[sip]\nenabled = false\n'
        f'[webrtc]\nhost_addresses = ["127.0.0.1"]\n'
        f'[recording]\ndirectory = "{recordings}"\n'
    )
    url = f"http://127.0.0.1:{port}"
    proc = await start_gateway(config, port)
    pub = Publisher(url, "live", ToneTrack(440))
    try:
        await pub.negotiate()
        await pub.connected()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/v1/streams/live/outputs",
                                 json={"type": "recording", "format": "wav"}) as r:
                assert r.status == 201, await r.text()
        started = time.monotonic()
        await asyncio.sleep(random.uniform(2.0, 3.5))  # at any point of a second
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        await proc.wait()
    finally:
        await pub.pc.close()
    elapsed = killed - started

    proc = await start_gateway(config, port)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/v1/recordings") as r:
                listing = await r.json()
    finally:
        proc.terminate()
        await proc.wait()
    [item] = listing["recordings"]
    assert item["recovered"] and not item["in_progress"] and item["stream"] == "live"
    [path] = list(recordings.rglob("*.wav"))
    data, rate = soundfile.read(path, dtype="int16")
    duration = len(data) / rate
    assert elapsed - 1.0 - 0.1 <= duration <= elapsed + 0.1, (duration, elapsed)
    assert abs(item["duration_s"] - duration) < 0.05
    assert_tone(data[-rate:], 440, rate=rate, min_seconds=1.0)  # real audio to the end


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root only), unmounted at the end."""
    if os.geteuid() != 0:
        need_program("__root_for_tmpfs__")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


async def recordings_listing(url: str) -> list[dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v1/recordings") as r:
        assert r.status == 200
        return (await r.json())["recordings"]


def decode_opus(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return (np.clip(pcm, -1, 1) * 32767).astype(np.int16)


async def test_restart_on_a_full_disk_then_with_space(small_disk, tmp_path):
    """A WAV and an Ogg/Opus recording are killed; the gateway restarts while the disk is
    still full: both files stay ``.part``, playable, listed as unfinished with the reason
    and not in progress, and nothing is left half-written. The next start with space
    finishes both: recovered, and the tone is in them."""
    port = free_port()
    recordings = small_disk / "rec"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[http]\nport = {port}\n[sip]\nenabled = false\n'
        f'[webrtc]\nhost_addresses = ["127.0.0.1"]\n'
        f'[recording]\ndirectory = "{recordings}"\n'
    )
    url = f"http://127.0.0.1:{port}"
    proc = await start_gateway(config, port)
    pub = Publisher(url, "live", ToneTrack(440))
    try:
        await pub.negotiate()
        await pub.connected()
        async with aiohttp.ClientSession() as http:
            for fmt in ("wav", "opus"):
                async with http.post(f"{url}/api/v1/streams/live/outputs",
                                     json={"type": "recording", "format": fmt}) as r:
                    assert r.status == 201, await r.text()
        await asyncio.sleep(3.0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        await pub.pc.close()
    parts = sorted(recordings.rglob("*.part"))
    assert sorted(p.suffixes[-2] for p in parts) == [".opus", ".wav"]
    filler = fill(small_disk)

    log = tmp_path / "full.log"
    proc = await start_gateway(config, port, log)
    try:
        listing = await recordings_listing(url)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/v1/streams/live/outputs",
                                 json={"type": "recording"}) as r:
                assert r.status == 507, await r.text()  # and claims no file name
            async with http.get(f"{url}/api/v1/recordings/{listing[0]['id']}") as r:
                assert r.status == 200
                downloaded = await r.read()
    finally:
        proc.terminate()
        await proc.wait()
    files = [p for p in recordings.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp") or p.stat().st_size == 0]
    assert sorted(recordings.rglob("*.part")) == parts  # not renamed, not broken
    assert len(files) == 4  # the two recordings and their sidecars
    assert len(listing) == 2
    for item in listing:
        assert not item["in_progress"] and not item["recovered"], item
        assert "No space left on device" in item["error"], item
    assert downloaded == (recordings / "live" / (listing[0]["file"] + ".part")).read_bytes()
    assert "is left unfinished: not recovered: No space left on device" in log.read_text()
    wav_part = next(p for p in parts if p.name.endswith(".wav.part"))
    data, rate = soundfile.read(wav_part, dtype="int16")  # its header was repaired in place
    assert len(data) / rate >= 1.5
    assert_tone(data[-rate:], 440, rate=rate, min_seconds=1.0)

    filler.unlink()
    proc = await start_gateway(config, port)
    try:
        listing = await recordings_listing(url)
    finally:
        proc.terminate()
        await proc.wait()
    assert len(listing) == 2
    for item in listing:
        assert item["recovered"] and not item["in_progress"] and item["error"] is None, item
        path = recordings / "live" / item["file"]
        if item["format"] == "wav":
            data, rate = soundfile.read(path, dtype="int16")
        else:
            data, rate = decode_opus(path), 48000
        assert abs(len(data) / rate - item["duration_s"]) < 0.05, item
        assert item["duration_s"] >= 1.5, item
        assert_tone(data[-rate:], 440, rate=rate, min_seconds=1.0)
    assert not list(recordings.rglob("*.part")) and not list(recordings.rglob("*.tmp"))
