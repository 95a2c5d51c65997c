"""The browser pages against a real Chromium: publish a (fake) microphone, listen to a stream.

Debian's ``chromium`` driven by Playwright for Python (never ``playwright install``). ICE runs
on loopback: the gateway offers only 127.0.0.1, and ``--allow-loopback-in-peer-connection``
makes Chromium gather a 127.0.0.1 candidate too. Chromium still tends to nominate the pair
from its non-loopback host address to 127.0.0.1, which the kernel delivers over ``lo``.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from audio_checks import active, assert_tone
from conftest import need_program
from playwright.async_api import BrowserContext, Page, async_playwright

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
    tone = (np.sin(2 * np.pi * freq * n / rate) * 0.5 * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone.tobytes())
    return path


@asynccontextmanager
async def chromium(tmp_path: Path, fake_audio: Path | None = None) -> AsyncIterator[Page]:
    """A fresh headless Chromium profile; yields a page whose console errors are collected."""
    args = list(FLAGS)
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
        assert len(stream.listeners) == 1

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
        await wait_until(lambda: not stream.listeners, 5, "the listener to be gone")
    assert await publisher.delete() == 200
