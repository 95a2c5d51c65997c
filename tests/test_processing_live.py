"""Live processing on running streams: meters read right, the silence alarm fires and
clears, plug-ins that are slow or broken never cost the listeners a frame, and automatic
recording follows the config."""

from __future__ import annotations

import asyncio
import socket
import struct
from itertools import pairwise

from audio_checks import assert_tone
from conftest import free_port
from stepping import LockstepRtp, RtpSink, send_tone
from test_rtp_output import add_output, api

from gateway.codecs.g711 import ulaw_decode


async def l16_input(gw, stream: str) -> LockstepRtp:
    """A 48 kHz L16 RTP input (lossless: the level that arrives is the level sent) and a
    sender that plays one packet per step of the gateway's stepped clock."""
    port = free_port(socket.SOCK_DGRAM)
    status, body = await api(gw, "POST", f"/api/v1/streams/{stream}/inputs",
                             {"port": port, "codec": "L16", "rate": 48000})
    assert status == 201, body
    return LockstepRtp(gw, port, body["id"], stream)


async def test_full_scale_sine_reads_minus_3_dbfs_and_loudness_is_reported(stepped_gateway):
    rtp = await l16_input(stepped_gateway, "meter")
    await rtp.send(4.0, 32767)
    status, stream = await api(stepped_gateway, "GET", "/api/v1/streams/meter")
    analysis = stream["analysis"]
    assert analysis["frames"] == 200
    assert abs(analysis["rms_dbfs"] - -3.01) <= 0.1, analysis
    assert abs(analysis["peak_dbfs"]) <= 0.1
    # a 1 kHz sine at -3.01 dBFS RMS: BS.1770 gives -3.01 + 0.69 (K-weighting at 1 kHz)
    assert abs(analysis["short_term_lufs"] - -3.0) <= 0.5, analysis
    assert analysis["voice"] is True and analysis["silence_alarm"] is False
    rtp.close()


async def test_silence_alarm_fires_and_clears_at_the_configured_times(gateway_factory):
    gw = await gateway_factory(stepped=True, processing={"silence_after_s": 1.0})
    rtp = await l16_input(gw, "quiet")
    events = gw.gateway.events.subscribe("quiet")
    await rtp.send(1.0, 8000)
    silent_from = await rtp.send(2.0, 0)
    loud_from = await rtp.send(0.5, 8000)
    got = []
    while not events.queue.empty():
        got.append(events.queue.get_nowait())
    alarms = [e for e in got if e["type"] == "silence"]
    assert [e["state"] for e in alarms] == ["raised", "cleared"], got
    raised, cleared = alarms
    # stream frame numbers: raised on the 50th silent frame (after_s = 1 s), cleared on
    # the first loud one
    assert silent_from == 50 and loud_from == 150
    assert raised["frame"] == silent_from + 49, raised
    assert cleared["frame"] == loud_from, cleared
    rtp.close()


async def test_slow_and_raising_plugins_cost_listeners_nothing(gateway_factory):
    gw = await gateway_factory(stepped=True, processing={"plugins": [
        {"stream": "p", "processor": "plugins_for_tests:Slow"},
        {"stream": "p", "processor": "plugins_for_tests:Raises"},
    ]})
    events = gw.gateway.events.subscribe("p")
    send_tone(gw, "p", 440)
    sinks = [RtpSink() for _ in range(3)]
    for sink, codec in zip(sinks, ["PCMU", "PCMA", "G722"], strict=True):
        await add_output(gw, "p", host="127.0.0.1", port=sink.port, codec=codec)
    await gw.step(300)
    for sink in sinks:  # every frame reached every listener, in order
        seqs = [struct.unpack("!H", p[2:4])[0] for p in sink.drain()]
        assert len(seqs) == 300 and all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
    pcmu = ulaw_decode(b"".join(p[12:] for p in sinks[0].packets))
    assert_tone(pcmu, 440, rate=8000, min_seconds=6.0)
    status, stream = await api(gw, "GET", "/api/v1/streams/p")
    slow, raises = stream["analysis"]["plugins"]
    assert slow["state"] == "running" and slow["dropped"] > 200
    assert raises["state"] == "failed" and "plug-in bug on purpose" in raises["error"]
    async with asyncio.timeout(5):  # the slow plug-in goes on at its own pace (200 ms)
        while gw.gateway.processing.streams["p"].runners[0].processed < 2:
            await asyncio.sleep(0.05)
    await gw.step(5)  # results are collected every 5 frames
    types = []
    while not events.queue.empty():
        types.append(events.queue.get_nowait()["type"])
    assert "plugin_failed" in types and "plugin_result" in types
    for sink in sinks:
        sink.close()


async def test_streams_matching_the_config_are_recorded_automatically(gateway_factory):
    gw = await gateway_factory(stepped=True,
                               recording={"auto": ["auto-*"], "record_gaps": False})
    sender = send_tone(gw, "auto-1", 440)
    async with asyncio.timeout(5):  # started by a task when the stream appeared
        while not gw.gateway.recordings.active:
            await asyncio.sleep(0.01)
    await gw.step(50)
    status, outputs = await api(gw, "GET", "/api/v1/streams/auto-1/outputs")
    [rec] = [o for o in outputs["outputs"] if o["type"] == "recording"]
    assert rec["state"] == "recording"
    gw.gateway.registry.get("auto-1").detach(sender)
    await gw.step(50)  # no sender: gaps are left out with record_gaps = false
    status, outputs = await api(gw, "GET", "/api/v1/streams/auto-1/outputs")
    [rec] = [o for o in outputs["outputs"] if o["type"] == "recording"]
    assert rec["gap_frames"] == 50
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
