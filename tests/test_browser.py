"""The browser pages against a real Chromium: publish a (fake) microphone, listen to a stream.

Debian's ``chromium`` driven by Playwright for Python (never ``playwright install``). ICE runs
on loopback: the gateway offers only 127.0.0.1, and ``--allow-loopback-in-peer-connection``
makes Chromium gather a 127.0.0.1 candidate too. Chromium still tends to nominate the pair
from its non-loopback host address to 127.0.0.1, which the kernel delivers over ``lo``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from audio_checks import active, assert_tone, write_wav
from conftest import need_program
from playwright.async_api import BrowserContext, Page, async_playwright

from gateway.core.headroom import Refusal
from gateway.webrtc.client import Listener, Publisher, ToneTrack

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

pytestmark = [pytest.mark.peer("chromium"), pytest.mark.timeout(60)]


def write_tone_wav(path: Path, freq: float, seconds: float = 20.0, rate: int = 48000) -> Path:
    """A 48 kHz mono 16-bit WAV of a sine at half scale (Chromium loops it as the mic)."""
    n = np.arange(int(seconds * rate))
    return write_wav(path, (np.sin(2 * np.pi * freq * n / rate) * 0.5 * 32767).astype(np.int16),
                     rate)


@asynccontextmanager
async def chromium(tmp_path: Path, fake_audio: Path | None = None,
                   extra_args: tuple[str, ...] = ()) -> AsyncIterator[Page]:
    """A fresh headless Chromium profile; yields a page whose console errors are collected."""
    args = [*FLAGS, *extra_args]
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    async with async_playwright() as pw:
        context: BrowserContext = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=args
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(15_000)
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await context.close()


async def text_becomes(page: Page, selector: str, text: str, timeout: float = 15_000) -> None:
    await page.wait_for_function(
        "([sel, text]) => document.querySelector(sel).textContent.trim() === text",
        arg=[selector, text],
        timeout=timeout,
    )


async def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_chromium_publishes_its_microphone_and_an_aiortc_listener_hears_it(
    gateway, tmp_path, artifacts
):
    need_program(CHROMIUM)
    wav = write_tone_wav(tmp_path / "tone440.wav", 440)
    async with chromium(tmp_path, wav) as page:
        await page.goto(f"{gateway.url}/publish?stream=browser-mic")
        await page.click("#start")
        await text_becomes(page, "#status", "publishing")
        stream = gateway.gateway.registry.streams["browser-mic"]
        assert stream.source is not None and stream.source.codec.name.lower() == "opus"

        listener = Listener(gateway.url, "browser-mic")
        await listener.negotiate()
        await listener.connected()
        await wait_until(
            lambda: len(active(listener.audio())) >= 3.5 * 48000, 12, "3.5 s of audible audio"
        )
        assert_tone(active(listener.audio()), 440)
        # the page's own meter saw the microphone
        assert await page.eval_on_selector("#level", "m => m.value") > 0.05
        assert int(await page.text_content("#sent")) > 0
        await page.screenshot(path=str(artifacts / "browser-publish.png"))

        await page.click("#stop")
        await text_becomes(page, "#status", "stopped")
        await wait_until(lambda: stream.source is None, 5, "the publisher to be gone")
        assert await listener.delete() == 200


async def test_aiortc_publishes_and_the_chromium_listen_page_plays_it(gateway, tmp_path, artifacts):
    need_program(CHROMIUM)
    publisher = Publisher(gateway.url, "tone880", ToneTrack(880))
    await publisher.negotiate()
    await publisher.connected()
    async with chromium(tmp_path) as page:
        offers = []
        page.on("request", lambda r: offers.append(r) if "/whep/" in r.url else None)
        await page.goto(f"{gateway.url}/listen?stream=tone880&token=s3cret")
        await page.click("#play")
        await text_becomes(page, "#status", "playing")
        # the optional ?token= travels as a bearer token (access control comes later)
        assert offers[0].method == "POST"
        assert await offers[0].header_value("authorization") == "Bearer s3cret"
        assert int(await page.text_content("#samples")) > 0
        await page.locator("#sender").filter(has_text="connected").wait_for()
        # the AnalyserNode on the received stream hears the 880 Hz tone (bins are 23 Hz wide)
        await page.wait_for_function("document.getElementById('level').value > 0.05")
        peak = await page.text_content("#peak")
        hz = float(peak.split("~")[1].split()[0])
        assert abs(hz - 880) < 30, peak
        # the gateway's own meter, fed by the live SSE feed, shows the 0.3-scale tone
        await page.wait_for_function("document.getElementById('gwlevel').value > -20")
        # short-term loudness needs its 3 s window first
        await page.locator("#gwinfo").filter(has_text="LUFS").wait_for(timeout=6000)
        info = await page.text_content("#gwinfo")
        assert "dBFS RMS" in info and "sound" in info, info
        await page.screenshot(path=str(artifacts / "browser-listen.png"))
        stream = gateway.gateway.registry.streams["tone880"]
        assert len(stream.outputs) == 1

        # the stream list shows the live sender and the browser as a listener
        index = await page.context.new_page()
        await index.goto(f"{gateway.url}/")
        row = index.locator('tr[data-stream="tone880"]')
        await row.locator(".listeners").filter(has_text="1").wait_for()
        assert "connected" in await row.locator(".sender").text_content()
        await index.screenshot(path=str(artifacts / "browser-index.png"))
        await index.close()

        await page.click("#stop")
        await text_becomes(page, "#status", "stopped")
        await wait_until(lambda: not stream.outputs, 5, "the listener to be gone")
    assert await publisher.delete() == 200


async def test_the_listen_page_tries_again_when_the_gateway_is_busy(gateway, tmp_path):
    """A 503 with Retry-After is not the end: the page says so, waits and asks again."""
    need_program(CHROMIUM)
    publisher = Publisher(gateway.url, "busy", ToneTrack(440))
    await publisher.negotiate()
    await publisher.connected()
    admission = gateway.gateway.admission
    answers = [Refusal("the gateway is at capacity: busy setting up sessions", 1)] * 2
    admission.admit = lambda kind: answers.pop(0) if answers else None
    async with chromium(tmp_path) as page:
        posts = []
        page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
        await page.goto(f"{gateway.url}/listen?stream=busy")
        await page.click("#play")
        await text_becomes(page, "#status", "gateway busy, trying again in 1 s")
        await text_becomes(page, "#status", "playing")
        assert len(posts) == 3 and not answers
        await page.wait_for_function("document.getElementById('level').value > 0.05")
        peak = await page.text_content("#peak")
        assert abs(float(peak.split("~")[1].split()[0]) - 440) < 30, peak
        await page.click("#stop")
    assert await publisher.delete() == 200


#: The listen page's peer connection: what Chromium received and what the gateway's
#: RTCP sender reports told it (remote-outbound-rtp exists only once an SR arrived).
RECEIVED_JS = """async () => {
  const out = {};
  for (const s of (await pc.getStats()).values()) {
    if (s.type === "inbound-rtp" && s.kind === "audio") out.inbound = s;
    if (s.type === "remote-outbound-rtp" && s.kind === "audio") out.reports = s;
  }
  return JSON.parse(JSON.stringify(out));
}"""


async def test_chromium_and_aiortc_listeners_hear_440_hz_from_one_webrtc_fanout(
    gateway, tmp_path
):
    """A real browser among aiortc listeners of one stream: all are sent by the same
    fan-out (one reader of the shared encoder's ring), Chromium plays the 440 Hz tone
    without loss and receives the gateway's RTCP sender reports for its own SSRC."""
    from gateway.egress.webrtc_fanout import WebRTCFanout

    need_program(CHROMIUM)
    publisher = Publisher(gateway.url, "fan440", ToneTrack(440))
    await publisher.negotiate()
    await publisher.connected()
    listeners = [Listener(gateway.url, "fan440") for _ in range(2)]
    for lis in listeners:
        await lis.negotiate()
        await lis.connected()
    async with chromium(tmp_path) as page:
        await page.goto(f"{gateway.url}/listen?stream=fan440")
        await page.click("#play")
        await text_becomes(page, "#status", "playing")
        [encoder] = gateway.gateway.registry.streams["fan440"].egress.values()
        fanout = WebRTCFanout._by_encoder[encoder]
        await wait_until(lambda: len(fanout.paths) == 3, 5, "three listeners on the fan-out")
        assert encoder.packets.readers == 1, "listeners must not each read the encoder's ring"
        # Chromium's AnalyserNode hears 440 Hz (bins are 23 Hz wide)
        await page.wait_for_function("document.getElementById('level').value > 0.05")
        peak = await page.text_content("#peak")
        assert abs(float(peak.split("~")[1].split()[0]) - 440) < 30, peak
        deadline = time.monotonic() + 10
        while True:
            got = await page.evaluate(RECEIVED_JS)
            reports = got.get("reports", {})
            if reports.get("reportsSent", 0) >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        inbound = got["inbound"]
        assert inbound["packetsReceived"] > 100 and inbound["packetsLost"] == 0, inbound
        assert inbound["totalSamplesReceived"] > 2 * 48000, inbound
        assert reports.get("reportsSent", 0) >= 3, f"no RTCP sender reports reached Chromium: {got}"
        assert reports["ssrc"] == inbound["ssrc"]
        # an SR counts what was sent before it, and Chromium received nearly all of that
        assert 0 < reports["packetsSent"] <= inbound["packetsReceived"] + 60, got
        # no DELETE: closing the peer connection sends a DTLS close_notify, which ends
        # the session on the gateway and takes it off the fan-out
        await page.evaluate("pc.close()")
        await wait_until(lambda: len(fanout.paths) == 2, 5, "Chromium to leave the fan-out")
        await wait_until(lambda: len(gateway.gateway.registry.streams["fan440"].outputs) == 2,
                         5, "Chromium's session to end")
    for lis in listeners:
        assert_tone(active(lis.audio()), 440, min_seconds=2)
        assert await lis.delete() == 200
    assert await publisher.delete() == 200
