"""Configuration: embedded defaults, overridden by a TOML file, then by CLI flags.

Every key is validated at start; an unknown or mistyped key is an error that names it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Largest accepted request body (SDP offers, JSON) in bytes.
    max_body_bytes: int = 65536
    #: Listening on a non-loopback address with no credentials configured is refused
    #: unless this is true (`gateway serve --insecure`).
    allow_insecure: bool = False
    #: SIGTERM: seconds to hang up calls, close sessions and finalize recordings.
    shutdown_timeout_s: float = 10.0


@dataclass
class StreamsConfig:
    #: Frames (20 ms each) kept per stream; a reader further behind is skipped forward.
    ring_frames: int = 50
    #: Create streams on first publish or listen; if false only `declared` exist.
    allow_dynamic: bool = True
    #: Remove a dynamic stream with no sender and no listener after this many seconds.
    idle_timeout_s: float = 60.0
    #: Streams that always exist.
    declared: list[str] = field(default_factory=list)


@dataclass
class WebRTCConfig:
    #: STUN/TURN servers, e.g. [{urls = "stun:stun.example.org:3478"}]. None by default.
    ice_servers: list[dict] = field(default_factory=list, repr=False)
    #: Addresses to gather ICE host candidates on (empty: all but loopback).
    host_addresses: list[str] = field(default_factory=list)
    #: 1:1 NAT: {"10.0.0.5" = "203.0.113.7"} rewrites candidates in answers.
    nat_1to1: dict[str, str] = field(default_factory=dict)
    #: Opus bitrate sent to WebRTC listeners, bits per second.
    opus_bitrate: int = 64000
    #: Jitter buffer depth bounds, in 20 ms packets.
    jitter_min_packets: int = 1
    jitter_max_packets: int = 3
    #: A sender silent this long may be replaced by a new publisher (else 409).
    takeover_after_s: float = 3.0
    #: A session whose connection is not up after this many seconds is closed.
    connect_timeout_s: float = 30.0
    #: Concurrent WebRTC sessions (publishers + listeners).
    max_sessions: int = 1000


@dataclass
class RtpConfig:
    #: Address RTP inputs listen on (use 0.0.0.0 or :: to accept sources from elsewhere).
    bind_host: str = "127.0.0.1"
    #: IPv4 address of the interface multicast outputs leave from (empty: routing table).
    multicast_interface: str = ""
    #: Outputs started with the gateway: [{stream = "a", host = "..", port = 5004, codec = "PCMU"}]
    outputs: list[dict] = field(default_factory=list)
    #: Inputs started with the gateway: [{stream = "a", port = 5006, codec = "PCMU"}]
    inputs: list[dict] = field(default_factory=list)


@dataclass
class SipConfig:
    #: Accept and place SIP calls. The SIP port is opened on start when true.
    enabled: bool = True
    #: Address the SIP and call RTP sockets bind to (0.0.0.0 or :: for phones elsewhere).
    bind_host: str = "127.0.0.1"
    #: SIP port for UDP and TCP (0: any free port, for tests).
    port: int = 5060
    transports: list[str] = field(default_factory=lambda: ["udp", "tcp"])
    #: Address written in Via, Contact and SDP (behind NAT: the public one). Empty: bind_host.
    advertised_host: str = ""
    #: RTP port range for calls: one even port (and the odd one for RTCP) per call.
    rtp_port_min: int = 20000
    rtp_port_max: int = 29999
    #: Codecs offered and accepted, best first.
    codecs: list[str] = field(default_factory=lambda: ["opus", "G722", "PCMU", "PCMA"])
    #: A call whose phone sent no RTP or RTCP for this long is ended with BYE.
    rtp_timeout_s: float = 30.0
    #: Ring (180) this long before answering a dial-in; 0 answers at once.
    ring_ms: int = 0
    #: Dial-out: give up (CANCEL) when not answered within this time.
    dial_timeout_s: float = 60.0
    #: Concurrent calls; a call beyond it is refused with 503.
    max_calls: int = 500
    #: Open SIP transactions (each lives ~32 s after its final response); new requests
    #: beyond it get 503, except BYE and CANCEL.
    max_transactions: int = 10000
    #: Largest SIP message accepted, bytes (larger: 413, or dropped if unreadable).
    max_message_bytes: int = 16384
    #: Open TCP connections; beyond it new ones are closed at once (counted).
    max_tcp_connections: int = 1000
    #: A TCP connection that does not complete a message within this time of accepting it
    #: or of the message's first byte is closed (counted); idle between messages is fine.
    tcp_message_timeout_s: float = 30.0
    #: Requests per second (and burst) per source address; excess is dropped and counted.
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 100
    #: Dial-in to a stream that does not exist yet creates it (else 404).
    create_streams: bool = False
    #: Call routing by request-URI user, first match wins:
    #: [{match = "^talk-(.+)$", listen = "\\1", publish = "phone-\\1"}]; no match: listen
    #: to the stream named by the user part.
    routes: list[dict] = field(default_factory=list)
    #: DTMF `*<digits>#` switches the caller to another stream; this maps digits to names
    #: (unmapped digits switch to the stream named by the digits, if it exists).
    dtmf_switch: bool = True
    dtmf_streams: dict[str, str] = field(default_factory=dict)
    #: Digest realm of the registrar and of call authentication.
    realm: str = "audio-gateway"
    #: Users allowed to REGISTER (and call, when auth_calls): {alice = "password"}.
    users: dict[str, str] = field(default_factory=dict, repr=False)
    #: Challenge INVITEs too (digest with `users`); OPTIONS are always answered.
    auth_calls: bool = False
    #: Digest algorithms challenged with, one WWW-Authenticate each. MD5 alone by default:
    #: some phones (baresip 1.0) cannot handle two challenges; add "SHA-256" first for
    #: phones that can (RFC 7616).
    digest_algorithms: list[str] = field(default_factory=lambda: ["MD5"])
    #: Upstream registrations: [{registrar = "sip:pbx.example.org", user = "gw",
    #: password = "...", expires = 300}] (optional: aor, contact_user, username).
    registrations: list[dict] = field(default_factory=list, repr=False)
    #: Credentials for challenges met when dialing out: [{realm = "pbx", user = "gw",
    #: password = "..."}] (realm "*" or absent: any realm).
    credentials: list[dict] = field(default_factory=list, repr=False)
    #: Source addresses (CIDR) allowed to send SIP requests; empty: everyone.
    allow_from: list[str] = field(default_factory=list)
    user_agent: str = "audio-gateway"


@dataclass
class RecordingConfig:
    #: Where recordings are written (one sub-directory per stream).
    directory: str = "recordings"
    #: Default format of recordings: "wav" (16-bit PCM) or "opus" (Ogg/Opus).
    format: str = "wav"
    #: WAV sample rate (resampled from the gateway's 48 kHz when lower).
    sample_rate: int = 48000
    #: Start a new file after this many seconds (WAV tops out at ~12 h at 48 kHz).
    segment_s: float = 3600.0
    #: Record digital silence while the stream has no sender, so file time = wall-clock
    #: time; false leaves those gaps out.
    record_gaps: bool = True
    #: Data reaches the file at least this often; a crash loses at most this much.
    flush_interval_s: float = 1.0
    #: fsync after each flush (survives power cuts, costs a disk sync per second).
    fsync: bool = False
    #: Delete finished recordings older than this (0: keep).
    max_age_days: float = 0.0
    #: Delete the oldest finished recordings beyond this total (0: no limit).
    max_total_mb: float = 0.0
    #: Streams recorded whenever they exist: ["lobby"], or [{stream = "x", format = "opus"}].
    auto: list = field(default_factory=list)


@dataclass
class ProcessingConfig:
    #: Level, loudness, voice activity and silence alarm on every stream.
    analysers: bool = True
    #: The silence alarm: below this level for this long raises it.
    silence_threshold_dbfs: float = -60.0
    silence_after_s: float = 10.0
    #: User processors: [{stream = "lobby", processor = "mymod:MyClass", options = {}}].
    plugins: list[dict] = field(default_factory=list)


@dataclass
class AuthConfig:
    #: API keys: [{name = "ops", key = "long-random-string", scopes = ["admin"]}]. Scopes:
    #: "admin", "publish:<stream pattern>", "listen:<stream pattern>" (shell patterns).
    keys: list[dict] = field(default_factory=list, repr=False)
    #: Secret for signed tokens (JWT); their "scope" claim lists scopes like the keys'.
    jwt_secret: str = field(default="", repr=False)
    #: Accepted JWT algorithms (HMAC ones use jwt_secret).
    jwt_algorithms: list[str] = field(default_factory=lambda: ["HS256"])
    #: /metrics without a token (a scraper on a trusted network); otherwise admin.
    public_metrics: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.keys or self.jwt_secret)


@dataclass
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log_level: str = "info"
    #: "json", "text", or "auto": JSON when stderr is not a terminal.
    log_format: str = "auto"


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown configuration key {path!r}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, path)
            continue
        origin = getattr(kind, "__origin__", kind)
        if origin is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
            raise ConfigError(
                f"configuration key {path!r} must be {origin.__name__}, "
                f"got {type(value).__name__}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def validate(config: Config) -> Config:
    if not 0 < config.http.port < 65536:
        raise ConfigError("configuration key 'http.port' must be 1-65535")
    if config.streams.ring_frames < 2:
        raise ConfigError("configuration key 'streams.ring_frames' must be at least 2")
    w = config.webrtc
    if not 1 <= w.jitter_min_packets <= w.jitter_max_packets <= 10:
        raise ConfigError("need 1 <= webrtc.jitter_min_packets <= jitter_max_packets <= 10")
    for i, server in enumerate(w.ice_servers):
        urls = server.get("urls")
        if not (isinstance(urls, str) or (isinstance(urls, list) and urls)):
            raise ConfigError(f"configuration key 'webrtc.ice_servers[{i}].urls' is required")
        reject_unknown(server, {"urls", "username", "credential"}, f"webrtc.ice_servers[{i}]")
    if not 6000 <= w.opus_bitrate <= 510000:
        raise ConfigError("configuration key 'webrtc.opus_bitrate' must be 6000-510000")
    validate_sip(config.sip)
    validate_recording(config.recording)
    validate_processing(config.processing)
    validate_auth(config.auth)
    if config.log_format not in ("auto", "json", "text"):
        raise ConfigError("configuration key 'log_format' must be auto, json or text")
    validate_exposure(config)
    return config


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_exposure(config: Config) -> None:
    """No credentials: only loopback, unless the operator insists (http.allow_insecure)."""
    if config.http.allow_insecure:
        return
    if not config.auth.enabled and not is_loopback(config.http.host):
        raise ConfigError(
            f"refusing to serve HTTP on {config.http.host} with no credentials configured: "
            "add [auth] keys or jwt_secret, or pass --insecure (http.allow_insecure = true)"
        )
    sip = config.sip
    sip_guarded = (sip.users and sip.auth_calls) or sip.allow_from
    if sip.enabled and not sip_guarded and not is_loopback(sip.bind_host):
        raise ConfigError(
            f"refusing to serve SIP on {sip.bind_host} to anyone: set sip.allow_from, or "
            "sip.users with sip.auth_calls = true, or pass --insecure (http.allow_insecure)"
        )


SCOPE = re.compile(r"^(admin|(publish|listen):[A-Za-z0-9._~*?\[\]-]+)$")


def validate_auth(auth: AuthConfig) -> None:
    names = set()
    for i, key in enumerate(auth.keys):
        reject_unknown(key, {"name", "key", "scopes"}, f"auth.keys[{i}]")
        secret = key.get("key")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError(f"configuration key 'auth.keys[{i}].key' must be a string of at "
                              "least 16 characters")
        check_scopes(key.get("scopes"), f"auth.keys[{i}].scopes")
        name = key.get("name", f"key{i}")
        if name in names:
            raise ConfigError(f"configuration key 'auth.keys[{i}].name': {name!r} used twice")
        names.add(name)
    if auth.jwt_secret and len(auth.jwt_secret) < 32:
        raise ConfigError("configuration key 'auth.jwt_secret' must be at least 32 characters")
    bad = set(auth.jwt_algorithms) - {"HS256", "HS384", "HS512"}
    if bad or not auth.jwt_algorithms:
        raise ConfigError("configuration key 'auth.jwt_algorithms' must list HS256/HS384/HS512")


def check_scopes(scopes: object, where: str) -> list[str]:
    if not isinstance(scopes, list) or not scopes:
        raise ConfigError(f"configuration key '{where}' must be a non-empty list")
    for scope in scopes:
        if not isinstance(scope, str) or not SCOPE.match(scope):
            raise ConfigError(f"configuration key '{where}': bad scope {scope!r} (use admin, "
                              "publish:<pattern> or listen:<pattern>)")
    return scopes


def validate_recording(rec: RecordingConfig) -> None:
    if rec.format not in ("wav", "opus"):
        raise ConfigError("configuration key 'recording.format' must be 'wav' or 'opus'")
    if rec.sample_rate not in (8000, 16000, 24000, 48000):
        raise ConfigError("configuration key 'recording.sample_rate' must be 8000, 16000, "
                          "24000 or 48000")
    if not 1.0 <= rec.segment_s <= 12 * 3600:
        raise ConfigError("configuration key 'recording.segment_s' must be 1-43200")
    if not 0.02 <= rec.flush_interval_s <= 10:
        raise ConfigError("configuration key 'recording.flush_interval_s' must be 0.02-10")
    for i, entry in enumerate(rec.auto):
        if isinstance(entry, str):
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("stream"), str):
            raise ConfigError(f"configuration key 'recording.auto[{i}]' needs a stream name")
        reject_unknown(entry, {"stream", "format", "sample_rate"}, f"recording.auto[{i}]")


def validate_processing(proc: ProcessingConfig) -> None:
    for i, entry in enumerate(proc.plugins):
        reject_unknown(entry, {"stream", "processor", "options"}, f"processing.plugins[{i}]")
        if not isinstance(entry.get("processor"), str) or not entry["processor"]:
            raise ConfigError(f"configuration key 'processing.plugins[{i}].processor' must be "
                              "'module:Class' or an entry point name")
        if not isinstance(entry.get("stream"), str):
            raise ConfigError(f"configuration key 'processing.plugins[{i}].stream' is required")


def validate_sip(sip: SipConfig) -> None:
    from .codecs.spec import codec_by_name

    if not 0 <= sip.port < 65536:
        raise ConfigError("configuration key 'sip.port' must be 0-65535")
    if not 1024 <= sip.rtp_port_min < sip.rtp_port_max < 65536:
        raise ConfigError("need 1024 <= sip.rtp_port_min < sip.rtp_port_max < 65536")
    bad = [t for t in sip.transports if t not in ("udp", "tcp")]
    if bad or not sip.transports:
        raise ConfigError("configuration key 'sip.transports' must list 'udp' and/or 'tcp'")
    for name in sip.codecs:
        try:
            codec_by_name(name)
        except ValueError as exc:
            raise ConfigError(f"configuration key 'sip.codecs': {exc}") from None
    for i, route in enumerate(sip.routes):
        reject_unknown(route, {"match", "listen", "publish"}, f"sip.routes[{i}]")
        if "match" not in route or "listen" not in route and "publish" not in route:
            raise ConfigError(f"'sip.routes[{i}]' needs 'match' and 'listen' and/or 'publish'")
        try:
            re.compile(route["match"])
        except (re.error, TypeError) as exc:
            raise ConfigError(f"configuration key 'sip.routes[{i}].match': {exc}") from None
    for i, reg in enumerate(sip.registrations):
        for key in ("registrar", "user", "password"):
            if not isinstance(reg.get(key), str):
                raise ConfigError(f"configuration key 'sip.registrations[{i}].{key}' is required")
        allowed = {"registrar", "user", "password", "expires", "aor", "username", "contact_user"}
        reject_unknown(reg, allowed, f"sip.registrations[{i}]")
    for i, cred in enumerate(sip.credentials):
        reject_unknown(cred, {"realm", "user", "password"}, f"sip.credentials[{i}]")
        if not isinstance(cred.get("user"), str) or not isinstance(cred.get("password"), str):
            raise ConfigError(f"'sip.credentials[{i}]' needs 'user' and 'password'")
    if not sip.digest_algorithms or set(sip.digest_algorithms) - {"MD5", "SHA-256"}:
        raise ConfigError("configuration key 'sip.digest_algorithms' must list MD5 and/or SHA-256")
    for i, cidr in enumerate(sip.allow_from):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"configuration key 'sip.allow_from[{i}]': {exc}") from None
    for key in ("max_calls", "max_tcp_connections"):
        if getattr(sip, key) < 1:
            raise ConfigError(f"configuration key 'sip.{key}' must be at least 1")
    if sip.tcp_message_timeout_s <= 0:
        raise ConfigError("configuration key 'sip.tcp_message_timeout_s' must be positive")


def reject_unknown(table: dict, allowed: set[str] | frozenset[str], where: str) -> None:
    """ConfigError naming the first key of ``table`` (found at ``where``) not in ``allowed``."""
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"unknown configuration key '{where}.{min(unknown)}'")


ENV_PREFIX = "GATEWAY_"


def env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``GATEWAY_SIP__PORT=5070`` → {"sip": {"port": 5070}} (``GATEWAY__LOG_LEVEL`` for a
    top-level key); values are TOML literals
    (numbers, true/false, ["lists"], {tables}), anything else a string."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if not key:
            raise ConfigError(f"environment variable {name}: expected GATEWAY_SECTION__KEY")
        if section:
            out.setdefault(section, {})[key] = value
        else:  # GATEWAY__LOG_LEVEL: a top-level key
            out[key] = value
    return out


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None) -> Config:
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
    for layer in (env_overrides(environ or {}), overrides or {}):
        for section, values in layer.items():
            if isinstance(values, dict) and isinstance(data.get(section, {}), dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
    return validate(_build(Config, data, ""))
