"""/metrics, /readyz and /healthz on a running gateway: the exposition parses, and its
counters say what the test really sent and received."""

from __future__ import annotations

import asyncio
import errno
import json
import tempfile
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from sip_phone import Phone
from stepping import RtpSink, until
from test_processing_live import l16_input
from test_rtp_output import add_output, api
from test_webrtc_relay import listen

from gateway.app import create_app
from gateway.config import load
from gateway.core.counters import OutputCounters
from gateway.core.outputs import OutputRegistry
from gateway.web.metrics import readyz
from gateway.webrtc.client import Publisher, ToneTrack

Samples = dict[tuple[str, frozenset], float]


async def scrape(gw) -> Samples:
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            text = await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_rtp_input_and_output_counters_match_what_was_sent(stepped_gateway):
    gateway = stepped_gateway
    rtp = await l16_input(gateway, "m")
    sink = RtpSink()
    out = await add_output(gateway, "m", host="127.0.0.1", port=sink.port, codec="PCMU")
    await rtp.send(2.0, 8000)  # 100 packets of 20 ms, each played on its tick
    await gateway.step(15)  # the sender stopped
    m = await scrape(gateway)
    # frames in: every packet played, plus the 5 ticks concealed after the sender stopped
    # (then the jitter buffer calls it paused: silence)
    concealed = value(m, "gateway_sender_concealed_frames_total", stream="m", kind="rtp")
    assert concealed == 5
    assert value(m, "gateway_stream_sender_frames_total", stream="m") == 100 + concealed
    assert value(m, "gateway_stream_frames_total", stream="m") == 115 == (
        value(m, "gateway_stream_sender_frames_total", stream="m")
        + value(m, "gateway_stream_silence_frames_total", stream="m"))
    assert value(m, "gateway_sender_packets_total", stream="m", kind="rtp") == 100
    assert value(m, "gateway_sender_lost_packets_total", stream="m", kind="rtp") == 0
    assert value(m, "gateway_sender_delay_seconds", stream="m", kind="rtp") < 0.1
    assert value(m, "gateway_stream_sender_present", stream="m") == 1
    assert value(m, "gateway_stream_listeners", stream="m", kind="rtp") == 1
    assert value(m, "gateway_encoders_active", stream="m") == 1
    assert value(m, "gateway_rtp_inputs") == 1
    assert value(m, "gateway_stream_skipped_frames_total", stream="m", kind="encoder") == 0
    assert value(m, "gateway_stream_rms_dbfs", stream="m") == -120.0  # stopped 10 frames ago
    assert value(m, "gateway_stream_silence_alarm", stream="m") == 0

    # the output ends between two scrapes: its packets still count, exactly
    status, _ = await api(gateway, "DELETE", f"/api/v1/streams/m/outputs/{out['id']}")
    assert status == 204
    await gateway.step(15)
    m = await scrape(gateway)
    received = sink.drain()
    sink.close()
    rtp.close()
    sent = value(m, "gateway_output_packets_total", stream="m", kind="rtp")
    assert sent == len(received) == 115, (sent, len(received))  # one per tick, none after
    assert sum(len(p) - 12 for p in received) == 115 * 160
    assert value(m, "gateway_output_bytes_total", stream="m", kind="rtp") == 115 * 160
    assert value(m, "gateway_output_drops_total", stream="m", kind="rtp") == 0
    assert ("gateway_stream_listeners", frozenset({("stream", "m"), ("kind", "rtp")})) not in m
    assert value(m, "gateway_encoders_created_total") >= 1


