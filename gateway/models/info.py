"""What the API answers about live things: one model per ``info()`` shape.

The objects build these from their own counters (no validation beyond the types: a
counter's minimum is stated for the OpenAPI document, not checked on every read), the
handlers encode them (``model_dump_json``), and the OpenAPI components are generated
from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .limits import RecordingFormat

Count = Annotated[int, Field(json_schema_extra={"minimum": 0})]
Epoch = Annotated[float, Field(description="Unix time, seconds")]


def _absent(value: Any) -> bool:
    return value is None


def omitted(**more: Any) -> Any:
    """A field left out of the JSON when None (it is absent, not unknown)."""
    return Field(None, exclude_if=_absent, **more)


class Info(BaseModel):
    """A response body, or a part of one."""


# -- streams ---------------------------------------------------------------------------
class EncoderInfo(Info):
    """A shared encoder: one per codec, bitrate and packet time on a stream."""

    codec: str
    clock_rate: int
    bitrate: int | None
    ptime: int
    subscribers: Count
    frames_encoded: Count
    skipped_frames: Count
    expected_loss_percent: int | None = omitted(description=(
        "Opus: the loss its in-band FEC protects against, from the worst listener's "
        "receiver reports (0: FEC off)"))


class PlayoutInfo(Info):
    """A sender's jitter buffer and decoder."""

    frames: Count
    packets: Count
    lost: int
    late: Count
    concealed: Count
    underruns: Count
    fec_recovered: Count = Field(
        description="Lost packets decoded from the next packet's in-band FEC (Opus).")
    plc_concealed: Count = Field(
        description="Lost packets' worth of audio made by the codec's own concealment "
                    "(libopus PLC, G.711 Appendix I); fade-repeat, for the others, is not "
                    "counted here.")
    unknown_payload: Count
    red_recovered: Count = Field(
        description="lost packets played from a redundant copy (RED, RFC 2198) carried by "
        "a later packet; also counted in lost, never in concealed")
    red_malformed: Count = Field(description="RED payloads that did not parse (dropped)")
    jitter_target_ms: int
    delay_ms_avg: float
    delay_ms_max: float
    interarrival_jitter_ms: float | None = Field(None, description=(
        "RFC 3550 interarrival jitter of the current source (what receiver reports carry)"))
    receiver_reports: Count = Field(0, description=(
        "RTCP receiver report blocks sent back to the sender about its packets"))


class Levels(Info):
    """Levels, loudness (EBU R 128), voice activity, silence alarm."""

    frames: Count
    peak_dbfs: float
    rms_dbfs: float
    meter_dbfs: float
    peak_hold_dbfs: float
    momentary_lufs: float | None
    short_term_lufs: float | None
    integrated_lufs: float | None
    voice: bool | None
    voice_ratio: float | None
    silent: bool
    silence_alarm: bool


class PluginInfo(Info):
    processor: str
    state: str
    processed: Count
    dropped: Count
    queued: Count
    last_duration_ms: float
    max_duration_ms: float
    error: str | None
    results: dict[str, Any] | None
    results_index: int | None


class PluginsAnalysis(Info):
    """A stream's analysis with the analysers off (``processing.analysers = false``)."""

    skipped_frames: Count
    plugins: list[PluginInfo]


class AnalysisInfo(Levels, PluginsAnalysis):
    """A stream's analysis: levels, loudness, voice activity, silence alarm, plug-ins."""


class ReceptionInfo(Info):
    """What a listener said, in its RTCP receiver reports, about the packets it got."""

    reports: Count = Field(description="report blocks received about our stream")
    fraction_lost: float = Field(description="the last report's fraction lost, 0-1")
    loss_smoothed: float = Field(description=(
        "moving average of fraction_lost over about three reports (what the shared "
        "encoder's FEC setting follows)"))
    packets_lost: int = Field(description="cumulative packets lost, as the last report says")
    jitter_ms: float = Field(description="interarrival jitter it measured (RFC 3550 A.8)")
    rtt_ms: float | None = Field(description="round trip from LSR/DLSR, when measured")
    last_report_age_s: float


class SessionInfo(Info):
    """A WebRTC (WHIP or WHEP) session."""

    id: str | None = omitted(description=(
        "present only for the session's creator and for admins: it is the capability "
        "that ends the session"))
    kind: Literal["webrtc"]
    role: str
    stream: str
    codec: str | None
    red: bool = Field(description="RED (RFC 2198) negotiated: the publisher sends, or the "
                      "listener is sent, each Opus packet with a copy of the previous one")
    state: str = Field(description="the peer connection's state")
    since: Epoch


class PublisherInfo(SessionInfo, PlayoutInfo):
    """A WHIP session: a stream's sender, with its playout counters."""

    role: Literal["publisher"]


class ListenerInfo(SessionInfo):
    """A WHEP session."""

    role: Literal["listener"]
    packets_sent: Count
    skipped: Count
    reception: ReceptionInfo | None = omitted(description=(
        "from the listener's receiver reports (absent before the first)"))


