"""Prometheus ``/metrics``, and ``/readyz`` for orchestrators (``/healthz`` is in ``api``).

A custom collector reads the live objects (streams, senders, outputs, calls, recorders)
when Prometheus scrapes, so forwarding pays nothing per packet. Each application has its
own ``CollectorRegistry``, and every counter belongs to one gateway: several gateways in
one process never share series.

Counters summed over things that come and go (outputs, senders, ring readers) are kept
where they outlive them: an output's final counts go to its stream's output registry when
it ends, a sender's to its stream when it detaches, a ring reader's skips to its ring. So
the sums never go down (``rate()`` sees no false resets) and one that lived between two
scrapes is counted, with nothing polling in between. Metric names and meanings:
``docs/monitoring.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import astuple, dataclass, fields
from typing import Any

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

from ..core.counters import SenderCounters
from ..core.looplag import LoopLagMonitor
from ..core.stream import Stream
from ..gateway import Gateway
from ..models.info import Levels, Readiness
from .connection_guard import ConnectionGuard
from .keys import GATEWAY, HTTP_GUARD, turns_of
from .reply import reply
from .turns import Turns

log = logging.getLogger(__name__)

#: SIP call states shown even when no call is in them (0), so alerts have a series.
CALL_STATES = ("calling", "ringing", "active")
RECORDING_STATES = ("starting", "recording", "failed", "stopped")
#: Buckets of listeners' reported loss (0-1).
LOSS_BUCKETS = (0.0, 0.01, 0.03, 0.05, 0.1, 0.2, float("inf"))


class EventCounter:
    """Counts gateway events by type. It sits in the event bus's subscriber set and is
    offered every event like a subscription, but keeps no queue."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def offer(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        self.counts[kind] = self.counts.get(kind, 0) + 1


SENDER_FIELDS = tuple(field.name for field in fields(SenderCounters))


@dataclass
class StreamReading:
    """What /metrics says about one stream, read in one go: reading a stream walks its
    listeners, so a scrape reads streams a slice at a time (``web.turns``)."""

    stream: Stream
    source_kind: str | None
    stats: Any  # the sender's stats, or None
    count_by_kind: dict[str, int]
    skipped_by_kind: dict[str, int]
    snapshot: Any  # the analysis's latest, or None
    sender_totals: dict[str, SenderCounters]
    output_totals: dict[str, Any]
    losses: dict[str, list[float]]  # listeners' smoothed reported loss, by kind
    expected_loss: list[tuple[str, int, float]]  # (codec, bitrate, percent) per encoder


def read_stream(stream: Stream) -> StreamReading:
    source = stream.source
    losses: dict[str, list[float]] = {}
    for output in list(stream.outputs):
        feedback = getattr(output, "feedback", None)
        if feedback is not None and feedback.reception.reports:
            losses.setdefault(output.kind, []).append(feedback.reception.loss_smoothed)
    expected = []
    for encoder in list(stream.egress.values()):
        percent = encoder.info().expected_loss_percent
        if percent is not None:
            expected.append((encoder.spec.name, encoder.bitrate, percent))
    return StreamReading(
        stream=stream,
        source_kind=source.kind if source is not None else None,
        stats=source.stats() if source is not None else None,
        count_by_kind=stream.outputs.count_by_kind(),
        skipped_by_kind=stream.skipped_by_kind(),
        snapshot=stream.analysis.snapshot() if stream.analysis is not None else None,
        sender_totals=stream.sender_totals(), output_totals=stream.outputs.totals(),
        losses=losses, expected_loss=expected)


