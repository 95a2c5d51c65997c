"""A third-party WHIP publisher: GStreamer's webrtcbin (RSA DTLS certificate)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from audio_checks import active, assert_tone
from conftest import REQUIRE_PEERS, need_program
from OpenSSL import SSL

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
            "gi.require_version('GstWebRTC', '1.0'); from gi.repository import Gst; "
            "Gst.init(None); "
            "assert Gst.ElementFactory.find('webrtcbin')",
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


async def test_gstreamer_webrtcbin_publishes_and_a_whep_listener_hears_it(gateway):
    need_webrtcbin()
    lis = Listener(gateway.url, "gst")
    await lis.negotiate()
    await lis.connected()
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        str(SCRIPT),
        f"{gateway.url}/whip/gst",
        "660",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    tail = err.decode(errors="replace")[-1500:]
    assert proc.returncode == 0, tail
    stream = gateway.gateway.registry.get("gst")
    assert stream.senders_total == 1 and stream.frames_from_sender > 150
    assert_tone(active(lis.audio()), 660)
    assert stream.source is None  # the script DELETEd its session
    await lis.delete()


def test_dtls_context_accepts_rsa_peers():
    """aiortc alone offers only ECDSA suites; GStreamer's RSA certificate needs these."""
    from aiortc.rtcdtlstransport import (
        SRTP_AEAD_AES_128_GCM,
        SRTP_AES128_CM_SHA1_80,
        RTCCertificate,
    )

    aiortc_patches.allow_rsa_dtls_peers()
    cert = RTCCertificate.generateCertificate()
    ctx = cert._create_ssl_context([SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80])
    ciphers = SSL.Connection(ctx).get_cipher_list()
    assert "ECDHE-RSA-AES128-GCM-SHA256" in ciphers
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in ciphers
