"""Prometheus ``/metrics``, and ``/readyz`` for orchestrators (``/healthz`` is in ``api``).

A custom collector reads the live objects (streams, senders, outputs, calls, recorders)
when Prometheus scrapes, so forwarding pays nothing per packet. Each application has its
own ``CollectorRegistry``: several gateways in one process never share series.

Counters summed over things that come and go (outputs, listeners, senders, readers) are
kept monotonic by a ``Tally``: a finished object is read one last time and its values are
carried over, so ``rate()`` sees no false resets when a listener leaves. A sweep every
second notices new objects, so one that lives a few seconds between two scrapes counts
too. Metric names and meanings: ``docs/monitoring.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..core.looplag import LoopLagMonitor
from ..egress.encoders import SharedEncoder
from .keys import GATEWAY

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger(__name__)

#: Seconds between sweeps that notice new outputs, listeners and senders.
SWEEP_S = 1.0
#: SIP call states shown even when no call is in them (0), so alerts have a series.
CALL_STATES = ("calling", "ringing", "active")
RECORDING_STATES = ("starting", "recording", "failed", "stopped")
FRAME_S = 0.02

Labels = tuple[str, ...]
Reader = Callable[[Any], tuple[float, ...]]


class Tally:
    """Counters summed per label set over objects that come and go, never going down.

    Each tracked object keeps the highest values read from it (a counter read after its
    owner released it may read 0). When an object is no longer live it is read one last
    time and its values move to ``retired`` under its labels. Retired values of streams
    that no longer exist are dropped (the stream's series end with it).
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._live: dict[int, tuple[Any, Labels, Reader, list[float]]] = {}
        self._retired: dict[Labels, list[float]] = {}

    def update(self, items: Iterable[tuple[Any, Labels, Reader]],
               streams: Iterable[str] | None = None) -> dict[Labels, list[float]]:
        seen: set[int] = set()
        for obj, labels, read in items:
            key = id(obj)
            seen.add(key)
            entry = self._live.get(key)
            if entry is None or entry[0] is not obj:
                entry = self._live[key] = (obj, labels, read, [0.0] * self.width)
            _raise_to(entry[3], _safe_read(read, obj, self.width))
        for key in [k for k in self._live if k not in seen]:
            obj, labels, read, high = self._live.pop(key)
            _raise_to(high, _safe_read(read, obj, self.width))
            total = self._retired.setdefault(labels, [0.0] * self.width)
            for i, value in enumerate(high):
                total[i] += value
        if streams is not None:
            alive = set(streams)
            for labels in [lb for lb in self._retired if lb[0] not in alive]:
                del self._retired[labels]
        out = {labels: list(values) for labels, values in self._retired.items()}
        for _obj, labels, _read, high in self._live.values():
            total = out.setdefault(labels, [0.0] * self.width)
            for i, value in enumerate(high):
                total[i] += value
        return out


def _safe_read(read: Reader, obj: Any, width: int) -> tuple[float, ...]:
    try:
        return read(obj)
    except Exception:  # an object torn down between two reads: keep what we had
        return (0.0,) * width


def _raise_to(high: list[float], values: tuple[float, ...]) -> None:
    for i, value in enumerate(values):
        if value > high[i]:
            high[i] = value


class EventCounter:
    """Counts gateway events by type. It sits in the event bus's subscriber set and is
    offered every event like a subscription, but keeps no queue."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def offer(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        self.counts[kind] = self.counts.get(kind, 0) + 1


# -- what is read from each live object ------------------------------------------------
def _read_rtp_output(o: Any) -> tuple[float, ...]:
    return (o.packets, o.octets, o.drops, o.errors)


def _read_webrtc_listener(s: Any) -> tuple[float, ...]:
    reader = s.track.reader
    return (s.track.sent, 0, reader.skipped if reader is not None else 0, 0)


def _read_recorder(r: Any) -> tuple[float, ...]:
    info = r.info()
    return (r.frames, _recording_bytes(r), info.get("skipped_frames", 0),
            1 if r.state == "failed" else 0)


def _recording_bytes(r: Any) -> float:
    """Audio bytes written: exact for WAV (16-bit mono), from the bitrate for Opus."""
    if r.format == "wav":
        return r.frames * round(r.sample_rate * FRAME_S) * 2
    return r.frames * r.opus_bitrate * FRAME_S / 8


def _read_encoder_skips(e: Any) -> tuple[float, ...]:
    return (e.info()["skipped_frames"],)


def _read_analysis_skips(a: Any) -> tuple[float, ...]:
    return (a.snapshot().get("skipped_frames", 0),)


def _read_recorder_skips(r: Any) -> tuple[float, ...]:
    return (r.info().get("skipped_frames", 0),)


def _read_listener_skips(s: Any) -> tuple[float, ...]:
    reader = s.track.reader
    return (reader.skipped if reader is not None else 0,)


def _read_fanout_skips(f: Any) -> tuple[float, ...]:
    reader = getattr(f, "_reader", None)  # the fan-out's cursor on the packet ring
    return (getattr(reader, "skipped", 0),)


SENDER_FIELDS = ("packets", "lost", "late", "concealed", "underruns")


def _read_playout(p: Any) -> tuple[float, ...]:
    info = p.info()
    return tuple(info[f] for f in SENDER_FIELDS)


class GatewayCollector:
    """Reads the gateway's live objects at scrape time (prometheus_client's Collector)."""

    def __init__(self, gw: Gateway, lag: LoopLagMonitor, events: EventCounter,
                 ready: Callable[[], bool]) -> None:
        self.gw = gw
        self.lag = lag
        self.events = events
        self.ready = ready
        self.outputs = Tally(4)  # (stream, kind): packets, bytes, drops, errors
        self.skips = Tally(1)  # (stream, kind of reader): skipped frames or packets
        self.senders = Tally(len(SENDER_FIELDS))  # (stream, kind of sender)

    # -- live objects --------------------------------------------------------------
    def _output_items(self) -> Iterator[tuple[Any, Labels, Reader]]:
        gw = self.gw
        for o in list(gw.rtp_outputs.outputs.values()):
            yield o, (o.stream.name, o.kind), _read_rtp_output
        if gw.sip is not None:
            for call in list(gw.sip.calls.values()):
                if call.output is not None:
                    yield call.output, (call.output.stream.name, "sip"), _read_rtp_output
        for s in list(gw.sessions.values()):
            if s.role == "listener":
                yield s, (s.stream.name, "webrtc"), _read_webrtc_listener
        for r in list(gw.recordings.active.values()):
            yield r, (r.stream.name, "recording"), _read_recorder

    def _skip_items(self) -> Iterator[tuple[Any, Labels, Reader]]:
        gw = self.gw
        for stream in list(gw.registry.streams.values()):
            for encoder in list(stream.egress.values()):
                yield encoder, (stream.name, "encoder"), _read_encoder_skips
            if stream.analysis is not None:
                yield stream.analysis, (stream.name, "analysis"), _read_analysis_skips
        for r in list(gw.recordings.active.values()):
            yield r, (r.stream.name, "recording"), _read_recorder_skips
        for s in list(gw.sessions.values()):
            if s.role == "listener":
                yield s, (s.stream.name, "webrtc"), _read_listener_skips
        for fanout in list(getattr(gw.rtp_outputs, "_fanouts", {}).values()):
            yield fanout, (fanout.encoder.stream.name, "rtp"), _read_fanout_skips

    def _sender_items(self) -> Iterator[tuple[Any, Labels, Reader]]:
        for stream in list(self.gw.registry.streams.values()):
            source = stream.source
            playout = getattr(source, "playout", None)
            if playout is not None:
                yield playout, (stream.name, source.kind), _read_playout

    def sweep(self) -> tuple[dict[Labels, list[float]], ...]:
        """Notice new objects and retire finished ones (every second and at each scrape)."""
        names = list(self.gw.registry.streams)
        return (self.outputs.update(self._output_items(), names),
                self.skips.update(self._skip_items(), names),
                self.senders.update(self._sender_items(), names))

    # -- the Collector interface ---------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        outputs, skips, senders = self.sweep()
        yield from self._streams(skips)
        yield from self._senders(senders)
        yield from self._outputs(outputs)
        yield from self._sip()
        yield from self._runtime()

    def _streams(self, skips: dict[Labels, list[float]]) -> Iterator[Metric]:
        streams = list(self.gw.registry.streams.values())
        st = ["stream"]
        count = GaugeMetricFamily("gateway_streams", "Streams that exist now.",
                                  value=len(streams))
        written = CounterMetricFamily(
            "gateway_stream_frames_total",
            "20 ms frames written to the stream's ring (sender's or silence).", labels=st)
        from_sender = CounterMetricFamily(
            "gateway_stream_sender_frames_total",
            "Frames that came from the stream's sender (frames in).", labels=st)
        silence = CounterMetricFamily(
            "gateway_stream_silence_frames_total",
            "Frames of digital silence written because no sender frame was there.", labels=st)
        senders_total = CounterMetricFamily(
            "gateway_stream_senders_total", "Senders that attached to the stream.", labels=st)
        present = GaugeMetricFamily(
            "gateway_stream_sender_present", "1 while the stream has a sender.", labels=st)
        age = GaugeMetricFamily(
            "gateway_stream_sender_idle_seconds",
            "Seconds since the sender's last packet (absent without a sender).", labels=st)
        listeners = GaugeMetricFamily(
            "gateway_stream_listeners", "Listeners by kind (webrtc, rtp, sip, recording).",
            labels=["stream", "kind"])
        encoders = GaugeMetricFamily(
            "gateway_encoders_active", "Shared encoders running for the stream.", labels=st)
        skipped = CounterMetricFamily(
            "gateway_stream_skipped_frames_total",
            "Frames (packets, for packet-ring readers) a slow reader lost by being moved "
            "to the live head, by reader kind.", labels=["stream", "kind"])
        levels = {
            key: GaugeMetricFamily(f"gateway_stream_{key}", doc, labels=st)
            for key, doc in (
                ("rms_dbfs", "RMS level of the latest frame, dBFS (-120 for silence)."),
                ("peak_dbfs", "Sample peak of the latest frame, dBFS."),
                ("short_term_lufs", "Short-term loudness (3 s), LUFS."),
                ("integrated_lufs", "Integrated loudness since the stream started, LUFS."),
            )
        }
        alarm = GaugeMetricFamily(
            "gateway_stream_silence_alarm", "1 while the silence alarm is raised.", labels=st)
        now = time.monotonic()
        for stream in streams:
            name = [stream.name]
            written.add_metric(name, stream.ring.head)
            from_sender.add_metric(name, stream.frames_from_sender)
            silence.add_metric(name, stream.frames_silence)
            senders_total.add_metric(name, stream.senders_total)
            present.add_metric(name, 1 if stream.source is not None else 0)
            playout = getattr(stream.source, "playout", None)
            last = getattr(playout, "last_packet", None)
            if last is not None:
                age.add_metric(name, max(0.0, now - last))
            by_kind: dict[str, int] = {}
            for listener in list(stream.listeners.values()):
                by_kind[listener.kind] = by_kind.get(listener.kind, 0) + 1
            for kind, n in sorted(by_kind.items()):
                listeners.add_metric([stream.name, kind], n)
            encoders.add_metric(name, len(stream.egress))
            snapshot = stream.analysis.snapshot() if stream.analysis is not None else {}
            for key, family in levels.items():
                value = snapshot.get(key)
                if value is not None:
                    family.add_metric(name, value)
            if snapshot.get("silence_alarm") is not None:
                alarm.add_metric(name, 1 if snapshot["silence_alarm"] else 0)
        for (stream_name, kind), (value,) in sorted(skips.items()):
            skipped.add_metric([stream_name, kind], value)
        yield from (count, written, from_sender, silence, senders_total, present, age,
                    listeners, encoders, skipped, *levels.values(), alarm)
        yield CounterMetricFamily(
            "gateway_encoders_created_total",
            "Shared encoders started since the process started (all gateways in it).",
            value=SharedEncoder.created_total)

    def _senders(self, totals: dict[Labels, list[float]]) -> Iterator[Metric]:
        lk = ["stream", "kind"]
        docs = {
            "packets": "RTP packets the stream's senders delivered to the jitter buffer.",
            "lost": "Packets that never arrived (sequence gaps).",
            "late": "Packets that arrived after their playout time (dropped).",
            "concealed": "Ticks filled by loss concealment.",
            "underruns": "Ticks the jitter buffer had nothing to play.",
        }
        names = {"packets": "gateway_sender_packets_total",
                 "lost": "gateway_sender_lost_packets_total",
                 "late": "gateway_sender_late_packets_total",
                 "concealed": "gateway_sender_concealed_frames_total",
                 "underruns": "gateway_sender_underruns_total"}
        families = [CounterMetricFamily(names[f], docs[f], labels=lk) for f in SENDER_FIELDS]
        for labels, values in sorted(totals.items()):
            for family, value in zip(families, values, strict=True):
                family.add_metric(list(labels), value)
        yield from families
        delay = GaugeMetricFamily(
            "gateway_sender_delay_seconds",
            "Packet arrival to decode in the jitter buffer, moving average (1/16).", labels=lk)
        delay_max = GaugeMetricFamily(
            "gateway_sender_delay_max_seconds",
            "Largest arrival-to-decode delay of the current sender.", labels=lk)
        target = GaugeMetricFamily(
            "gateway_sender_jitter_target_seconds",
            "Current target depth of the sender's jitter buffer.", labels=lk)
        for stream in list(self.gw.registry.streams.values()):
            source = stream.source
            playout = getattr(source, "playout", None)
            if playout is None:
                continue
            info = playout.info()
            labels = [stream.name, source.kind]
            delay.add_metric(labels, info["delay_ms_avg"] / 1000)
            delay_max.add_metric(labels, info["delay_ms_max"] / 1000)
            target.add_metric(labels, info["jitter_target_ms"] / 1000)
        yield from (delay, delay_max, target)

    def _outputs(self, totals: dict[Labels, list[float]]) -> Iterator[Metric]:
        gw = self.gw
        lk = ["stream", "kind"]
        packets = CounterMetricFamily(
            "gateway_output_packets_total",
            "Packets sent per output kind (recording: 20 ms frames written).", labels=lk)
        octets = CounterMetricFamily(
            "gateway_output_bytes_total",
            "Payload bytes sent (rtp, sip) or audio bytes written (recording).", labels=lk)
        drops = CounterMetricFamily(
            "gateway_output_drops_total",
            "rtp/sip: packets dropped on a full socket buffer; webrtc: packets skipped by a "
            "slow listener; recording: frames skipped.", labels=lk)
        errors = CounterMetricFamily(
            "gateway_output_errors_total",
            "rtp/sip: send errors (unreachable, refused); recording: recordings failed.",
            labels=lk)
        for labels, values in sorted(totals.items()):
            for family, value in zip((packets, octets, drops, errors), values, strict=True):
                if family is octets and labels[1] == "webrtc":
                    continue  # aiortc does not say
                family.add_metric(list(labels), value)
        yield from (packets, octets, drops, errors)
        recordings = GaugeMetricFamily(
            "gateway_recordings", "Recordings the gateway holds, by state.", labels=["state"])
        states = _count(r.state for r in gw.recordings.active.values())
        for state in sorted(set(RECORDING_STATES) | set(states)):
            recordings.add_metric([state], states.get(state, 0))
        yield recordings
        sessions = GaugeMetricFamily(
            "gateway_webrtc_sessions", "WebRTC sessions by kind (publisher, listener).",
            labels=["kind"])
        roles = _count(s.role for s in gw.sessions.values())
        for role in sorted({"publisher", "listener"} | set(roles)):
            sessions.add_metric([role], roles.get(role, 0))
        yield sessions
        yield GaugeMetricFamily("gateway_rtp_inputs", "Plain RTP inputs open.",
                                value=len(gw.rtp_inputs))

    def _sip(self) -> Iterator[Metric]:
        sip = self.gw.sip
        if sip is None:
            return
        calls = GaugeMetricFamily("gateway_sip_calls", "SIP calls by state.", labels=["state"])
        states = _count(c.state for c in sip.calls.values())
        for state in sorted(set(CALL_STATES) | set(states)):
            calls.add_metric([state], states.get(state, 0))
        yield calls
        for key, name, doc in (
            ("calls_total", "gateway_sip_calls_answered_total", "Dial-in calls answered."),
            ("calls_refused", "gateway_sip_calls_refused_total",
             "Dial-ins refused because max_calls was reached."),
            ("dial_outs", "gateway_sip_dial_outs_total", "Dial-outs started."),
            ("rtp_timeouts", "gateway_sip_rtp_timeouts_total",
             "Calls ended because the phone sent no RTP/RTCP for rtp_timeout_s."),
        ):
            yield CounterMetricFamily(name, doc, value=sip.stats.get(key, 0))
        responses = CounterMetricFamily(
            "gateway_sip_responses_total", "Final and provisional SIP responses the call "
            "logic sent, by status code.", labels=["code"])
        for code, n in sorted(sip.responses_sent.items()):
            responses.add_metric([str(code)], n)
        yield responses
        c = sip.endpoint.counters
        for value, name, doc in (
            (c.received, "gateway_sip_messages_received_total", "SIP messages received."),
            (c.sent, "gateway_sip_messages_sent_total", "SIP messages sent."),
            (c.malformed, "gateway_sip_messages_malformed_total",
             "SIP messages that could not be parsed (dropped or answered 400)."),
            (c.too_large, "gateway_sip_messages_too_large_total",
             "SIP messages over sip.max_message_bytes."),
            (c.rate_limited, "gateway_sip_messages_rate_limited_total",
             "SIP messages dropped by the per-source rate limit."),
            (getattr(c, "forbidden", 0), "gateway_sip_messages_forbidden_total",
             "SIP messages dropped because the source is not in sip.allow_from."),
            (c.send_errors, "gateway_sip_send_errors_total", "SIP messages that failed to send."),
            (c.connections_refused, "gateway_sip_connections_refused_total",
             "TCP connections refused (connection limit)."),
            (c.connections_timed_out, "gateway_sip_connections_timed_out_total",
             "TCP connections closed for not completing a message in time."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        with contextlib.suppress(Exception):
            sip.registrar.expire(sip.endpoint.now())
        yield GaugeMetricFamily("gateway_sip_registered_bindings",
                                "Phones registered with the gateway's registrar.",
                                value=sip.registrar.bindings_count)
        regs = GaugeMetricFamily("gateway_sip_upstream_registrations",
                                 "Registrations with upstream registrars, by state.",
                                 labels=["state"])
        for state, n in sorted(_count(r.state for r in sip.registrations).items()):
            regs.add_metric([state], n)
        yield regs

    def _runtime(self) -> Iterator[Metric]:
        registry = self.gw.registry
        yield CounterMetricFamily("gateway_clock_ticks_total", "Media clock ticks (20 ms).",
                                  value=registry.ticks)
        yield CounterMetricFamily(
            "gateway_clock_late_ticks_total",
            "Ticks the media clock skipped because the event loop stalled.",
            value=registry.clock_late_ticks)
        lag = self.lag
        yield GaugeMetricFamily("gateway_event_loop_lag_last_seconds",
                                "Event-loop lag at the latest 100 ms probe.", value=lag.last)
        yield GaugeMetricFamily("gateway_event_loop_lag_max_seconds",
                                "Largest event-loop lag over the last 60 s.", value=lag.max)
        hist = HistogramMetricFamily("gateway_event_loop_lag_seconds",
                                     "Event-loop lag, one probe every 100 ms.")
        hist.add_metric([], [(_le(b), n) for b, n in lag.cumulative_buckets()], lag.sum)
        yield hist
        events = CounterMetricFamily("gateway_events_total",
                                     "Gateway events published, by type.", labels=["kind"])
        for kind, n in sorted(self.events.counts.items()):
            events.add_metric([kind], n)
        yield events
        yield GaugeMetricFamily("gateway_ready", "1 when /readyz answers 200.",
                                value=1 if self.ready() else 0)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


class Metrics:
    """Per application: the registry, the loop-lag monitor, readiness."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.started = False
        self.stopping = False
        self.lag = LoopLagMonitor()
        self.events = EventCounter()
        # The bus offers every event to each subscriber; this one only counts.
        gw.events.subscribers.add(self.events)  # type: ignore[arg-type]
        self.collector = GatewayCollector(gw, self.lag, self.events, self.ready)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)  # type: ignore[arg-type]
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._sweeper: asyncio.Task[None] | None = None

    def checks(self) -> dict[str, bool]:
        gw = self.gw
        clock = getattr(gw.registry, "_task", None)
        checks = {
            "started": self.started and not self.stopping and not gw.stopping.is_set(),
            "media_clock": clock is not None and not clock.done(),
        }
        if gw.sip is not None:
            endpoint = gw.sip.endpoint
            checks["sip"] = (getattr(endpoint, "_udp", None) is not None
                             or getattr(endpoint, "_tcp_server", None) is not None)
        return checks

    def ready(self) -> bool:
        return all(self.checks().values())

    async def on_startup(self, app: web.Application) -> None:
        # runs after the gateway's own startup hook (added before ours in create_app)
        self.lag.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="metrics-sweep")
        self.started = True

    async def on_shutdown(self, app: web.Application) -> None:
        self.stopping = True  # first of the shutdown hooks: not ready any more

    async def on_cleanup(self, app: web.Application) -> None:
        await self.lag.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.gw.events.subscribers.discard(self.events)  # type: ignore[arg-type]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.collector.sweep()
            except Exception:  # never let metrics take anything down
                log.exception("metrics sweep failed")


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics (text exposition format)."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready: started, media clock running, SIP listening if enabled (else 503)."""
    checks = request.app[METRICS].checks()
    ok = all(checks.values())
    return web.json_response({"status": "ready" if ok else "not ready", "checks": checks},
                             status=200 if ok else 503)


def add_routes(app: web.Application) -> None:
    state = Metrics(app[GATEWAY])
    app[METRICS] = state
    app.on_startup.append(state.on_startup)
    app.on_shutdown.insert(0, state.on_shutdown)
    app.on_cleanup.append(state.on_cleanup)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
