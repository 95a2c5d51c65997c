"""Configuration: embedded defaults, overridden by a TOML file, then by ``GATEWAY_*``
environment variables, then by CLI flags.

Each section is a model (``Section``: strict types, no unknown key), so every key is
validated at start and a bad one is an error that names it. The limits come from
``models.limits``, shared with the API; ``rtp.outputs``, ``rtp.inputs`` and
``recording.auto`` entries are the API's own request models plus a stream name.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from .codecs.spec import codec_by_name
from .core.registry import check_stream_name
from .io_requests import RecordingOutputRequest, RtpInputRequest, RtpOutputRequest
from .models.limits import (
    DialTimeout,
    ListenPort,
    OpusBitrate,
    Port,
    PositiveFloat,
    Range,
    RecordingFormat,
    RecordingSampleRate,
)
from .models.validation import TYPE_NAMES, Invalid, KeyProblem, invalid


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


class Section(BaseModel):
    """A table of the configuration: TOML types as they are, no unknown key, no nan or
    inf (TOML has both; every comparison with nan is false, so it passes every bound)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


AtLeast1 = Annotated[int, Range(1)]
#: A file path; "" (as in the documented defaults) means none.
OptionalPath = Annotated[str | None, BeforeValidator(lambda value: value or None)]


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


#: An IPv4 or IPv6 address written as text (names are not resolved).
IPAddressText = Annotated[str, AfterValidator(_ip_address)]