async def test_sip_responses_calls_and_call_packets(gateway_factory):
    gw = await gateway_factory(stepped=True, sip={"port": 0}, streams={"declared": ["room"]})
    prober = Phone(gw.gateway.sip.port, "prober")
    await prober.send(prober.request("OPTIONS", "room"))
    assert (await prober.final()).status == 200
    assert (await Phone(gw.gateway.sip.port).invite("nosuchstream")).status == 404
    caller = Phone(gw.gateway.sip.port)
    assert (await caller.invite("room")).status == 200
    m = await scrape(gw)
    assert value(m, "gateway_sip_calls", state="active") == 1
    assert value(m, "gateway_sip_calls", state="ringing") == 0
    assert value(m, "gateway_stream_listeners", stream="room", kind="sip") == 1
    received = len(await caller.heard(gw, 50))  # everything since the answer (and an OPTIONS)
    assert (await caller.bye("room")).status == 200
    received += len(await caller.heard(gw, 15, sync=False))
    await prober.send(b"\x00\xffgarbage" * 10)
    await until(lambda: gw.gateway.sip.endpoint.counters.malformed == 1)
    m = await scrape(gw)
    assert value(m, "gateway_sip_responses_total", code="404") == 1
    assert value(m, "gateway_sip_responses_total", code="200") == 4  # 2 OPTIONS, INVITE, BYE
    assert value(m, "gateway_sip_calls_answered_total") == 1
    assert value(m, "gateway_sip_calls", state="active") == 0
    assert value(m, "gateway_sip_messages_malformed_total") >= 1
    assert value(m, "gateway_sip_messages_received_total") >= 5
    sent = value(m, "gateway_output_packets_total", stream="room", kind="sip")
    assert received == sent == 50, (sent, received)
    assert value(m, "gateway_output_bytes_total", stream="room", kind="sip") == sent * 160
    for phone in (prober, caller):
        await phone.close()


async def test_recording_frames_bytes_and_failure(stepped_gateway):
    gateway = stepped_gateway
    rtp = await l16_input(gateway, "rec")
    status, rec = await api(gateway, "POST", "/api/v1/streams/rec/outputs",
                            {"type": "recording", "format": "wav", "sample_rate": 16000})
    assert status == 201, rec
    recorder = gateway.gateway.recordings.find(rec["id"])
    await rtp.send(2.5, 8000)
    m = await scrape(gateway)
    assert value(m, "gateway_recordings", state="recording") == 1
    assert value(m, "gateway_stream_listeners", stream="rec", kind="recording") == 1
    frames = value(m, "gateway_output_packets_total", stream="rec", kind="recording")
    assert frames == recorder.frames == 100  # written in flushes of 50 frames: 25 pending
    # 16 kHz, 16-bit mono: 640 bytes per 20 ms frame
    assert value(m, "gateway_output_bytes_total", stream="rec", kind="recording") == frames * 640

    def full_disk(*_args) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    recorder._writer.write = full_disk  # the next flush fails like a full disk
    # frame 150 starts that flush (in a thread); the step waits for it on the next frame
    await gateway.step(26)
    assert recorder.state == "failed"
    m = await scrape(gateway)
    assert value(m, "gateway_recordings", state="failed") == 1
    assert value(m, "gateway_output_errors_total", stream="rec", kind="recording") == 1
    assert value(m, "gateway_events_total", kind="recording_failed") == 1
    status, _ = await api(gateway, "DELETE", f"/api/v1/streams/rec/outputs/{rec['id']}")
    assert status == 204
    m = await scrape(gateway)
    assert value(m, "gateway_recordings", state="failed") == 0
    # finished recordings keep counting: no false counter reset
    assert value(m, "gateway_output_errors_total", stream="rec", kind="recording") == 1
    written = value(m, "gateway_output_packets_total", stream="rec", kind="recording")
    assert written == recorder.frames == frames  # the failed recorder's final count
    assert value(m, "gateway_events_total", kind="recording_started") == 1
    rtp.close()