class GatewayCollector:
    """Reads the gateway's live objects at scrape time (prometheus_client's Collector)."""

    def __init__(self, gw: Gateway, guard: ConnectionGuard, lag: LoopLagMonitor,
                 events: EventCounter, ready: Callable[[], bool]) -> None:
        self.gw = gw
        self.guard = guard
        self.lag = lag
        self.events = events
        self.ready = ready
        #: Set by the /metrics handler (read a slice at a time); else read in collect().
        self.readings: list[StreamReading] | None = None

    # -- the Collector interface ---------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        readings = self.readings
        if readings is None:
            readings = [read_stream(s) for s in list(self.gw.registry.streams.values())]
        yield from self._streams(readings)
        yield from self._senders(readings)
        yield from self._outputs(readings)
        yield from self._sip()
        yield from self._cluster()
        yield from self._admission()
        yield from self._udp_ports()
        yield from self._runtime()

    def _streams(self, readings: list[StreamReading]) -> Iterator[Metric]:
        st = ["stream"]
        count = GaugeMetricFamily("gateway_streams", "Streams that exist now.",
                                  value=len(readings))
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
        for r in readings:
            stream = r.stream
            name = [stream.name]
            written.add_metric(name, stream.ring.head)
            from_sender.add_metric(name, stream.frames_from_sender)
            silence.add_metric(name, stream.frames_silence)
            senders_total.add_metric(name, stream.senders_total)
            present.add_metric(name, 1 if r.source_kind is not None else 0)
            if r.stats is not None and r.stats.last_packet is not None:
                age.add_metric(name, max(0.0, now - r.stats.last_packet))
            for kind, n in sorted(r.count_by_kind.items()):
                listeners.add_metric([stream.name, kind], n)
            for kind, n in sorted(r.skipped_by_kind.items()):
                skipped.add_metric([stream.name, kind], n)
            encoders.add_metric(name, len(stream.egress))
            snapshot = r.snapshot
            for key, family in levels.items():
                value = getattr(snapshot, key, None)
                if value is not None:
                    family.add_metric(name, value)
            if isinstance(snapshot, Levels):
                alarm.add_metric(name, 1 if snapshot.silence_alarm else 0)
        yield from (count, written, from_sender, silence, senders_total, present, age,
                    listeners, encoders, skipped, *levels.values(), alarm)
        yield CounterMetricFamily(
            "gateway_encoders_created_total",
            "Shared encoders the gateway started.",
            value=self.gw.registry.counters.encoders_created)

    def _senders(self, readings: list[StreamReading]) -> Iterator[Metric]:
        lk = ["stream", "kind"]
        docs = {
            "packets": "RTP packets the stream's senders delivered to the jitter buffer.",
            "lost": "Packets that never arrived (sequence gaps).",
            "late": "Packets that arrived after their playout time (dropped).",
            "concealed": "Ticks filled by loss concealment.",
            "underruns": "Ticks the jitter buffer had nothing to play.",
            "fec_recovered": "Lost packets decoded from the next packet's in-band FEC (Opus).",
            "red_recovered": "Lost packets played from a RED (RFC 2198) copy carried by a "
                             "later packet (also counted as lost, not concealed).",
            "plc_concealed": "Lost packets' worth of audio made by the codec's own "
                             "concealment (libopus PLC, G.711 Appendix I).",
        }
        names = {"packets": "gateway_sender_packets_total",
                 "lost": "gateway_sender_lost_packets_total",
                 "late": "gateway_sender_late_packets_total",
                 "concealed": "gateway_sender_concealed_frames_total",
                 "underruns": "gateway_sender_underruns_total",
                 "fec_recovered": "gateway_sender_fec_recovered_packets_total",
                 "red_recovered": "gateway_sender_red_recovered_packets_total",
                 "plc_concealed": "gateway_sender_plc_concealed_packets_total"}
        families = [CounterMetricFamily(names[f], docs[f], labels=lk) for f in SENDER_FIELDS]
        for r in readings:
            for kind, counters in sorted(r.sender_totals.items()):
                for family, value in zip(families, astuple(counters), strict=True):
                    family.add_metric([r.stream.name, kind], value)
        yield from families
        delay = GaugeMetricFamily(
            "gateway_sender_delay_seconds",
            "Packet arrival to decode in the jitter buffer, moving average (1/16).", labels=lk)
        delay_max = GaugeMetricFamily(
            "gateway_sender_delay_max_seconds",
            "Largest arrival-to-decode delay of the current sender.", labels=lk)
        target = GaugeMetricFamily(
            "gateway_sender_jitter_target_seconds",
            "Delay the sender's jitter buffer keeps: its target depth, plus one packet "
            "while it waits for a lost packet's successor (FEC).", labels=lk)
        for r in readings:
            if r.source_kind is None or r.stats is None:
                continue
            labels = [r.stream.name, r.source_kind]
            delay.add_metric(labels, r.stats.delay_s)
            delay_max.add_metric(labels, r.stats.delay_max_s)
            target.add_metric(labels, r.stats.jitter_target_s)
        yield from (delay, delay_max, target)

    def _outputs(self, readings: list[StreamReading]) -> Iterator[Metric]:
        gw = self.gw
        lk = ["stream", "kind"]
        packets = CounterMetricFamily(
            "gateway_output_packets_total",
            "Packets sent per output kind (recording: 20 ms frames written).", labels=lk)
        octets = CounterMetricFamily(
            "gateway_output_bytes_total",
            "Payload bytes sent (rtp, sip, webrtc) or audio bytes written (recording).",
            labels=lk)
        drops = CounterMetricFamily(
            "gateway_output_drops_total",
            "rtp/sip: packets dropped on a full socket buffer; webrtc: the same, and packets "
            "missed because the fan-out fell behind; recording: frames skipped.", labels=lk)
        errors = CounterMetricFamily(
            "gateway_output_errors_total",
            "rtp/sip/webrtc: send errors (unreachable, refused); recording: recordings failed.",
            labels=lk)
        for r in readings:
            for kind, c in sorted(r.output_totals.items()):
                labels = [r.stream.name, kind]
                packets.add_metric(labels, c.packets)
                octets.add_metric(labels, c.bytes)
                drops.add_metric(labels, c.drops)
                errors.add_metric(labels, c.errors)
        yield from (packets, octets, drops, errors)
        yield from self._reported_loss(readings)
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

    def _reported_loss(self, readings: list[StreamReading]) -> Iterator[Metric]:
        """What listeners say in their RTCP receiver reports, per stream and listener kind
        (not per listener: ids as labels would make a new series for every listener that
        comes and goes; the API and the dashboard list each listener's own numbers)."""
        lk = ["stream", "kind"]
        worst = GaugeMetricFamily(
            "gateway_listener_reported_loss_max",
            "Highest loss (0-1, smoothed over ~3 reports) a listener reports in its RTCP "
            "receiver reports.", labels=lk)
        by_loss = GaugeMetricFamily(
            "gateway_listeners_reported_loss",
            "Listeners whose smoothed reported loss is at most `le` (0-1), cumulative like "
            "a histogram; listeners that have sent no report are not counted.",
            labels=[*lk, "le"])
        expected = GaugeMetricFamily(
            "gateway_encoder_expected_loss_percent",
            "The loss a shared Opus encoder's in-band FEC protects against (0: FEC off), "
            "from its worst listener's reports.", labels=["stream", "codec", "bitrate"])
        for r in readings:
            for kind, values in sorted(r.losses.items()):
                worst.add_metric([r.stream.name, kind], max(values))
                for bound in LOSS_BUCKETS:
                    by_loss.add_metric([r.stream.name, kind, _le(bound)],
                                       sum(1 for v in values if v <= bound))
            for codec, bitrate, percent in r.expected_loss:
                expected.add_metric([r.stream.name, codec, str(bitrate)], percent)
        yield from (worst, by_loss, expected)

    def _cluster(self) -> Iterator[Metric]:
        cluster = self.gw.cluster
        if cluster is None:
            return
        yield GaugeMetricFamily("gateway_cluster_connected",
                                "1 while this node is connected to NATS.",
                                value=1 if cluster.nc is not None and cluster.nc.is_connected
                                else 0)
        yield CounterMetricFamily("gateway_cluster_disconnects_total",
                                  "Times this node lost its NATS connection.",
                                  value=cluster.disconnects)
        silences = CounterMetricFamily(
            "gateway_cluster_feed_silences_total",
            "Times a stream fed from another node went silent for over a second (NATS "
            "away, the owner gone).", labels=["stream"])
        for name, value in sorted(cluster.feed_silences.items()):
            silences.add_metric([name], value)
        yield silences
        published = CounterMetricFamily(
            "gateway_cluster_published_bytes_total",
            "Bytes of a stream this node published to the cluster (while other nodes read it).",
            labels=["stream"])
        for name, publication in sorted(cluster.publications.items()):
            published.add_metric([name], publication.bytes)
        yield published
        yield GaugeMetricFamily("gateway_cluster_subscribed_streams",
                                "Streams this node hears from other nodes now.",
                                value=len(cluster.remote))

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
            (sip.endpoint.udp_backlog_dropped, "gateway_sip_udp_backlog_dropped_total",
             "SIP UDP datagrams dropped because the backlog waiting for CPU was full."),
            (c.forbidden, "gateway_sip_messages_forbidden_total",
             "SIP messages dropped because the source is not in sip.allow_from."),
            (c.send_errors, "gateway_sip_send_errors_total", "SIP messages that failed to send."),
            (c.connections_refused, "gateway_sip_connections_refused_total",
             "TCP connections refused (connection limits: all, or per address)."),
            (c.connections_timed_out, "gateway_sip_connections_timed_out_total",
             "TCP connections closed for not completing a message in time."),
            (c.connections_idle_closed, "gateway_sip_connections_idle_closed_total",
             "TCP connections closed after tcp_idle_timeout_s unused by any call or "
             "registration."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        gate = sip.endpoint.gate
        refused = CounterMetricFamily(
            "gateway_sip_invites_refused_total", "New INVITEs answered 503 + Retry-After at "
            "once under overload, before any transaction, by reason (admission, setup_rate, "
            "transactions).", labels=["reason"])
        for reason, n in sorted(gate.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily("gateway_sip_overload_episodes_total",
                                  "Times the gateway started refusing new INVITEs.",
                                  value=gate.episodes)
        yield GaugeMetricFamily("gateway_sip_overloaded",
                                "1 while new INVITEs are being refused (until 1 s after the "
                                "last refusal).", value=1 if gate.overloaded else 0)
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

    def _udp_ports(self) -> Iterator[Metric]:
        labels = ["address", "port"]
        sessions = GaugeMetricFamily(
            "gateway_webrtc_udp_port_sessions",
            "WebRTC sessions whose media use the shared port (webrtc.udp_port).", labels=labels)
        unclaimed = CounterMetricFamily(
            "gateway_webrtc_udp_port_unclaimed_datagrams",
            "Datagrams on the shared port that no session claimed (dropped).", labels=labels)
        send_errors = CounterMetricFamily(
            "gateway_webrtc_udp_port_send_errors",
            "Datagrams the kernel did not take on the shared port (buffer full, no route).",
            labels=labels)
        for port in self.gw.peers.info():  # what /api/v1/stats shows
            key = [port["address"], str(port["port"])]
            sessions.add_metric(key, port["sessions"])
            unclaimed.add_metric(key, port["unclaimed_datagrams"])
            send_errors.add_metric(key, port["send_errors"])
        yield from (sessions, unclaimed, send_errors)

    def _admission(self) -> Iterator[Metric]:
        adm = self.gw.admission
        refused = CounterMetricFamily(
            "gateway_admission_refused_total",
            "New work refused by admission control (503 + Retry-After), by kind.",
            labels=["kind"])
        for kind, n in sorted(adm.refused.items()):
            refused.add_metric([kind], n)
        yield refused
        yield GaugeMetricFamily("gateway_admission_refusing",
                                "1 while admission control refuses new work.",
                                value=1 if adm.refusing else 0)
        yield CounterMetricFamily("gateway_admission_episodes_total",
                                  "Times admission control started refusing.",
                                  value=adm.episodes)
        yield GaugeMetricFamily(
            "gateway_admission_cpu_share",
            "CPU use over the last second / the cores this process may use.",
            value=adm.cpu_share)
        yield GaugeMetricFamily(
            "gateway_admission_cores_available",
            "Cores this process may use: one, or less under a container CPU quota.",
            value=adm.cores_available)
        yield CounterMetricFamily(
            "gateway_cpu_paced_waits_total",
            "Times SIP request handling or API listings waited for room in the container "
            "CPU quota's period (so that the media clock is not throttled).",
            value=self.gw.cpu_budget.waits)
        yield GaugeMetricFamily(
            "gateway_clock_lateness_p99_seconds",
            "99th percentile of the media clock's tick lateness over the last second.",
            value=adm.lateness_p99_ms() / 1000)
        late = self.gw.registry.clock.lateness
        hist = HistogramMetricFamily(
            "gateway_clock_lateness_seconds",
            "How late the media clock's 20 ms ticks ran after their deadline.")
        hist.add_metric([], [(_le(b), n) for b, n in late.cumulative()], late.sum)
        yield hist

    def _runtime(self) -> Iterator[Metric]:
        guard = self.guard
        yield CounterMetricFamily(
            "gateway_http_connections_refused_total",
            "HTTP connections closed at once: their address had http.max_pending_per_address "
            "connections without a request.", value=guard.refused)
        yield CounterMetricFamily(
            "gateway_http_header_timeouts_total",
            "HTTP connections closed for not completing request headers within "
            "http.header_timeout_s.", value=guard.header_timeouts)
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


class NodeLabelled:
    """A collector whose every series also carries ``node="<name>"`` (in a cluster, so the
    series of several nodes and workers stay apart wherever they are aggregated)."""

    def __init__(self, inner: Any, node: str | None) -> None:
        self.inner = inner
        self.node = node

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            if self.node is not None:
                metric.samples = [s._replace(labels={"node": self.node, **s.labels})
                                  for s in metric.samples]
            yield metric


class Metrics:
    """Per application: the registry, the loop-lag monitor, readiness."""

    def __init__(self, gw: Gateway, guard: ConnectionGuard) -> None:
        self.gw = gw
        self.started = False
        self.stopping = False
        self.lag = LoopLagMonitor()
        self.events = EventCounter()
        # The bus offers every event to each subscriber; this one only counts.
        gw.events.subscribers.add(self.events)  # type: ignore[arg-type]
        self.collector = GatewayCollector(gw, guard, self.lag, self.events, self.ready)
        self.registry = CollectorRegistry()
        node = gw.node_name if gw.cluster is not None else None
        scratch = CollectorRegistry()  # prometheus_client's own collectors insist on one
        for collector in (self.collector, ProcessCollector(registry=scratch),
                          PlatformCollector(registry=scratch), GCCollector(registry=scratch)):
            self.registry.register(NodeLabelled(collector, node))  # type: ignore[arg-type]
        #: The scrape being generated: scrapes that arrive meanwhile get its text.
        self.scraping: asyncio.Future[bytes] | None = None

    def checks(self) -> dict[str, bool]:
        gw = self.gw
        checks = {
            "started": self.started and not self.stopping and not gw.stopping.is_set(),
            "media_clock": gw.registry.running,
        }
        if gw.sip is not None:
            checks["sip"] = gw.sip.endpoint.listening
        return checks

    def ready(self) -> bool:
        return all(self.checks().values())

    async def on_startup(self, app: web.Application) -> None:
        # runs after the gateway's own startup hook (added before ours in create_app)
        self.lag.start()
        self.started = True

    async def on_shutdown(self, app: web.Application) -> None:
        self.stopping = True  # first of the shutdown hooks: not ready any more

    async def on_cleanup(self, app: web.Application) -> None:
        await self.lag.stop()
        self.gw.events.subscribers.discard(self.events)  # type: ignore[arg-type]


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


class _Families:
    """A registry of ready-made metric families (generate_latest only calls collect)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics (text exposition format). Streams are read a slice at a time,
    the families built in a turn of their own and written out a slice at a time
    (``web.turns``): with hundreds of listeners the text takes several milliseconds.
    Scrapes that arrive while one is generated (HA Prometheus pairs) share its text."""
    state = request.app[METRICS]
    if state.scraping is None:
        state.scraping = asyncio.ensure_future(_scrape(state, turns_of(request)))
        state.scraping.add_done_callback(lambda _: setattr(state, "scraping", None))
    body = await asyncio.shield(state.scraping)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _scrape(state: Metrics, turns: Turns) -> bytes:
    readings = await turns.map(read_stream, list(state.gw.registry.streams.values()))

    def families() -> list[Metric]:
        state.collector.readings = readings
        try:
            return list(state.registry.collect())
        finally:
            state.collector.readings = None

    built = await turns.call(families)
    return b"".join(await turns.map(lambda f: generate_latest(_Families([f])), built))


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready: started, media clock running, SIP listening if enabled (else 503)."""
    checks = request.app[METRICS].checks()
    ok = all(checks.values())
    return reply(Readiness(status="ready" if ok else "not ready", checks=checks),
                 200 if ok else 503)


def add_routes(app: web.Application) -> None:
    state = Metrics(app[GATEWAY], app[HTTP_GUARD])
    app[METRICS] = state
    app.on_startup.append(state.on_startup)
    app.on_shutdown.insert(0, state.on_shutdown)
    app.on_cleanup.append(state.on_cleanup)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
