"""Live processing on running streams: meters read right, the silence alarm fires and
clears, plug-ins that are slow or broken never cost the listeners a frame, and automatic
recording follows the config."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import numpy as np
import pytest
from conftest import free_port
from test_rtp_output import api
from test_webrtc_relay import listen

from gateway.webrtc.client import Publisher, ToneTrack


async def send_l16(port: int, seconds: float, amplitude: float, freq: float = 1000.0,
                   start_seq: int = 0) -> None:
    """48 kHz L16 RTP (lossless: the level that arrives is the level sent)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    t0 = time.monotonic()
    for i in range(int(seconds * 50)):
        n = np.arange(i * 960, (i + 1) * 960)
        pcm = (amplitude * np.sin(2 * np.pi * freq * n / 48000)).astype(">i2")
        header = struct.pack("!BBHII", 0x80, 120, (start_seq + i) & 0xFFFF, i * 960, 0xABC)
        await loop.sock_sendto(sock, header + pcm.tobytes(), ("127.0.0.1", port))
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
    sock.close()


async def l16_input(gw, stream: str) -> int:
    port = free_port(socket.SOCK_DGRAM)
    status, body = await api(gw, "POST", f"/api/v1/streams/{stream}/inputs",
                             {"port": port, "codec": "L16", "rate": 48000})
    assert status == 201, body
    return port


async def test_full_scale_sine_reads_minus_3_dbfs_and_loudness_is_reported(gateway):
    port = await l16_input(gateway, "meter")
    await send_l16(port, 4.0, 32767)
    status, stream = await api(gateway, "GET", "/api/v1/streams/meter")
    analysis = stream["analysis"]
    assert abs(analysis["rms_dbfs"] - -3.01) <= 0.1, analysis
    assert abs(analysis["peak_dbfs"]) <= 0.1
    # a 1 kHz sine at -3.01 dBFS RMS: BS.1770 gives -3.01 + 0.69 (K-weighting at 1 kHz)
    assert abs(analysis["short_term_lufs"] - -3.0) <= 0.5, analysis
    assert analysis["voice"] is True and analysis["silence_alarm"] is False


async def test_silence_alarm_fires_and_clears_at_the_configured_times(gateway_factory):
    gw = await gateway_factory(processing={"silence_after_s": 1.0})
    port = await l16_input(gw, "quiet")
    events = gw.gateway.events.subscribe("quiet")
    await send_l16(port, 1.0, 8000)
    silent_from = time.time()
    await send_l16(port, 2.0, 0, start_seq=50)
    loud_from = time.time()
    await send_l16(port, 0.5, 8000, start_seq=150)
    got = []
    while not events.queue.empty():
        got.append(events.queue.get_nowait())
    alarms = [e for e in got if e["type"] == "silence"]
    assert [e["state"] for e in alarms] == ["raised", "cleared"], got
    raised, cleared = alarms
    # the alarm's own frame numbers: exactly after_s = 50 frames of silence
    assert raised["time"] - silent_from == pytest.approx(1.0, abs=0.1)
    assert cleared["time"] - loud_from == pytest.approx(0.0, abs=0.1)
    assert cleared["frame"] - raised["frame"] == pytest.approx(50, abs=2)


async def test_slow_and_raising_plugins_cost_listeners_nothing(gateway_factory):
    gw = await gateway_factory(processing={"plugins": [
        {"stream": "p", "processor": "plugins_for_tests:Slow"},
        {"stream": "p", "processor": "plugins_for_tests:Raises"},
    ]})
    events = gw.gateway.events.subscribe("p")
    track = ToneTrack(440)
    pub = Publisher(gw.url, "p", track)
    await pub.negotiate()
    await pub.connected()
    listeners = [await listen(gw, "p") for _ in range(3)]
    await asyncio.sleep(1.0)
    sent0 = len(track.sent_at)
    got0 = [lis.frames for lis in listeners]
    await asyncio.sleep(5.0)
    sent = len(track.sent_at) - sent0
    for lis, before in zip(listeners, got0, strict=True):
        ratio = (lis.frames - before) / sent
        assert ratio >= 0.99, f"listener got {ratio:.3f} of the frames sent"
    status, stream = await api(gw, "GET", "/api/v1/streams/p")
    slow, raises = stream["analysis"]["plugins"]
    assert slow["state"] == "running" and slow["dropped"] > 200 and slow["processed"] >= 20
    assert raises["state"] == "failed" and "plug-in bug on purpose" in raises["error"]
    types = []
    while not events.queue.empty():
        types.append(events.queue.get_nowait()["type"])
    assert "plugin_failed" in types and "plugin_result" in types
    for client in [pub, *listeners]:
        await client.delete()


async def test_streams_matching_the_config_are_recorded_automatically(gateway_factory):
    gw = await gateway_factory(recording={"auto": ["auto-*"], "record_gaps": False})
    pub = Publisher(gw.url, "auto-1", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()
    await asyncio.sleep(1.0)
    status, outputs = await api(gw, "GET", "/api/v1/streams/auto-1/outputs")
    [rec] = [o for o in outputs["outputs"] if o["type"] == "recording"]
    assert rec["state"] == "recording"
    await pub.delete()
    await asyncio.sleep(1.0)  # no sender: gaps are left out with record_gaps = false
    status, outputs = await api(gw, "GET", "/api/v1/streams/auto-1/outputs")
    [rec] = [o for o in outputs["outputs"] if o["type"] == "recording"]
    assert rec["gap_frames"] >= 40
    status, other = await api(gw, "GET", "/api/v1/streams/other/outputs")
    assert status == 404 or not other["outputs"]


async def test_declared_auto_streams_are_recorded_once_and_listing_needs_no_directory(
    gateway_factory, tmp_path
):
    gw = await gateway_factory(streams={"declared": ["s1", "s2"]},
                               recording={"directory": str(tmp_path / "later"), "auto": ["s1"]})
    await asyncio.sleep(0.3)
    assert [r.stream.name for r in gw.gateway.recordings.active.values()] == ["s1"]
    gw2 = await gateway_factory(recording={"directory": str(tmp_path / "never")})
    status, listing = await api(gw2, "GET", "/api/v1/recordings")
    assert status == 200 and listing["recordings"] == []
