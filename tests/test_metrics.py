"""/metrics, /readyz and /healthz on a running gateway: the exposition parses, and its
counters say what the test really sent and received."""

from __future__ import annotations

import asyncio
import errno
import socket
import tempfile
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from sip_phone import Phone
from test_processing_live import l16_input, send_l16
from test_rtp_output import add_output, api
from test_webrtc_relay import listen

from gateway.app import create_app
from gateway.config import load
from gateway.web.metrics import Tally, readyz
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


class RtpSink:
    """A UDP socket counting the RTP packets (not the RTCP) that reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.packets = 0
        self.payload_bytes = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            if len(data) >= 12 and not 200 <= data[1] <= 204:
                self.packets += 1
                self.payload_bytes += len(data) - 12

    async def close(self) -> None:
        self._task.cancel()
        self.sock.close()


async def test_rtp_input_and_output_counters_match_what_was_sent(gateway):
    port = await l16_input(gateway, "m")
    sink = RtpSink()
    out = await add_output(gateway, "m", host="127.0.0.1", port=sink.port, codec="PCMU")
    await send_l16(port, 2.0, 8000)  # 100 packets of 20 ms
    await asyncio.sleep(0.3)
    m = await scrape(gateway)
    # frames in: every packet played, plus the ticks concealed (the 5 after the sender
    # stopped, and any tick where the sender, on this same loop, was late)
    concealed = value(m, "gateway_sender_concealed_frames_total", stream="m", kind="rtp")
    assert concealed <= 12
    assert abs(value(m, "gateway_stream_sender_frames_total", stream="m") - concealed
               - 100) <= 2
    assert value(m, "gateway_stream_frames_total", stream="m") == (
        value(m, "gateway_stream_sender_frames_total", stream="m")
        + value(m, "gateway_stream_silence_frames_total", stream="m"))
    assert abs(value(m, "gateway_sender_packets_total", stream="m", kind="rtp") - 100) <= 2
    assert value(m, "gateway_sender_lost_packets_total", stream="m", kind="rtp") == 0
    assert value(m, "gateway_sender_delay_seconds", stream="m", kind="rtp") < 0.1
    assert value(m, "gateway_stream_sender_present", stream="m") == 1
    assert value(m, "gateway_stream_listeners", stream="m", kind="rtp") == 1
    assert value(m, "gateway_encoders_active", stream="m") == 1
    assert value(m, "gateway_rtp_inputs") == 1
    assert value(m, "gateway_stream_skipped_frames_total", stream="m", kind="encoder") == 0
    assert value(m, "gateway_stream_rms_dbfs", stream="m") == -120.0  # stopped 0.3 s ago
    assert value(m, "gateway_stream_silence_alarm", stream="m") == 0

    # the output ends between two scrapes: its packets still count, exactly
    status, _ = await api(gateway, "DELETE", f"/api/v1/streams/m/outputs/{out['id']}")
    assert status == 204
    await asyncio.sleep(0.3)
    m = await scrape(gateway)
    await sink.close()
    sent = value(m, "gateway_output_packets_total", stream="m", kind="rtp")
    assert sink.packets > 100 and abs(sent - sink.packets) <= 2, (sent, sink.packets)
    assert abs(value(m, "gateway_output_bytes_total", stream="m", kind="rtp")
               - sink.payload_bytes) <= 2 * 160
    assert value(m, "gateway_output_drops_total", stream="m", kind="rtp") == 0
    assert ("gateway_stream_listeners", frozenset({("stream", "m"), ("kind", "rtp")})) not in m
    assert value(m, "gateway_encoders_created_total") >= 1


async def test_sip_responses_calls_and_call_packets(gateway_factory):
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
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
    received = len(await caller.collect_rtp(1.0))  # everything since the answer
    assert (await caller.bye("room")).status == 200
    received += len(await caller.collect_rtp(0.3))
    await prober.send(b"\x00\xffgarbage" * 10)
    await asyncio.sleep(0.2)
    m = await scrape(gw)
    assert value(m, "gateway_sip_responses_total", code="404") == 1
    assert value(m, "gateway_sip_responses_total", code="200") == 3  # OPTIONS, INVITE, BYE
    assert value(m, "gateway_sip_calls_answered_total") == 1
    assert value(m, "gateway_sip_calls", state="active") == 0
    assert value(m, "gateway_sip_messages_malformed_total") >= 1
    assert value(m, "gateway_sip_messages_received_total") >= 5
    sent = value(m, "gateway_output_packets_total", stream="room", kind="sip")
    assert received > 40 and abs(sent - received) <= 2, (sent, received)
    assert value(m, "gateway_output_bytes_total", stream="room", kind="sip") == sent * 160
    for phone in (prober, caller):
        phone.close()


async def test_recording_frames_bytes_and_failure(gateway):
    port = await l16_input(gateway, "rec")
    status, rec = await api(gateway, "POST", "/api/v1/streams/rec/outputs",
                            {"type": "recording", "format": "wav", "sample_rate": 16000})
    assert status == 201, rec
    recorder = gateway.gateway.recordings.find(rec["id"])
    await send_l16(port, 2.5, 8000)
    m = await scrape(gateway)
    assert value(m, "gateway_recordings", state="recording") == 1
    assert value(m, "gateway_stream_listeners", stream="rec", kind="recording") == 1
    frames = value(m, "gateway_output_packets_total", stream="rec", kind="recording")
    assert frames >= 100 and 0 <= recorder.frames - frames <= 50  # one flush: 50 frames
    # 16 kHz, 16-bit mono: 640 bytes per 20 ms frame
    assert value(m, "gateway_output_bytes_total", stream="rec", kind="recording") == frames * 640

    def full_disk(*_args) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    recorder._writer.write = full_disk  # the next flush fails like a full disk
    await asyncio.sleep(1.5)
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
    assert written == recorder.frames >= frames  # the failed recorder's final count
    assert value(m, "gateway_events_total", kind="recording_started") == 1


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
    await lis.delete()
    await pub.delete()


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
    assert response.status == 503 and b'"started": false' in response.body


def test_tally_never_goes_down_as_objects_come_and_go():
    class Out:
        def __init__(self, n: int) -> None:
            self.n = n

    def read(o: Out) -> tuple[float, ...]:
        return (o.n,)

    tally = Tally(1)
    a, b = Out(5), Out(7)
    assert tally.update([(a, ("s", "rtp"), read), (b, ("s", "rtp"), read)], ["s"]) == {
        ("s", "rtp"): [12.0]}
    a.n = 9  # counted after the last look, before it ended
    assert tally.update([(b, ("s", "rtp"), read)], ["s"]) == {("s", "rtp"): [16.0]}
    b.n = 0  # a reader released: reads 0, the high-water mark stays
    assert tally.update([(b, ("s", "rtp"), read)], ["s"]) == {("s", "rtp"): [16.0]}
    assert tally.update([], []) == {}  # the stream is gone: its series end