async def test_webrtc_publisher_and_listener(gateway):
    pub = Publisher(gateway.url, "w", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()
    lis = await listen(gateway, "w")
    await asyncio.sleep(3.2)  # a full short-term loudness window
    m = await scrape(gateway)
    assert value(m, "gateway_webrtc_sessions", kind="publisher") == 1
    assert value(m, "gateway_webrtc_sessions", kind="listener") == 1
    assert value(m, "gateway_sender_packets_total", stream="w", kind="webrtc") >= 90
    assert value(m, "gateway_stream_sender_idle_seconds", stream="w") < 1.0
    assert value(m, "gateway_stream_listeners", stream="w", kind="webrtc") == 1
    assert value(m, "gateway_output_packets_total", stream="w", kind="webrtc") >= 90
    assert value(m, "gateway_stream_silence_alarm", stream="w") == 0
    # the tone (0.3 of full scale: about -14 LUFS) over the last 3 s
    assert value(m, "gateway_stream_short_term_lufs", stream="w") > -30
    sent = value(m, "gateway_output_packets_total", stream="w", kind="webrtc")
    await lis.delete()
    await asyncio.sleep(0.1)
    m = await scrape(gateway)
    # the listener is gone; what it was sent still counts (no false counter reset)
    assert ("gateway_stream_listeners", frozenset({("stream", "w"), ("kind", "webrtc")})) \
        not in m
    assert value(m, "gateway_output_packets_total", stream="w", kind="webrtc") >= sent
    await pub.delete()


async def test_outputs_and_senders_that_end_between_two_scrapes_are_counted(stepped_gateway):
    """Nothing polls the live objects: an output, a recording and a sender that start and
    end between two scrapes are in the second one, exactly, and nothing goes down."""
    gateway = stepped_gateway
    rtp = await l16_input(gateway, "brief")
    before = await scrape(gateway)
    assert ("gateway_output_packets_total",
            frozenset({("stream", "brief"), ("kind", "rtp")})) not in before
    sink = RtpSink()
    out = await add_output(gateway, "brief", host="127.0.0.1", port=sink.port, codec="PCMU")
    status, rec = await api(gateway, "POST", "/api/v1/streams/brief/outputs",
                            {"type": "recording", "format": "wav", "sample_rate": 8000})
    assert status == 201, rec
    recorder = gateway.gateway.recordings.find(rec["id"])
    await rtp.send(0.4, 8000)  # 20 packets, one per tick
    for path in (f"outputs/{out['id']}", f"outputs/{rec['id']}", f"inputs/{rtp.input.id}"):
        status, _ = await api(gateway, "DELETE", f"/api/v1/streams/brief/{path}")
        assert status == 204, path
    await gateway.step(5)
    m = await scrape(gateway)
    received = sink.drain()
    assert value(m, "gateway_output_packets_total", stream="brief", kind="rtp") \
        == len(received) == 20
    assert value(m, "gateway_output_bytes_total", stream="brief", kind="rtp") == 20 * 160
    assert value(m, "gateway_output_packets_total", stream="brief", kind="recording") \
        == recorder.frames == 20
    assert value(m, "gateway_sender_packets_total", stream="brief", kind="rtp") == 20
    assert value(m, "gateway_stream_sender_present", stream="brief") == 0

    # a second output: live, then ended; its counter only grows
    again = await add_output(gateway, "brief", host="127.0.0.1", port=sink.port, codec="PCMU")
    await gateway.step(10)
    live = value(await scrape(gateway), "gateway_output_packets_total", stream="brief",
                 kind="rtp")
    await api(gateway, "DELETE", f"/api/v1/streams/brief/outputs/{again['id']}")
    await gateway.step(5)
    ended = value(await scrape(gateway), "gateway_output_packets_total", stream="brief",
                  kind="rtp")
    assert ended == live == 30 == len(sink.drain())  # everything the sink got
    sink.close()
    rtp.close()


async def test_two_gateways_in_one_process_count_apart(gateway_factory):
    one = await gateway_factory(stepped=True)
    other = await gateway_factory(stepped=True)
    sink = RtpSink()
    for codec in ("PCMU", "PCMA"):  # two shared encoders on the first gateway
        await add_output(one, "x", host="127.0.0.1", port=sink.port, codec=codec)
    assert one.gateway.stats().encoders_created_total == 2
    assert other.gateway.stats().encoders_created_total == 0
    assert value(await scrape(one), "gateway_encoders_created_total") == 2
    assert value(await scrape(other), "gateway_encoders_created_total") == 0
    sink.close()


async def test_readyz_healthz_loop_lag_and_late_ticks(gateway_factory):
    gw = await gateway_factory()
    other = await gateway_factory()  # a second gateway in the process: its own registry
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/readyz") as r:
            assert r.status == 200
            body = await r.json()
            assert body["status"] == "ready" and all(body["checks"].values()), body
            assert body["checks"]["sip"] is True
        async with http.get(gw.url + "/healthz") as r:
            assert r.status == 200
    await asyncio.sleep(0.3)
    time.sleep(0.4)  # hold the event loop on purpose
    await asyncio.sleep(0.3)
    m = await scrape(gw)
    assert value(m, "gateway_event_loop_lag_max_seconds") >= 0.29  # 0.4 - the interval
    assert value(m, "gateway_event_loop_lag_last_seconds") < 0.35
    count = value(m, "gateway_event_loop_lag_seconds_count")
    assert count >= 4 and value(m, "gateway_event_loop_lag_seconds_bucket", le="+Inf") == count
    assert value(m, "gateway_event_loop_lag_seconds_bucket", le="0.25") < count
    assert value(m, "gateway_clock_late_ticks_total") >= 10  # 400 ms = 20 ticks late
    assert value(m, "gateway_ready") == 1
    assert value(m, "gateway_clock_ticks_total") > 0
    assert ("process_resident_memory_bytes", frozenset()) in m
    assert value(await scrape(other), "gateway_ready") == 1


async def test_readyz_is_503_before_start_and_after_shutdown():
    config = load(None, {"http": {"port": free_port()}, "sip": {"port": 0},
                         "recording": {"directory": tempfile.mkdtemp(prefix="gateway-rec-")}})
    app = create_app(config)
    request = make_mocked_request("GET", "/readyz", app=app)
    assert (await readyz(request)).status == 503
    runner = web.AppRunner(app)
    await runner.setup()  # runs the startup hooks
    try:
        assert (await readyz(request)).status == 200
    finally:
        await runner.cleanup()
    response = await readyz(request)
    assert response.status == 503 and json.loads(response.body)["checks"]["started"] is False


def test_an_output_registry_keeps_what_ended_outputs_sent():
    class Out:
        kind = "rtp"

        def __init__(self, id: str, packets: int) -> None:
            self.id, self.packets = id, packets

        def counters(self) -> OutputCounters:
            return OutputCounters(packets=self.packets, bytes=160 * self.packets)

    outputs = OutputRegistry()
    a, b = Out("a", 5), Out("b", 7)
    outputs.add(a)
    outputs.add(b)
    assert outputs.totals()["rtp"] == OutputCounters(packets=12, bytes=1920)
    a.packets = 9  # sent after the last look, before it ended
    outputs.remove(a)
    outputs.remove(a)  # again: counted once
    assert outputs.totals()["rtp"].packets == 16 and len(outputs) == 1
    outputs.remove(b)
    assert outputs.totals() == {"rtp": OutputCounters(packets=16, bytes=2560)}
    assert outputs.count_by_kind() == {} and outputs.get("a") is None


async def test_scrapes_that_arrive_together_share_one_generation(gateway, monkeypatch):
    """Two Prometheus servers (an HA pair) scraping at the same moment cost one
    generation: the second gets the text the first one's scrape is writing."""
    from gateway.web import metrics as metrics_module

    original, runs = metrics_module._scrape, []

    async def slow_scrape(state, turns):  # type: ignore[no-untyped-def]
        runs.append(1)
        await asyncio.sleep(0.2)
        return await original(state, turns)

    monkeypatch.setattr(metrics_module, "_scrape", slow_scrape)
    async with aiohttp.ClientSession() as http:
        async def scrape() -> str:
            async with http.get(gateway.url + "/metrics") as r:
                assert r.status == 200
                return await r.text()

        first, second = await asyncio.gather(scrape(), scrape())
        assert first == second and len(runs) == 1
        assert "gateway_streams" in first
        await scrape()  # a later scrape generates afresh
    assert len(runs) == 2
