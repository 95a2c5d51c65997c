"""kill -9 while recording: the next start repairs the file, lists it, and it holds
everything up to at most one second before the kill."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time

import aiohttp
import soundfile
from audio_checks import assert_tone
from conftest import free_port

from gateway.webrtc.client import Publisher, ToneTrack


async def start_gateway(config_path, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
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
        await asyncio.sleep(random.uniform(3.0, 6.0))
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
