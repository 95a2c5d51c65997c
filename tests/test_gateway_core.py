"""The Gateway without its web app: built, started and fed audio through its own API, as a
worker process or another transport would drive it."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from audio_checks import assert_tone, rms_dbfs

from gateway.codecs.g711 import ulaw_encode
from gateway.config import load
from gateway.core.clock import SteppedClock
from gateway.gateway import Gateway
from gateway.io_requests import parse_input

ROOT = Path(__file__).parent.parent


async def test_a_gateway_without_a_web_app_plays_an_rtp_input_into_its_stream(tmp_path):
    config = load(None, {"sip": {"enabled": False},
                         "recording": {"directory": str(tmp_path)}})
    clock = SteppedClock()
    gw = Gateway(config, clock)
    await gw.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await asyncio.sleep(0)  # the media clock's task parks on the stepped clock
        stream = gw.registry.get_or_create("tone")
        rtp_input = await gw.open_rtp_input(stream, **parse_input({"port": 0, "codec": "PCMU"}))
        assert gw.rtp_inputs == {rtp_input.id: rtp_input} and stream.source is rtp_input

        first = stream.ring.head
        n = np.arange(8000)
        pcm = (np.sin(2 * np.pi * 660 * n / 8000) * 12000).astype(np.int16)
        for seq in range(40):  # 0.8 s, one 20 ms packet per tick, played on the next one
            payload = ulaw_encode(pcm[seq * 160 : (seq + 1) * 160])
            header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5EED)
            received = rtp_input.playout.jitter.stats.received
            sender.sendto(header + payload, ("127.0.0.1", rtp_input.port))
            async with asyncio.timeout(2):
                while rtp_input.playout.jitter.stats.received == received:
                    await asyncio.sleep(0)
            await clock.step(1)

        frames = [stream.ring.get(i) for i in range(first, stream.ring.head)]
        assert len(frames) == 40
        tone_dbfs = 20 * np.log10(12000 / np.sqrt(2) / 32768)  # -11.7
        assert all(abs(rms_dbfs(f) - tone_dbfs) < 1 for f in frames)  # no gap, no silence
        assert_tone(np.concatenate(frames), 660, min_seconds=0.8)
        assert rtp_input.info().packets == 40
    finally:
        sender.close()
        await gw.stop()
    assert rtp_input.closed and stream.source is None


def test_importing_the_gateway_does_not_import_the_web_stack():
    code = ("import sys, gateway.gateway; "
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'aiohttp' or m.split('.')[:2] in (['gateway', 'web'], "
            "['gateway', 'app'])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