class HttpConfig(Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    #: Largest accepted request body (SDP offers, JSON) in bytes.
    max_body_bytes: int = 65536
    #: Listening on a non-loopback address with no credentials configured is refused
    #: unless this is true (`gateway serve --insecure`).
    allow_insecure: bool = False
    #: SIGTERM: seconds to hang up calls, close sessions and finalize recordings.
    shutdown_timeout_s: float = 10.0
    #: A connection must complete a request's headers this long after it is accepted (or
    #: after the first byte of a later request); otherwise it is closed (counted).
    header_timeout_s: PositiveFloat = 10.0
    #: Connections per client address that have not yet sent a complete request; beyond
    #: it new ones are closed at once (counted, logged once per episode).
    max_pending_per_address: AtLeast1 = 50
    #: HTTPS: the certificate chain and its private key (PEM files); both or neither.
    #: Reloaded on SIGHUP. Browsers need HTTPS for the microphone beyond localhost.
    tls_cert: OptionalPath = None
    tls_key: OptionalPath = None

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("http.tls_cert and http.tls_key go together: set both or neither")
        return self


class StreamsConfig(Section):
    #: Frames (20 ms each) kept per stream; a reader further behind is skipped forward.
    ring_frames: Annotated[int, Range(2)] = 50
    #: Create streams on first publish or listen; if false only `declared` exist.
    allow_dynamic: bool = True
    #: Remove a dynamic stream with no sender and no listener after this many seconds.
    idle_timeout_s: float = 60.0
    #: Streams that always exist.
    declared: list[Annotated[str, AfterValidator(check_stream_name)]] = []


def _one_or_more(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class IceServer(Section):
    #: "stun:host:3478", or several URLs of one server.
    urls: Annotated[list[str], BeforeValidator(_one_or_more), Field(min_length=1)]
    username: str | None = None
    credential: str | None = Field(None, repr=False)


JitterPackets = Annotated[int, Range(1, 10)]


class WebRTCConfig(Section):
    #: STUN/TURN servers, e.g. [{urls = "stun:stun.example.org:3478"}]. None by default.
    ice_servers: list[IceServer] = Field([], repr=False)
    #: Addresses to gather ICE host candidates on (empty: all but loopback).
    host_addresses: list[str] = []
    #: 1:1 NAT: {"10.0.0.5" = "203.0.113.7"} rewrites candidates in answers.
    nat_1to1: dict[str, str] = {}
    #: One UDP port for the media of every WebRTC session (e.g. 8189; with `--workers N`
    #: worker i uses udp_port + i). 0: each session binds an ephemeral port of its own.
    udp_port: ListenPort = 0
    #: Also announce these addresses as host candidates on udp_port: the host's address
    #: when a container's port is mapped (`docker run -p 8189:8189/udp`), a Kubernetes
    #: node or load balancer address. Needs udp_port.
    additional_hosts: list[IPAddressText] = []
    #: Opus bitrate sent to WebRTC listeners, bits per second.
    opus_bitrate: OpusBitrate = 64000
    #: RED (RFC 2198) with Opus when a peer offers it (browsers do): publishers are asked
    #: to send each packet with a copy of the previous one, listeners are sent that.
    red: bool = True
    #: Jitter buffer depth bounds, in 20 ms packets.
    jitter_min_packets: JitterPackets = 1
    jitter_max_packets: JitterPackets = 3
    #: A sender silent this long may be replaced by a new publisher (else 409).
    takeover_after_s: float = 3.0
    #: A session whose connection is not up after this many seconds is closed.
    connect_timeout_s: float = 30.0
    #: Concurrent WebRTC sessions (publishers + listeners).
    max_sessions: int = 1000

    @model_validator(mode="after")
    def _additional_hosts_need_the_port(self) -> WebRTCConfig:
        if self.additional_hosts and not self.udp_port:
            raise ValueError("additional_hosts needs udp_port: per-session ports cannot "
                             "be mapped to another address")
        return self

    @model_validator(mode="after")
    def _jitter_bounds(self) -> WebRTCConfig:
        if self.jitter_min_packets > self.jitter_max_packets:
            raise KeyProblem("jitter_min_packets", "must be at most jitter_max_packets")
        return self


class RtpOutputEntry(RtpOutputRequest):
    """An output started with the gateway: the API's request, and the stream it sends."""

    type: Literal["rtp"] = "rtp"
    stream: str


class RtpInputEntry(RtpInputRequest):
    """An input started with the gateway: the API's request, and the stream it feeds."""

    stream: str


class RtpConfig(Section):
    #: Address RTP inputs listen on (use 0.0.0.0 or :: to accept sources from elsewhere).
    bind_host: str = "127.0.0.1"
    #: IPv4 address of the interface multicast outputs leave from (empty: routing table).
    multicast_interface: str = ""
    #: Outputs started with the gateway: [{stream = "a", host = "..", port = 5004, codec = "PCMU"}]
    outputs: list[RtpOutputEntry] = []
    #: Inputs started with the gateway: [{stream = "a", port = 5006, codec = "PCMU"}]
    inputs: list[RtpInputEntry] = []


class SipRoute(Section):
    #: A regular expression matched against the whole request-URI user.
    match: str
    #: The stream the caller hears, and the one its audio goes to (\\1: match groups).
    listen: str | None = None
    publish: str | None = None

    @field_validator("match")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(str(exc)) from None
        return pattern

    @model_validator(mode="after")
    def _goes_somewhere(self) -> SipRoute:
        if self.listen is None and self.publish is None:
            raise KeyProblem(None, "needs 'listen' and/or 'publish'")
        return self


class SipRegistration(Section):
    registrar: str
    user: str
    password: str = Field(repr=False)
    expires: int = 300
    #: Address of record (default sip:<user>@<registrar host>).
    aor: str | None = None
    #: Digest user name, when not `user`.
    username: str | None = None
    #: User part of the Contact (default `user`).
    contact_user: str | None = None


class SipCredential(Section):
    #: The realm these answer ("*": any).
    realm: str = "*"
    user: str
    password: str = Field(repr=False)


def _cidr(value: str) -> str:
    ipaddress.ip_network(value, strict=False)  # ValueError names what is wrong
    return value


def _listing(allowed: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A validator: a non-empty list of some of ``allowed``."""
    said = " and/or ".join(map(repr, allowed)) if len(allowed) == 2 else "/".join(allowed)

    def check(values: list[str]) -> list[str]:
        if not values or set(values) - set(allowed):
            raise ValueError(f"must list {said}")
        return values

    return AfterValidator(check)


class SipConfig(Section):
    #: Accept and place SIP calls. The SIP port is opened on start when true.
    enabled: bool = True
    #: Address the SIP and call RTP sockets bind to (0.0.0.0 or :: for phones elsewhere).
    bind_host: str = "127.0.0.1"
    #: SIP port for UDP and TCP (0: any free port, for tests).
    port: ListenPort = 5060
    #: `gateway serve --workers N`: worker i also opens port worker_port_base + i (UDP and
    #: TCP) for the calls it places and the registrations it sends, so their answers come
    #: back to it (the shared port hands them to any worker). 0: any free port.
    worker_port_base: ListenPort = 0
    transports: Annotated[list[str], _listing(("udp", "tcp"))] = ["udp", "tcp"]
    #: SIP over TLS: the certificate chain and its key (PEM), both or neither; with them
    #: the gateway also listens on `tls_port` (phones dial
    #: `sip:<stream>@host:5061;transport=tls` or `sips:<stream>@host`).
    tls_cert: OptionalPath = None
    tls_key: OptionalPath = None
    tls_port: ListenPort = 5061
    #: CA certificates (PEM) trusted for the servers the gateway connects to over TLS
    #: (and for phones' certificates with tls_verify_client); empty: the system's.
    tls_ca: OptionalPath = None
    #: Ask phones for a certificate signed by tls_ca; those without one cannot connect.
    tls_verify_client: bool = False
    #: SRTP for calls (SDES keys, RFC 4568): "optional" uses it when the phone offers it,
    #: "required" refuses plain RTP offers (488), "off" refuses RTP/SAVP offers.
    srtp: Literal["off", "optional", "required"] = "optional"
    #: Address written in Via, Contact and SDP (behind NAT: the public one). Empty: bind_host.
    advertised_host: str = ""
    #: RTP port range for calls: one even port (and the odd one for RTCP) per call.
    rtp_port_min: Annotated[int, Range(1024, 65535)] = 20000
    rtp_port_max: Annotated[int, Range(1024, 65535)] = 29999
    #: Codecs offered and accepted, best first.
    codecs: list[str] = ["opus", "G722", "PCMU", "PCMA"]
    #: A call whose phone sent no RTP or RTCP for this long is ended with BYE.
    rtp_timeout_s: float = 30.0
    #: Ring (180) this long before answering a dial-in; 0 answers at once.
    ring_ms: int = 0
    #: Dial-out: give up (CANCEL) when not answered within this time.
    dial_timeout_s: DialTimeout = 60.0
    #: Concurrent calls; a call beyond it is refused with 503.
    max_calls: AtLeast1 = 500
    #: Open SIP transactions (each lives ~32 s after its final response); new requests
    #: beyond it get 503, except BYE and CANCEL.
    max_transactions: int = 10000
    #: Largest SIP message accepted, bytes (larger: 413, or dropped if unreadable).
    max_message_bytes: int = 16384
    #: Accepted TCP/TLS connections; beyond it new ones are closed at once (counted). The
    #: gateway's own connections (dial-out, upstream registrations) are not counted.
    max_tcp_connections: AtLeast1 = 1000
    #: Accepted TCP/TLS connections from one address (phones behind one NAT share one).
    max_tcp_connections_per_host: AtLeast1 = 100
    #: A TCP connection that does not complete a message within this time of accepting it
    #: or of the message's first byte is closed (counted).
    tcp_message_timeout_s: PositiveFloat = 30.0
    #: An accepted TCP/TLS connection that has received nothing (not even a keep-alive)
    #: this long is closed (counted), unless a call or a live registration uses it.
    tcp_idle_timeout_s: PositiveFloat = 120.0
    #: SIP timer T1 (RFC 3261 §17), the round-trip estimate: retransmissions start at T1,
    #: and transactions give up after 64*T1 (a 200 never ACKed ends its call then, 32 s).
    t1_ms: Annotated[int, Range(1, 4000, why=" (T2 is 4 s)")] = 500
    #: New calls (out-of-dialog INVITEs) admitted per second, from all sources together; the
    #: excess is answered 503 with Retry-After at once, before any transaction or port is
    #: set up, so an INVITE flood cannot push the answers past the phones' retransmission
    #: timers (congestion collapse). Bursts of a tenth of a second's worth pass. 0: no limit.
    max_setup_rate: Annotated[float, Range(0, 100000)] = 120.0
    #: Requests per second (and burst) per source address; excess is dropped and counted.
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 100
    #: Dial-in to a stream that does not exist yet creates it (else 404).
    create_streams: bool = False
    #: Call routing by request-URI user, first match wins:
    #: [{match = "^talk-(.+)$", listen = "\\1", publish = "phone-\\1"}]; no match: listen
    #: to the stream named by the user part.
    routes: list[SipRoute] = []
    #: DTMF `*<digits>#` switches the caller to another stream; this maps digits to names
    #: (unmapped digits switch to the stream named by the digits, if it exists).
    dtmf_switch: bool = True
    dtmf_streams: dict[str, str] = {}
    #: Digest realm of the registrar and of call authentication.
    realm: str = "audio-gateway"
    #: Users allowed to REGISTER (and call, when auth_calls): {alice = "password"}.
    users: dict[str, str] = Field({}, repr=False)
    #: Challenge INVITEs too (digest with `users`); OPTIONS are always answered.
    auth_calls: bool = False
    #: Digest algorithms challenged with, one WWW-Authenticate each. MD5 alone by default:
    #: some phones (baresip 1.0) cannot handle two challenges; add "SHA-256" first for
    #: phones that can (RFC 7616).
    digest_algorithms: Annotated[list[str], _listing(("MD5", "SHA-256"))] = ["MD5"]
    #: Upstream registrations: [{registrar = "sip:pbx.example.org", user = "gw",
    #: password = "...", expires = 300}] (optional: aor, contact_user, username).
    registrations: list[SipRegistration] = Field([], repr=False)
    #: Credentials for challenges met when dialing out: [{realm = "pbx", user = "gw",
    #: password = "..."}] (realm "*" or absent: any realm).
    credentials: list[SipCredential] = Field([], repr=False)
    #: Source addresses (CIDR) allowed to send SIP requests; empty: everyone.
    allow_from: list[Annotated[str, AfterValidator(_cidr)]] = []
    user_agent: str = "audio-gateway"

    @field_validator("codecs")
    @classmethod
    def _known_codecs(cls, names: list[str]) -> list[str]:
        for name in names:
            codec_by_name(name)  # ValueError: unknown codec 'GSM'; known: ...
        return names

    @model_validator(mode="after")
    def _port_range(self) -> SipConfig:
        if self.rtp_port_min >= self.rtp_port_max:
            raise KeyProblem("rtp_port_min", "must be below sip.rtp_port_max")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> SipConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("sip.tls_cert and sip.tls_key go together: set both or neither")
        return self


def _stream_alone(entry: Any) -> Any:
    return {"stream": entry} if isinstance(entry, str) else entry


class AutoRecording(RecordingOutputRequest):
    """A recording started whenever a stream matching ``stream`` (a shell pattern)
    exists: the API's request, and the streams it records."""

    type: Literal["recording"] = "recording"
    stream: str


class RecordingConfig(Section):
    #: Where recordings are written (one sub-directory per stream).
    directory: str = "recordings"
    #: Default format of recordings: "wav" (16-bit PCM) or "opus" (Ogg/Opus).
    format: RecordingFormat = "wav"
    #: WAV sample rate (resampled from the gateway's 48 kHz when lower).
    sample_rate: RecordingSampleRate = 48000
    #: Start a new file after this many seconds (WAV tops out at ~12 h at 48 kHz).
    segment_s: Annotated[float, Range(1, 12 * 3600)] = 3600.0
    #: Record digital silence while the stream has no sender, so file time = wall-clock
    #: time; false leaves those gaps out.
    record_gaps: bool = True
    #: Data reaches the file at least this often; a crash loses at most this much.
    flush_interval_s: Annotated[float, Range(0.02, 10)] = 1.0
    #: fsync after each flush (survives power cuts, costs a disk sync per second).
    fsync: bool = False
    #: Threads for file work (writes, recovery, listing, retention): at most this many
    #: recordings touch the disk at once. They are asyncio's default executor.
    io_threads: Annotated[int, Range(1, 64)] = 4
    #: Delete finished recordings older than this (0: keep).
    max_age_days: float = 0.0
    #: Delete the oldest finished recordings beyond this total (0: no limit).
    max_total_mb: float = 0.0
    #: Streams recorded whenever they exist: ["lobby"], or [{stream = "x", format = "opus"}].
    auto: list[Annotated[AutoRecording, BeforeValidator(_stream_alone)]] = []


class PluginEntry(Section):
    #: Streams it runs on (a shell pattern).
    stream: str
    #: "module:Class", or the name of an entry point.
    processor: str
    options: dict[str, Any] = {}

    @field_validator("processor")
    @classmethod
    def _named(cls, processor: str) -> str:
        if not processor:
            raise ValueError("must be 'module:Class' or an entry point name")
        return processor


class ProcessingConfig(Section):
    #: Level, loudness, voice activity and silence alarm on every stream.
    analysers: bool = True
    #: The silence alarm: below this level for this long raises it.
    silence_threshold_dbfs: float = -60.0
    silence_after_s: float = 10.0
    #: User processors: [{stream = "lobby", processor = "mymod:MyClass", options = {}}].
    plugins: list[PluginEntry] = []


SCOPE = re.compile(r"^(admin|(publish|listen):[A-Za-z0-9._~*?\[\]-]+)$")


def check_scopes(scopes: list[str]) -> list[str]:
    if not scopes:
        raise ValueError("must be a non-empty list")
    for scope in scopes:
        if not SCOPE.match(scope):
            raise ValueError(f"bad scope {scope!r} (use admin, publish:<pattern> or "
                             "listen:<pattern>)")
    return scopes


class ApiKey(Section):
    #: Who holds it, in logs (default key<index>).
    name: str | None = None
    key: str = Field(min_length=16, repr=False)
    scopes: Annotated[list[str], AfterValidator(check_scopes)]


class AuthConfig(Section):
    #: API keys: [{name = "ops", key = "long-random-string", scopes = ["admin"]}]. Scopes:
    #: "admin", "publish:<stream pattern>", "listen:<stream pattern>" (shell patterns).
    keys: list[ApiKey] = Field([], repr=False)
    #: Secret for signed tokens (JWT); their "scope" claim lists scopes like the keys'.
    jwt_secret: str = Field("", repr=False)
    #: Accepted JWT algorithms (HMAC ones use jwt_secret).
    jwt_algorithms: Annotated[list[str], _listing(("HS256", "HS384", "HS512"))] = ["HS256"]
    #: /metrics without a token (a scraper on a trusted network); otherwise admin.
    public_metrics: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.keys or self.jwt_secret)

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, secret: str) -> str:
        if secret and len(secret) < 32:
            raise ValueError("must be at least 32 characters")
        return secret

    @model_validator(mode="after")
    def _names_once(self) -> AuthConfig:
        names = set()
        for i, key in enumerate(self.keys):
            name = key.name or f"key{i}"
            if name in names:
                raise KeyProblem(f"keys[{i}].name", f"{name!r} used twice")
            names.add(name)
        return self


class AdmissionConfig(Section):
    """Refusing new work before the gateway is overloaded (docs/monitoring.md)."""

    enabled: bool = True
    #: Refuse new sessions, calls and outputs when the process's CPU use is above this
    #: share of what it may use (one core, or the container's CPU limit).
    cpu_limit: Annotated[float, Range(0.1, 1.0)] = 0.85
    #: ... or when the media clock's ticks run this late (p99 over the last second, ms).
    lateness_limit_ms: Annotated[float, Range(1, 1000)] = 40.0
    #: Retry-After of the 503 answers (HTTP and SIP), seconds.
    retry_after_s: Annotated[int, Range(1, 3600)] = 5


def _name(pattern: str, what: str):  # type: ignore[no-untyped-def]
    """A string matching ``pattern`` (fully), or an error saying what it must be."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if value and not compiled.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value

    return AfterValidator(check)


def _nats_urls(urls: list[str]) -> list[str]:
    for url in urls:
        if not re.fullmatch(r"(nats|tls)://[^\s/]+", url):
            raise ValueError(f"must look like nats://host:4222 or tls://host:4222, got {url!r}")
    return urls


class ClusterConfig(Section):
    """Workers and several machines as one gateway (docs/cluster.md)."""

    #: NATS servers ("nats://10.0.0.1:4222", several for failover; "tls://" for TLS). Empty:
    #: a single gateway, unless `--workers` > 1 starts an embedded nats-server on loopback.
    nats_url: Annotated[list[str], AfterValidator(_nats_urls)] = []
    #: This node's name in the cluster. Empty: the host name; workers add "-w<index>".
    node_name: Annotated[str, _name(r"[A-Za-z0-9_-]{1,48}", "1-48 of A-Z a-z 0-9 _ -")] = ""
    #: Worker processes on this machine (`gateway serve --workers N`); 0 = one per core.
    workers: Annotated[int, Range(0, 256)] = 1
    #: NATS credentials: user and password, a token, or a .creds file; TLS CA (and a
    #: client certificate when the servers ask for one).
    user: str = ""
    password: str = Field("", repr=False)
    token: str = Field("", repr=False)
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    #: Prefix of every subject and key-value bucket (several clusters may share NATS).
    subject_prefix: Annotated[str, _name(r"[A-Za-z0-9_-]{1,32}",
                                         "1-32 of A-Z a-z 0-9 _ -")] = "gw"
    #: A node that stops renewing (dead, cut off) loses its streams after this long.
    lease_ttl_s: Annotated[float, Range(1, 60)] = 3.0
    #: Copies of the directory buckets across NATS servers (3 survives one server's loss).
    kv_replicas: Annotated[int, Range(1, 5)] = 1
    #: Base URL other nodes' clients reach this node at (redirects when this node is full).
    advertise_url: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.nats_url)

    @model_validator(mode="after")
    def _pairs(self) -> ClusterConfig:
        if self.user and not self.password:
            raise KeyProblem("password", "is required with cluster.user")
        if self.tls_key and not self.tls_cert:
            raise KeyProblem("tls_cert", "is required with cluster.tls_key")
        return self


def _log_level(name: str) -> str:
    if not isinstance(logging.getLevelNamesMapping().get(name.upper()), int):
        raise ValueError("must be one of debug, info, warning, error, critical")
    return name


class Config(BaseSettings):
    """The whole configuration; ``load`` builds it from its layers."""

    model_config = SettingsConfigDict(strict=True, extra="forbid", env_prefix="GATEWAY_",
                                      env_nested_delimiter="__", validate_default=False)

    http: HttpConfig = Field(default_factory=HttpConfig)
    streams: StreamsConfig = Field(default_factory=StreamsConfig)
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig)
    rtp: RtpConfig = Field(default_factory=RtpConfig)
    sip: SipConfig = Field(default_factory=SipConfig)
    recording: RecordingConfig = Field(default_factory=RecordingConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    #: A name of Python's logging levels, in any case (debug, info, warning, error, ...).
    log_level: Annotated[str, AfterValidator(_log_level)] = "info"
    #: "json", "text", or "auto": JSON when stderr is not a terminal.
    log_format: Literal["auto", "json", "text"] = "auto"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   **_: Any) -> tuple[Any, ...]:
        """What ``load`` gives only: it reads the environment itself (TOML literals);
        pydantic-settings' own reading would take only JSON, and fail on the rest."""
        return (init_settings,)

    @model_validator(mode="after")
    def _exposure(self) -> Config:
        check_exposure(self)
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config) -> None:
    """No credentials: only loopback, unless the operator insists (http.allow_insecure)."""
    if config.http.allow_insecure:
        return
    if not config.auth.enabled and not is_loopback(config.http.host):
        raise KeyProblem(
            None, f"refusing to serve HTTP on {config.http.host} with no credentials "
            "configured: add [auth] keys or jwt_secret, or pass --insecure "
            "(http.allow_insecure = true)")
    sip = config.sip
    sip_guarded = (sip.users and sip.auth_calls) or sip.allow_from
    if sip.enabled and not sip_guarded and not is_loopback(sip.bind_host):
        raise KeyProblem(
            None, f"refusing to serve SIP on {sip.bind_host} to anyone: set sip.allow_from, "
            "or sip.users with sip.auth_calls = true, or pass --insecure (http.allow_insecure)")