Session = Annotated[PublisherInfo | ListenerInfo, Field(discriminator="role")]


class RtpInputInfo(PlayoutInfo):
    """An RTP input: the sender of its stream."""

    id: str
    type: Literal["rtp"]
    kind: Literal["rtp"]
    stream: str
    port: int
    codecs: dict[int, str] = Field(description="payload type -> codec")
    source: str | None
    malformed: Count
    rtcp_port: int | None = Field(None, description="the RTCP port (port + 1), if opened")
    rtcp_packets: Count
    rtcp_peer: str | None = Field(None, description=(
        "where the sender's RTCP comes from: receiver reports go there"))
    since: Epoch


class CallMediaInfo(Info):
    """A call's RTP socket, as the phone uses it."""

    local_port: int | None
    remote: str | None
    srtp: str | None = Field(None, description="SDES suite when the call's media is SRTP")
    srtp_failed: Count = Field(0, description="SRTP packets that failed authentication")
    srtcp_failed: Count = Field(0, description="SRTCP packets that failed authentication")
    packets_in: Count
    rtcp_in: Count
    malformed_in: Count
    stun_in: Count
    dtmf_digits: Count
    playout: PlayoutInfo | None = omitted()


class SipSenderInfo(CallMediaInfo):
    """A call that publishes to the stream."""

    id: str
    kind: Literal["sip"]
    peer: str


class ClusterSenderInfo(PlayoutInfo):
    """Another node of the cluster, feeding this node's copy of the stream (cluster.md)."""

    id: str
    kind: Literal["cluster"]
    malformed: Count
    publishers_seen: Count = Field(description="publishers (epochs) heard so far")
    silences: Count = Field(
        description="times the packets stopped for over a second (NATS away, owner gone)")
    since: Epoch


class OtherSender(Info):
    """A sender of a kind the gateway does not make itself (a test's generator, an
    application's own source): its id and kind, and whatever else it says."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: str


SenderInfo = RtpInputInfo | PublisherInfo | SipSenderInfo | ClusterSenderInfo | OtherSender


class ClusterStreamInfo(Info):
    """Where a stream lives in a cluster (docs/cluster.md)."""

    owner: str | None = Field(description="the node of its sender, if it has one")
    sender_kind: str | None
    listeners_by_node: dict[str, Count]
    listeners_total: Count


class StreamInfo(Info):
    name: str
    sender: SenderInfo | None
    listeners: Count
    listeners_by_kind: dict[str, Count]
    frames_written: Count
    frames_from_sender: Count
    frames_silence: Count
    duration_s: float
    encoders: list[EncoderInfo]
    analysis: AnalysisInfo | PluginsAnalysis | None
    persistent: bool
    cluster: ClusterStreamInfo | None = omitted(
        description="in a cluster: its owner node and listeners per node")


class StreamDetail(StreamInfo):
    """A stream, with its WebRTC sessions."""

    sessions: list[Session]


class StreamList(Info):
    streams: list[StreamInfo]


class SessionList(Info):
    sessions: list[Session]


# -- outputs and inputs ----------------------------------------------------------------
class RtpOutputInfo(Info):
    id: str
    type: Literal["rtp"]
    stream: str
    host: str
    port: int
    address: str
    multicast: bool
    codec: str
    clock_rate: int
    payload_type: int
    ptime: int
    ssrc: int
    packets: Count
    bytes: Count
    drops: Count
    errors: Count
    encoder_shared_with: Count
    reception: ReceptionInfo | None = omitted(description=(
        "from the receiver's RTCP reports (SIP phones; absent before the first)"))
    since: Epoch


class DtmfDigit(Info):
    digit: str
    at: Epoch


class SipCallInfo(Info):
    """A SIP call, in either direction: an output of its stream."""

    id: str
    type: Literal["sip"]
    direction: Literal["in", "out"]
    state: str = Field(examples=["calling", "ringing", "active", "ended"])
    status: int | None
    uri: str
    stream: str
    publish: str | None
    codec: str | None
    payload_type: int | None
    on_hold: bool
    packets: Count
    bytes: Count
    drops: Count
    errors: Count
    media: CallMediaInfo
    reception: ReceptionInfo | None = omitted(description=(
        "what the phone reported, in RTCP, about the stream it hears"))
    dtmf: list[DtmfDigit]
    since: Epoch
    answered: Epoch | None
    end_reason: str | None


class RecorderInfo(Info):
    """A recording in progress (an output of its stream)."""

    id: str
    type: Literal["recording"]
    stream: str
    state: str = Field(examples=["starting", "recording", "stopped", "failed"])
    error: str | None
    format: RecordingFormat
    sample_rate: int
    duration_s: float
    gap_frames: Count
    skipped_frames: Count
    file: str | None
    files: list[str]
    since: Epoch


Output = Annotated[RtpOutputInfo | SipCallInfo | RecorderInfo, Field(discriminator="type")]


class OutputList(Info):
    outputs: list[Output]


class InputList(Info):
    inputs: list[RtpInputInfo]


# -- recordings ------------------------------------------------------------------------
class RecordingFile(Info):
    id: str
    stream: str
    format: RecordingFormat
    file: str
    started: Epoch
    duration_s: float
    bytes: Count
    in_progress: bool = Field(description="a recorder is writing it now")
    recovered: bool
    error: str | None = Field(description=(
        "why the file is unfinished (still `.part`: its recording failed, or repairing it "
        "at start failed); it is finished at the next start"))


class RecordingList(Info):
    recordings: list[RecordingFile]
    active: list[RecorderInfo]


# -- status ----------------------------------------------------------------------------
class AdmissionInfo(Info):
    """Admission control: whether new work is refused now, and why (docs/monitoring.md)."""

    refusing: bool = Field(description="new work would be refused now (503)")
    cpu_share: float = Field(description="CPU use over the last second / cores available")
    cores_available: float = Field(description="one core, or less under a CPU quota")
    clock_lateness_p99_ms: float
    refused: dict[str, Count] = Field(description="refusals by kind of work")
    episodes: Count = Field(description=(
        "refusal episodes: one begins with a refusal, ends when the headroom is back"))


class ClockLatenessInfo(Info):
    """How late the media clock's 20 ms ticks ran (docs/monitoring.md)."""

    p50_ms: float = Field(description="median over the last second (50 ticks)")
    p99_ms: float = Field(description="99th percentile over the last second")
    max_ms: float = Field(description="largest over the last second")
    ticks: Count = Field(description="ticks counted in the histogram (since start)")
    histogram: dict[str, Count] = Field(description=(
        "ticks by lateness since start: key = the bin's lower edge in ms, bins 0.1 ms "
        "wide (\"1.2\": ticks 1.2-1.3 ms late), only bins with ticks; the difference of "
        "two readings is the distribution between them"))


