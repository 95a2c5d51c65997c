"""The dashboard at /dashboard against Debian's Chromium (Playwright, never `playwright install`).

aiortc publishes and listens, a scripted phone answers a dial-out; the page is driven like
an operator would: watch the meter, stop a listener, record, add an RTP output, dial.
"""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from conftest import need_program
from sip_phone import Phone, sdp_offer
from test_browser import CHROMIUM, chromium, wait_until

from gateway.core.audio import FRAME_SAMPLES, SAMPLE_RATE
from gateway.egress.webrtc import WebRTCEgress
from gateway.webrtc.client import Listener, Publisher, ToneTrack

pytestmark = [pytest.mark.peer("chromium"), pytest.mark.timeout(90)]


def pulsing_tone(index: int) -> np.ndarray:
    """440 Hz at 0.3 scale for one second, then one second of silence, and again."""
    n = np.arange(index * FRAME_SAMPLES, (index + 1) * FRAME_SAMPLES)
    amplitude = 0.3 if (index // 50) % 2 == 0 else 0.0
    return (np.sin(2 * np.pi * 440 * n / SAMPLE_RATE) * amplitude * 32767).astype(np.int16)


async def publish(gw, stream: str, track: ToneTrack) -> Publisher:
    publisher = Publisher(gw.url, stream, track)
    await publisher.negotiate()
    await publisher.connected()
    return publisher


def listener_sessions(gw, stream: str) -> list[str]:
    return [s.id for s in gw.gateway.sessions.values()
            if isinstance(s, WebRTCEgress) and s.stream.name == stream]


async def test_dashboard_shows_meter_and_listener_and_stops_the_listener(gateway, tmp_path):
    need_program(CHROMIUM)
    publisher = await publish(gateway, "studio", ToneTrack(generator=pulsing_tone))
    async with chromium(tmp_path) as page:
        requests = []
        page.on("request", lambda r: requests.append(r) if "/api/" in r.url else None)
        await page.goto(f"{gateway.url}/dashboard?token=s3cret")
        card = page.locator('section.card[data-stream="studio"]')
        await card.locator(".sender").filter(has_text="connected").wait_for()
        sender = await card.locator(".sender").text_content()
        assert "webrtc" in sender and "opus" in sender and "loss" in sender, sender

        # the meter follows the stream: up with the tone, down in its pauses
        levels = []
        for _ in range(40):  # 4 s at most: two periods of the tone
            levels.append(await card.locator("meter.level").evaluate("m => m.value"))
            if max(levels) > -25 and max(levels) - min(levels) > 8:
                break
            await asyncio.sleep(0.1)
        assert max(levels) > -25, levels
        assert max(levels) - min(levels) > 8, levels
        assert "dBFS" in await card.locator(".level-text").text_content()

        # a WHEP client connects: it appears as a WebRTC listener with its counters
        listener = Listener(gateway.url, "studio")
        await listener.negotiate()
        await listener.connected()
        [session_id] = listener_sessions(gateway, "studio")
        row = card.locator(f'tr[data-kind="webrtc"][data-id="{session_id}"]')
        await row.wait_for()
        await card.locator(".by-kind").filter(has_text="1 WebRTC").wait_for()
        await page.wait_for_function(
            "id => Number(document.querySelector(`tr[data-id='${id}'] td:nth-child(5)`)"
            ".textContent.replace(/,/g, '')) > 0", arg=session_id)

        # stopping it from the dashboard ends the session, on both sides
        await row.locator("button.stop").click()
        await row.wait_for(state="detached")
        await wait_until(lambda: session_id not in gateway.gateway.sessions, 5,
                         "the gateway to end the session")
        await wait_until(lambda: listener.pc.connectionState in ("closed", "failed"), 15,
                         "the aiortc listener's connection to close")
        assert not listener_sessions(gateway, "studio")
        await card.locator(".by-kind").filter(has_text="none").wait_for()

        # every fetch carried the token as a bearer token; the SSE feeds got it in the URL
        feeds = [r for r in requests if "/api/v1/events" in r.url]
        assert feeds and all("token=s3cret" in r.url for r in feeds)
        fetches = [r for r in requests if r.resource_type == "fetch"]
        assert any(r.method == "DELETE" for r in fetches)
        for r in fetches:
            assert await r.header_value("authorization") == "Bearer s3cret", r.url
    await listener.delete()
    await publisher.delete()


async def test_dashboard_records_adds_outputs_dials_and_shows_api_errors(
    gateway_factory, tmp_path, artifacts
):
    need_program(CHROMIUM)
    gw = await gateway_factory(streams={"declared": ["lobby"]})
    publisher = await publish(gw, "studio", ToneTrack(440))
    listener = Listener(gw.url, "studio")
    await listener.negotiate()
    await listener.connected()
    rtp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp_sink.bind(("127.0.0.1", 0))
    rtp_port = rtp_sink.getsockname()[1]
    phone = Phone(gw.gateway.sip.port, "alice")
    try:
        async with chromium(tmp_path) as page:
            await page.set_viewport_size({"width": 1400, "height": 1000})
            await page.goto(f"{gw.url}/dashboard")
            card = page.locator('section.card[data-stream="studio"]')
            await card.locator('tr[data-kind="webrtc"]').wait_for()
            lobby = page.locator('section.card[data-stream="lobby"]')
            await lobby.locator(".sender").filter(has_text="none").wait_for()

            # start a recording: it is listed with its state
            await card.locator("form.record button").click()
            rec = card.locator('tr[data-kind="recording"]')
            await rec.locator(".state").filter(has_text="recording").wait_for()
            [recorder] = gw.gateway.recordings.active.values()
            assert await rec.get_attribute("data-id") == recorder.id
            assert recorder.info().format == "wav"

            # an invalid RTP output: the API's own words appear next to the form
            await card.locator("details.more summary").click()
            form = card.locator("form.rtp")
            await form.locator("input[name=host]").fill("127.0.0.1")
            await form.locator("input[name=port]").fill("99999")
            await form.locator("button").click()
            error = form.locator("output.form-error")
            await error.filter(has_text="must be 1-65534").wait_for()
            assert "Bad Request (400)" in await error.text_content()
            await card.screenshot(path=str(artifacts / "dashboard-rtp-error.png"))
            assert not gw.gateway.rtp_outputs.outputs
            await form.locator("input[name=port]").fill("5x")
            await form.locator("button").click()
            await error.filter(has_text="port: must be an integer").wait_for()

            # a valid one is listed, counting packets; the error goes away
            await form.locator("input[name=port]").fill(str(rtp_port))
            await form.locator("select[name=codec]").select_option("PCMA")
            await form.locator("button").click()
            rtp = card.locator('tr[data-kind="rtp"]')
            await rtp.locator(".target").filter(has_text=f"127.0.0.1:{rtp_port}").wait_for()
            assert await error.text_content() == ""
            [output] = gw.gateway.rtp_outputs.outputs.values()
            assert output.info().codec == "PCMA"
            await page.wait_for_function(
                "() => Number(document.querySelector('tr[data-kind=rtp] td:nth-child(5)')"
                ".textContent.replace(/,/g, '')) > 20")

            # dial out: the phone rings, answers, and the call shows as active
            dial = card.locator("form.dial")
            await dial.locator("input[name=uri]").fill(f"sip:alice@127.0.0.1:{phone.port}")
            await dial.locator("button").click()
            invite = await phone.expect("INVITE")
            await phone.answer(invite, 180)
            call = card.locator('tr[data-kind="sip"]')
            await call.locator(".state").filter(has_text="ringing").wait_for()
            await phone.answer(invite, 200, sdp_offer(phone.rtp_port, "0 101"))
            await phone.expect("ACK")
            await call.locator(".state").filter(has_text="active").wait_for()
            await card.locator(".by-kind").filter(
                has_text="1 WebRTC · 1 recording · 1 RTP · 1 SIP").wait_for()
            await page.wait_for_timeout(1500)  # counters and meters settle for the picture
            await page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

            # hang up, stop the recording and the RTP output from the page
            await call.locator("button.stop").click()
            bye = await phone.expect("BYE")
            await phone.answer(bye, 200)
            assert bye.call_id == invite.call_id
            # an ended call stays listed a while, with the reason
            await call.locator(".state").filter(has_text="ended").wait_for()
            assert "API" in await call.locator("td:nth-child(8)").text_content()
            assert await call.locator("button.stop").is_hidden()
            await rec.locator("button.stop").click()
            await rec.wait_for(state="detached")
            assert not gw.gateway.recordings.active
            await page.locator("#events").filter(has_text="recording stopped").wait_for()
            await rtp.locator("button.stop").click()
            await rtp.wait_for(state="detached")
            assert not gw.gateway.rtp_outputs.outputs
            # the WebRTC listener was left alone
            assert listener.pc.connectionState == "connected"
    finally:
        await phone.close()
        rtp_sink.close()
        await listener.delete()
        await publisher.delete()
