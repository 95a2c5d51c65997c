"""Refusals are observable everywhere: the API, /metrics and the dashboard say the same.

The gateway runs in this process, so its own CPU reading would include the test's
clients: the test injects the CPU reading instead (a process "using" two cores), and
for the second episode makes the media clock really late by holding the event loop.
Every kind of new work is offered while refusing (WHEP listen, WHIP publish, RTP output,
recording, dial-out, SIP INVITE); each refusal is counted once under its own kind, the
refusal is logged once per episode, and the dashboard (Chromium) shows the same numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from conftest import need_program
from sip_phone import Phone
from test_browser import CHROMIUM, chromium, wait_until
from test_metrics import scrape, value

from gateway.core.headroom import KINDS, process_cpu_seconds
from gateway.webrtc.client import Listener, Publisher, ToneTrack

pytestmark = [pytest.mark.peer("chromium"), pytest.mark.timeout(90)]


async def post(http: aiohttp.ClientSession, url: str, **kw) -> tuple[int, dict, str]:
    async with http.post(url, **kw) as r:
        return r.status, dict(r.headers), await r.text()


async def refused_webrtc(client: Listener | Publisher) -> str:
    try:
        await client.negotiate()
    except RuntimeError as exc:
        return str(exc)
    finally:
        await client.pc.close()
    raise AssertionError(f"{client.url} was admitted while refusing")


async def stats(gw) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/api/v1/stats") as r:
            assert r.status == 200
            return await r.json()


async def until_admission(gw, refusing: bool, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        a = (await stats(gw))["admission"]
        if a["refusing"] == refusing:
            return a
        assert time.monotonic() < deadline, f"still refusing={not refusing}: {a}"
        await asyncio.sleep(0.1)


async def offer_everything(gw) -> None:
    """One of each kind of new work; every one must be refused with 503 + Retry-After."""
    url = gw.url
    assert " 503 " in await refused_webrtc(Listener(url, "studio"))
    assert " 503 " in await refused_webrtc(Publisher(url, "studio", ToneTrack(440)))
    outputs = f"{url}/api/v1/streams/studio/outputs"
    async with aiohttp.ClientSession() as http:
        for body in ({"type": "rtp", "host": "127.0.0.1", "port": 5004, "codec": "PCMU"},
                     {"type": "recording"},
                     {"type": "sip", "uri": "sip:alice@127.0.0.1:5999"}):
            status, headers, text = await post(http, outputs, json=body)
            assert status == 503, (body, status, text)
            assert int(headers["Retry-After"]) >= 1 and "capacity" in text
    phone = Phone(gw.gateway.sip.port)
    try:
        await phone.send(phone.request("INVITE", "studio", "v=0\r\n"))
        final = await phone.final()
        assert final.status == 503 and final.headers.get("Retry-After"), final
    finally:
        await phone.close()


async def test_refusals_agree_in_api_metrics_and_dashboard_and_are_logged_per_episode(
        gateway_factory, tmp_path, caplog):
    need_program(CHROMIUM)
    caplog.set_level(logging.INFO, logger="gateway.core.headroom")
    gw = await gateway_factory(admission={"enabled": True})
    admission = gw.gateway.admission

    # Before any refusal: every kind has its series, at 0.
    m = await scrape(gw)
    for kind in KINDS:
        assert value(m, "gateway_admission_refused_total", kind=kind) == 0
    assert value(m, "gateway_admission_refusing") == 0
    assert value(m, "gateway_admission_episodes_total") == 0
    assert 0 < value(m, "gateway_admission_cores_available") <= 1
    assert ("gateway_clock_lateness_p99_seconds", frozenset()) in m
    assert (await stats(gw))["admission"]["refused"] == dict.fromkeys(KINDS, 0)

    async with chromium(tmp_path) as page:
        await page.goto(f"{gw.url}/dashboard")
        line = page.locator("#admission")
        await line.locator(".state").filter(has_text="admitting").wait_for()
        assert "nothing refused" in await line.locator(".refused").text_content()

        # Episode 1: the process "uses" two cores (an injected CPU reading).
        admission.cpu_seconds = lambda: 2 * time.monotonic()
        await until_admission(gw, refusing=True)
        await offer_everything(gw)
        await offer_everything(gw)
        api = (await stats(gw))["admission"]
        assert api["refused"] == dict.fromkeys(KINDS, 2), api
        assert api["refusing"] and api["episodes"] == 1 and api["cpu_share"] > 1.0
        m = await scrape(gw)
        for kind in KINDS:
            assert value(m, "gateway_admission_refused_total", kind=kind) == 2, kind
        assert value(m, "gateway_admission_refusing") == 1
        assert value(m, "gateway_admission_episodes_total") == 1
        assert value(m, "gateway_admission_cpu_share") > 1.0
        await line.locator(".state").filter(has_text="REFUSING").wait_for()
        refused = line.locator(".refused")
        await refused.filter(has_text="2 WebRTC listen").wait_for()
        assert await refused.get_attribute("data-counts") is not None
        await page.wait_for_function(
            "want => document.querySelector('#admission .refused').dataset.counts === want",
            arg=_json(api["refused"]))
        text = await refused.text_content()
        for name in ("WebRTC publish", "RTP output", "recording", "dial-out", "SIP call"):
            assert f"2 {name}" in text, text
        assert "CPU" in await line.locator(".cpu").text_content()
        # twelve refusals, one log line
        assert caplog.text.count("overloaded: refusing") == 1, caplog.text

        # The load goes: admitting again, said once.
        admission.cpu_seconds = process_cpu_seconds
        await until_admission(gw, refusing=False)
        for _ in range(50):  # the episode ends after a second with nothing to refuse
            if "admitting again" in caplog.text:
                break
            await asyncio.sleep(0.1)
        assert "admitting again after 12 refusals" in caplog.text
        m = await scrape(gw)
        assert value(m, "gateway_admission_refusing") == 0
        await line.locator(".state").filter(has_text="admitting").wait_for()

        # Episode 2: the media clock itself runs late (the event loop held for 80 ms,
        # twice the default limit of 40 ms): an RTP output is refused for that reason.
        time.sleep(0.08)
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            status, _, text = await post(
                http, f"{gw.url}/api/v1/streams/studio/outputs",
                json={"type": "rtp", "host": "127.0.0.1", "port": 5004, "codec": "PCMU"})
        assert status == 503 and "media clock running" in text, (status, text)
        api = await stats(gw)
        m = await scrape(gw)
        assert api["admission"]["clock_lateness_p99_ms"] >= 40
        assert value(m, "gateway_clock_lateness_p99_seconds") >= 0.040
        assert api["admission"]["episodes"] == 2
        assert value(m, "gateway_admission_episodes_total") == 2
        assert value(m, "gateway_admission_refused_total", kind="rtp_output") == 3
        # the clock's histogram: the stall is in it, in the API and /metrics alike
        late = api["clock_lateness"]
        assert sum(late["histogram"].values()) == late["ticks"] > 0
        assert max(float(k) for k in late["histogram"]) >= 40
        assert value(m, "gateway_clock_lateness_seconds_bucket", le="0.03") \
            < value(m, "gateway_clock_lateness_seconds_count")
        assert caplog.text.count("overloaded: refusing") == 2
        await line.locator(".refused").filter(has_text="3 RTP output").wait_for()
        await wait_until(lambda: not admission.refusing, 5, "the late ticks to age out")


def _json(counts: dict) -> str:
    """The dashboard's data-counts: the API's object as JSON.stringify writes it."""
    import json

    return json.dumps(counts, separators=(",", ":"))
