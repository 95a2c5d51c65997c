"""A third-party WHIP publisher: GStreamer's webrtcbin (RSA DTLS certificate)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from audio_checks import active, assert_tone
from conftest import REQUIRE_PEERS, need_program

from gateway.webrtc import aiortc_patches
from gateway.webrtc.client import Listener

SCRIPT = Path(__file__).parent / "peers" / "gst_whip_publish.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def need_webrtcbin() -> None:
    need_program(SYSTEM_PYTHON, "gst-launch-1.0")
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('Gst', '1.0'); "
            "gi.require_version('GstWebRTC', '1.0'); gi.require_version('GstSdp', '1.0'); "
            "from gi.repository import Gst, GstSdp, GstWebRTC; Gst.init(None); "
            "assert all(Gst.ElementFactory.find(e) for e in "
            "('webrtcbin', 'nicesrc', 'opusenc', 'rtpopuspay', 'dtlssrtpenc'))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        message = f"GStreamer webrtcbin / python3-gi unavailable: {probe.stderr[-300:]}"
        if REQUIRE_PEERS:
            pytest.fail(message)
        pytest.skip(message)


async def publish(url: str, freq: float, seconds: float, on_tick=None) -> tuple[int, str]:
    """Run the GStreamer publisher to the end; its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        str(SCRIPT),
        url,
        str(freq),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    done = asyncio.ensure_future(proc.communicate())
    try:
        async with asyncio.timeout(seconds + 20):
            while not done.done():
                if on_tick:
                    on_tick()
                await asyncio.wait([done], timeout=0.1)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    _, err = await done
    return proc.returncode, err.decode(errors="replace")


async def test_gstreamer_webrtcbin_publishes_and_a_whep_listener_hears_it(gateway):
    need_webrtcbin()
    lis = Listener(gateway.url, "gst")
    await lis.negotiate()
    await lis.connected()
    sender_states: set[str] = set()

    def watch_sender() -> None:
        stream = gateway.gateway.registry.streams.get("gst")
        if stream is not None and stream.source is not None:
            sender_states.add(stream.source.pc.connectionState)

    code, err = await publish(f"{gateway.url}/whip/gst", 660, 6, watch_sender)
    assert code == 0, err[-2000:]
    assert "connected" in sender_states, f"gateway's sender states seen: {sender_states}"
    stream = gateway.gateway.registry.streams["gst"]
    assert stream.senders_total == 1 and stream.frames_from_sender > 200
    assert_tone(active(lis.audio()), 660, min_seconds=4.0)
    assert stream.source is None  # the script DELETEd its session
    await lis.delete()


async def test_gstreamer_needs_the_rsa_dtls_suites(gateway, monkeypatch):
    """Control: with aiortc's own (ECDSA-only) cipher list the same publisher fails.

    GStreamer's DTLS certificate is RSA; aiortc is the DTLS client, so webrtcbin (the
    server) finds no suite it can use with its key and aborts the handshake.
    """
    need_webrtcbin()
    from aiortc.rtcdtlstransport import RTCCertificate

    monkeypatch.setattr(
        RTCCertificate, "_create_ssl_context", aiortc_patches._original_create_ssl_context
    )
    code, err = await publish(f"{gateway.url}/whip/gst", 660, 2)
    assert code != 0, "handshake succeeded without RSA suites: is GStreamer's certificate ECDSA?"
    assert "Fatal SSL error" in err or "peer connection failed" in err, err[-2000:]
    assert gateway.gateway.registry.streams["gst"].frames_from_sender == 0