def _say(error: Invalid) -> str:
    """One validation error, naming the key the way the configuration file writes it."""
    if error.kind == "extra_forbidden":
        return f"unknown configuration key {error.path!r}"
    if not error.path:
        return error.message
    if error.kind in TYPE_NAMES:
        return (f"configuration key {error.path!r} must be {TYPE_NAMES[error.kind][0]}, "
                f"got {type(error.value).__name__}")
    joint = " " if error.message.startswith(("must ", "is ", "needs ")) else ": "
    return f"configuration key {error.path!r}{joint}{error.message}"


def _toml_value(raw: str) -> Any:
    """An environment variable's value: a TOML literal (5070, true, ["a"], {k = "v"}) or
    JSON; anything else is the string itself."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class Environment(EnvSettingsSource):
    """``GATEWAY_SECTION__KEY`` variables of ``environ`` (not necessarily os.environ), as
    pydantic-settings reads them, with TOML literals for lists and tables."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Config)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        return _toml_value(value)

    def __call__(self) -> dict[str, Any]:
        return _unquote(super().__call__())


def _unquote(value: Any) -> Any:
    """A quoted TOML string ("gw", 'gw') in a variable means the string inside, as it does
    in the file: ``GATEWAY_CLUSTER__USER='"gw"'`` and ``GATEWAY_CLUSTER__USER=gw`` agree."""
    if isinstance(value, dict):
        return {k: _unquote(v) for k, v in value.items()}
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        parsed = _toml_value(value)
        return parsed if isinstance(parsed, str) else value
    return value


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path``, then ``GATEWAY_*`` variables of ``environ``,
    then ``overrides`` ({"http": {...}}: the command line)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        env = Environment(environ or {})()
    except ValueError as exc:  # pydantic-settings' SettingsError: a value it cannot read
        raise ConfigError(f"environment: {exc}") from None
    for layer in (env, overrides or {}):
        for section, values in layer.items():
            if isinstance(values, dict) and isinstance(data.get(section, {}), dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(_say(e) for e in invalid(exc))) from None