class SharedUdpPortInfo(Info):
    address: str
    port: int
    sessions: Count = Field(description="WebRTC sessions whose media use this port")
    unclaimed_datagrams: Count = Field(
        description="datagrams no session claimed (unknown sender, stale ICE), dropped")
    send_errors: Count = Field(
        description="datagrams the kernel did not take (send buffer full, no route)")


class GatewayStats(Info):
    streams: Count
    sessions: Count
    encoders_active: Count
    encoders_created_total: Count
    clock_ticks: Count
    clock_late_ticks: Count
    clock_lateness: ClockLatenessInfo
    sip_calls: Count
    admission: AdmissionInfo
    webrtc_udp_ports: list[SharedUdpPortInfo] = Field(
        description="webrtc.udp_port: the shared port on each address (empty when off)")


class Stats(GatewayStats):
    """Gateway counters, and the HTTP server's."""

    http_connections_refused: Count
    http_header_timeouts: Count


class RegistrationInfo(Info):
    registrar: str
    aor: str = Field(description="the address of record registered (sip:user@domain)")
    state: str
    last_status: int | None
    last_error: str | None = Field(description="why the last attempt failed, if it did")


class SipInfo(Info):
    port: int
    worker_port: int | None = Field(
        description="with --workers: this worker's own port for what it originates")
    tls_port: int | None = Field(None, description="SIP over TLS port (sip.tls_cert set)")
    advertised_host: str
    calls: Count
    calls_by_state: dict[str, Count]
    calls_total: Count
    calls_refused: Count
    rtp_timeouts: Count
    dial_outs: Count
    responses_sent: dict[int, Count] = Field(description="by status code")
    messages_received: Count
    messages_malformed: Count
    messages_too_large: Count
    rate_limited: Count
    udp_backlog_dropped: Count = Field(description=(
        "UDP datagrams dropped because the backlog of requests waiting for CPU was full "
        "(a flood while the container CPU quota paces request handling)"))
    overload_rejected: Count = Field(
        description="requests answered 503 because the transaction table was full")
    invites_refused: dict[str, Count] = Field(description=(
        "new INVITEs answered 503 + Retry-After at once, before any transaction, by reason: "
        "admission (admission control refusing), setup_rate (above sip.max_setup_rate), "
        "transactions (table full)"))
    overload_episodes: Count = Field(
        description="times the gateway started refusing new INVITEs (logged once each)")
    overloaded: bool = Field(
        description="new INVITEs were refused in the last second (an episode is on)")
    forbidden_sources: Count
    tcp_connections: Count
    tcp_connections_refused: Count
    tcp_connections_timed_out: Count
    tcp_connections_idle_closed: Count
    registrations: list[RegistrationInfo]
    registered_users: Count


class SipOff(Info):
    """SIP is off (``sip.enabled = false``)."""

    enabled: Literal[False]


class SipOn(SipInfo):
    """SIP is on: its counters and its calls."""

    enabled: Literal[True]
    active_calls: list[SipCallInfo]


SipStatus = Annotated[SipOff | SipOn, Field(discriminator="enabled")]


class Health(Info):
    status: Literal["ok"]


class Readiness(Info):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool]
