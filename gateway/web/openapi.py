"""The HTTP API contract: an OpenAPI 3.1 document, served at /api/v1/openapi.json.

The document is built here, in Python, so that it shares its constants (stream names,
codecs, packet times, recording formats) with the handlers that enforce them.
tests/test_openapi.py keeps it honest: every route the app serves must be described here
and every path described here must be served, and a fuzzer drives the API from it.

Access control (gateway/web/auth.py): each operation's ``x-scopes`` names what its bearer
token needs: ``publish`` or ``listen`` (a ``publish:<pattern>`` / ``listen:<pattern>``
scope matching the stream in the path), ``read`` (any valid token), ``admin`` (which
allows everything), or nothing (public); ``security`` says the same in OpenAPI terms.
tests/test_openapi.py checks both against ``auth.required``.
"""

from __future__ import annotations

import copy
import json
from importlib import metadata
from typing import Any

from aiohttp import web

from ..codecs.spec import CODECS, L16, PTIMES
from ..core.registry import STREAM_NAME
from ..recording.store import FORMATS

PATH = "/api/v1/openapi.json"

JSON = "application/json"
PROBLEM = "application/problem+json"
SDP = "application/sdp"
SSE = "text/event-stream"

Schema = dict[str, Any]


def _version() -> str:
    try:
        return metadata.version("audio-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "0.0.0"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict[str, Any], extra: bool = True, **more: Any) -> Schema:
    out: Schema = {"type": "object", "required": required, "properties": props}
    if not extra:
        out["additionalProperties"] = False
    out.update(more)
    return out


INT = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
EPOCH = {"type": "number", "description": "Unix time, seconds"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


CODEC_NAMES = [*(c.name for c in CODECS.values()), "L16"]
L16_RATE = {"type": "integer", "description": f"L16 sample rate: one of {sorted(L16)}, "
                                              "default 48000 (other codecs ignore it)"}
#: The rate of L16 is checked; other codecs accept any integer and ignore it.
L16_RATES = {"if": {"required": ["codec"], "properties": {"codec": {"const": "L16"}}},
             "then": {"properties": {"rate": {"enum": sorted(L16)}}}}
ALL_PTIMES = sorted({p for ptimes in PTIMES.values() for p in ptimes})

# -- example SDP offers (valid for check_offer; no ICE candidates, so nothing is dialled) -
_OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n"
    "a=fingerprint:sha-256 "
    "19:E2:1C:3B:4B:9F:81:E6:B8:5C:F4:A5:A8:D8:73:04:BB:05:2F:70:9F:04:A9:0E:05:E9:26:33:E8:70:88:A2"
    "\r\na=setup:actpass\r\na=mid:0\r\na={direction}\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
)
PUBLISH_OFFER = _OFFER.format(direction="sendonly")
LISTEN_OFFER = _OFFER.format(direction="recvonly")
RTP_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=rtp sender\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 5006 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def _schemas() -> dict[str, Schema]:
    field_error = _obj(["field", "message"], {
        "field": {**STR, "description": "the request field at fault, or `body`"},
        "message": STR,
    })
    return {
        "Problem": _obj(["type", "title", "status"], {
            "type": {**STR, "format": "uri-reference", "default": "about:blank"},
            "title": {**STR, "description": "the HTTP reason phrase"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {**STR, "description": "what went wrong, for a person"},
            "instance": {**STR, "format": "uri-reference"},
            "errors": {"type": "array", "items": ref("FieldError")},
        }, description="RFC 9457 problem details: the shape of every 4xx and 5xx response."),
        "ValidationProblem": {
            "allOf": [ref("Problem"), _obj(["errors"], {
                "status": {"const": 400},
                "errors": {"type": "array", "minItems": 1, "items": ref("FieldError")},
            })],
            "description": "A 400 naming the request fields at fault.",
        },
        "FieldError": field_error,
        "StreamName": {
            "type": "string", "pattern": STREAM_NAME.pattern, "examples": ["lobby"],
            "description": "1-64 of `A-Z a-z 0-9 . _ ~ -`, starting with a letter or digit",
        },
        "Codec": {
            "type": "string", "enum": CODEC_NAMES, "default": "PCMU",
            "description": "codec name, any case; L16 takes `rate`",
        },
        # -- request bodies ---------------------------------------------------------
        "RtpOutputRequest": _obj(["type", "host", "port"], {
            "type": {"const": "rtp"},
            "host": {**STR, "minLength": 1, "examples": ["239.1.1.1", "127.0.0.1"],
                     "description": "destination: unicast or multicast address, or a name"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65534, "examples": [5004],
                     "description": "RTP port; RTCP goes to port + 1"},
            "codec": ref("Codec"),
            "rate": L16_RATE,
            "ptime": {"type": "integer", "enum": ALL_PTIMES, "default": 20,
                      "description": "packet time, ms; Opus has no 30"},
            "ttl": {"type": "integer", "minimum": 1, "maximum": 255, "default": 16},
            "bitrate": {"type": "integer", "minimum": 6000, "maximum": 510000,
                        "description": "Opus bit rate, b/s (default `webrtc.opus_bitrate`)"},
            "stream": {"description": "ignored (the config-file form names the stream)"},
        }, extra=False, description="Send the stream as RTP to host:port.", **L16_RATES),
        "SipOutputRequest": _obj(["type", "uri"], {
            "type": {"const": "sip"},
            "uri": {**STR, "pattern": r"\S", "examples": ["sip:alice@pbx.example.org"],
                    "description": "the phone to call; a bare user calls a registered user"},
            "timeout_s": {"type": "number", "minimum": 1, "maximum": 600,
                          "description": "give up ringing after this (default "
                                         "`sip.dial_timeout_s`)"},
            "stream": {"description": "ignored"},
        }, extra=False, description="Call a phone that plays the stream (SIP dial-out)."),
        "RecordingOutputRequest": _obj(["type"], {
            "type": {"const": "recording"},
            "format": {"type": "string", "enum": list(FORMATS),
                       "description": "default `recording.format`"},
            "sample_rate": {"type": "integer", "enum": [8000, 16000, 24000, 48000],
                            "description": "WAV only (Opus is 48 kHz)"},
            "stream": {"description": "ignored"},
        }, extra=False, description="Record the stream to a file."),
        "OutputRequest": {
            "oneOf": [ref("RtpOutputRequest"), ref("SipOutputRequest"),
                      ref("RecordingOutputRequest")],
            "discriminator": {"propertyName": "type", "mapping": {
                "rtp": "#/components/schemas/RtpOutputRequest",
                "sip": "#/components/schemas/SipOutputRequest",
                "recording": "#/components/schemas/RecordingOutputRequest",
            }},
        },
        "RtpInputRequest": _obj(["port"], {
            "type": {"const": "rtp", "default": "rtp"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535,
                     "description": "UDP port to listen on (`rtp.bind_host`); 0: any free"},
            "codec": ref("Codec"),
            "rate": L16_RATE,
            "payload_type": {"type": "integer", "minimum": 0, "maximum": 127,
                             "description": "default: the codec's usual one"},
            "stream": {"description": "ignored (the config-file form names the stream)"},
        }, extra=False, description="Receive RTP on a port and make it the stream's sender.",
            **L16_RATES),
        # -- response bodies --------------------------------------------------------
        "Encoder": _obj(["codec", "clock_rate", "bitrate", "ptime", "subscribers",
                         "frames_encoded"], {
            "codec": STR, "clock_rate": INT, "bitrate": _nullable(INT), "ptime": INT,
            "subscribers": COUNT, "frames_encoded": COUNT, "skipped_frames": COUNT,
        }),
        "Analysis": _obj(["plugins"], {
            "frames": COUNT, "peak_dbfs": NUM, "rms_dbfs": NUM, "meter_dbfs": NUM,
            "peak_hold_dbfs": NUM, "momentary_lufs": _nullable(NUM),
            "short_term_lufs": _nullable(NUM), "integrated_lufs": _nullable(NUM),
            "voice": _nullable(BOOL), "voice_ratio": _nullable(NUM), "silent": BOOL,
            "silence_alarm": BOOL, "skipped_frames": COUNT,
            "plugins": {"type": "array", "items": {"type": "object"}},
        }, description="levels, loudness (EBU R 128), voice activity, silence alarm"),
        "Session": _obj(["id", "kind", "role", "stream", "codec", "state", "since"], {
            "id": STR, "kind": STR,
            "role": {"type": "string", "enum": ["publisher", "listener"]},
            "stream": STR, "codec": _nullable(STR),
            "state": {**STR, "description": "the peer connection's state"},
            "since": EPOCH,
        }, description="A WebRTC (WHIP or WHEP) session, with its counters."),
        "Stream": _obj(["name", "sender", "listeners", "listeners_by_kind", "frames_written",
                        "frames_from_sender", "frames_silence", "encoders", "analysis"], {
            "name": STR,
            "sender": _nullable({"type": "object", "description": "the sender's info"}),
            "listeners": COUNT,
            "listeners_by_kind": {"type": "object", "additionalProperties": COUNT},
            "frames_written": COUNT, "frames_from_sender": COUNT, "frames_silence": COUNT,
            "duration_s": NUM,
            "encoders": {"type": "array", "items": ref("Encoder")},
            "analysis": _nullable(ref("Analysis")),
            "persistent": BOOL,
        }),
        "StreamDetail": {"allOf": [ref("Stream"), _obj(["sessions"], {
            "sessions": {"type": "array", "items": ref("Session")},
        })]},
        "RtpOutput": _obj(["id", "type", "stream", "host", "port", "codec", "payload_type",
                           "ptime", "ssrc", "packets", "bytes"], {
            "id": STR, "type": {"const": "rtp"}, "stream": STR, "host": STR,
            "port": INT, "address": STR, "multicast": BOOL, "codec": STR, "clock_rate": INT,
            "payload_type": INT, "ptime": INT, "ssrc": INT, "packets": COUNT,
            "bytes": COUNT, "drops": COUNT, "errors": COUNT, "encoder_shared_with": COUNT,
            "since": EPOCH,
        }),
        "SipCall": _obj(["id", "type", "direction", "state", "uri", "stream"], {
            "id": STR, "type": {"const": "sip"},
            "direction": {"type": "string", "enum": ["in", "out"]},
            "state": {"type": "string", "examples": ["calling", "ringing", "active", "ended"]},
            "status": _nullable(INT), "uri": STR, "stream": STR, "publish": _nullable(STR),
            "codec": _nullable(STR), "payload_type": _nullable(INT), "on_hold": BOOL,
            "packets": COUNT, "bytes": COUNT, "drops": COUNT, "errors": COUNT,
            "media": {"type": "object"}, "dtmf": {"type": "array"},
            "since": EPOCH, "answered": _nullable(EPOCH), "end_reason": _nullable(STR),
        }),
        "Recorder": _obj(["id", "type", "stream", "state", "format", "sample_rate"], {
            "id": STR, "type": {"const": "recording"}, "stream": STR,
            "state": {"type": "string", "examples": ["starting", "recording", "stopped",
                                                     "failed"]},
            "error": _nullable(STR), "format": {"type": "string", "enum": list(FORMATS)},
            "sample_rate": INT, "duration_s": NUM, "gap_frames": COUNT,
            "skipped_frames": COUNT, "file": _nullable(STR),
            "files": {"type": "array", "items": STR}, "since": EPOCH,
        }, description="A recording in progress (an output of its stream)."),
        "Output": {
            "oneOf": [ref("RtpOutput"), ref("SipCall"), ref("Recorder")],
            "discriminator": {"propertyName": "type", "mapping": {
                "rtp": "#/components/schemas/RtpOutput",
                "sip": "#/components/schemas/SipCall",
                "recording": "#/components/schemas/Recorder",
            }},
        },
        "RtpInput": _obj(["id", "type", "stream", "port", "codecs"], {
            "id": STR, "type": {"const": "rtp"}, "kind": STR, "stream": STR, "port": INT,
            "codecs": {"type": "object", "additionalProperties": STR,
                       "description": "payload type -> codec"},
            "source": _nullable(STR), "malformed": COUNT, "rtcp_packets": COUNT,
            "since": EPOCH, "packets": COUNT, "lost": COUNT, "late": COUNT,
            "concealed": COUNT, "delay_ms_max": NUM,
        }),
        "RecordingFile": _obj(["id", "stream", "format", "file", "started", "duration_s",
                               "bytes", "in_progress", "recovered"], {
            "id": STR, "stream": STR, "format": {"type": "string", "enum": list(FORMATS)},
            "file": STR, "started": EPOCH, "duration_s": NUM, "bytes": COUNT,
            "in_progress": BOOL, "recovered": BOOL,
        }),
        "Stats": _obj(["streams", "sessions", "encoders_active", "encoders_created_total",
                       "clock_ticks", "clock_late_ticks"], {
            "streams": COUNT, "sessions": COUNT, "encoders_active": COUNT,
            "encoders_created_total": COUNT, "clock_ticks": COUNT, "clock_late_ticks": COUNT,
            "sip_calls": COUNT,
        }),
        "SipStatus": _obj(["enabled"], {
            "enabled": BOOL, "port": INT, "advertised_host": STR, "calls": COUNT,
            "calls_by_state": {"type": "object", "additionalProperties": COUNT},
            "responses_sent": {"type": "object", "additionalProperties": COUNT,
                               "description": "by status code"},
            "messages_received": COUNT, "messages_malformed": COUNT,
            "messages_too_large": COUNT, "rate_limited": COUNT,
            "tcp_connections": COUNT, "tcp_connections_refused": COUNT,
            "tcp_connections_timed_out": COUNT,
            "registrations": {"type": "array", "items": {"type": "object"}},
            "registered_users": COUNT,
            "active_calls": {"type": "array", "items": ref("SipCall")},
        }, description="`{\"enabled\": false}` when SIP is off; else its counters."),
        "Health": _obj(["status"], {"status": {"const": "ok"}}),
        "Readiness": _obj(["status", "checks"], {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": BOOL},
        }),
    }


# -- responses -------------------------------------------------------------------------
def _problem(description: str, schema: str = "Problem", headers: dict | None = None) -> Schema:
    out: Schema = {"description": description, "content": {PROBLEM: {"schema": ref(schema)}}}
    if headers:
        out["headers"] = headers
    return out


def _json(description: str, schema: Schema, headers: dict | None = None) -> Schema:
    out: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _header(description: str) -> Schema:
    return {"description": description, "schema": STR}


def _responses() -> dict[str, Schema]:
    return {
        "FieldErrors": _problem("A field is missing, of the wrong type or out of range; "
                                "`errors` names it.", "ValidationProblem"),
        "NotFound": _problem("No such stream, session, output, input or recording."),
        "MethodNotAllowed": _problem("Any method a path does not list here.",
                                     headers={"Allow": _header("the methods it supports")}),
        "PayloadTooLarge": _problem("The body is larger than `http.max_body_bytes`."),
        "UnsupportedMediaType": _problem("Send `application/sdp`."),
        "Unauthorized": _problem("No valid bearer token.",
                                 headers={"WWW-Authenticate": _header("Bearer")}),
        "Forbidden": _problem("The token lacks the scope this operation needs."),
    }


def _r(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


NO_CONTENT = {"description": "Done."}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": _header("`*`"),
    "Access-Control-Allow-Methods": _header("the methods of WHIP/WHEP"),
    "Access-Control-Expose-Headers": _header("`Location, Link, ETag`"),
}


# -- parameters ------------------------------------------------------------------------
def _path_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string", "minLength": 1}}


STREAM = _path_param("stream", "stream name", ref("StreamName"))
SESSION = _path_param("session", "session id (the last part of the WHIP/WHEP Location)")
OUTPUT = _path_param("output", "output id: an RTP output, a SIP call or a recording")
INPUT = _path_param("input", "input id")
RECORDING = _path_param("id", "recording id (from GET /api/v1/recordings)")


#: Where ``?token=`` may stand in for the header (EventSource and <audio> cannot send one).
QUERY_TOKEN_OPS = {"events", "stream_levels", "get_recording"}


def _op(op_id: str, summary: str, tags: list[str], scopes: list[str],
        responses: dict[str, Any], **more: Any) -> Schema:
    out: Schema = {"operationId": op_id, "summary": summary, "tags": tags,
                   "x-scopes": scopes}
    out.update(more)
    if scopes:
        roles = [] if scopes == ["read"] else scopes
        out["security"] = [{"bearerAuth": roles}]
        if op_id in QUERY_TOKEN_OPS:
            out["security"].append({"queryToken": roles})
        responses = {**responses, "401": _r("Unauthorized"), "403": _r("Forbidden")}
    else:
        out["security"] = []
    out["responses"] = responses
    return out


def _whip_whep(prefix: str, role: str, scope: str, offer: str) -> dict[str, Schema]:
    tag = prefix.upper()
    verb = "Publish to" if role == "publisher" else "Listen to"
    options = _op(
        f"{prefix}_options", "CORS preflight / discover WHIP-WHEP", [tag], [],
        {"204": {"description": "Accepted methods and media types.", "headers": {
            "Accept-Post": _header("`application/sdp`"), **CORS_HEADERS}}},
        description="Answers for any name: a preflight says nothing about the stream.",
        parameters=[_path_param("stream", "stream name (not checked)")],
    )
    return {
        f"/{prefix}/{{stream}}": {
            "parameters": [STREAM],
            "post": _op(
                f"{prefix}_post", f"{verb} a stream: POST an SDP offer, get the answer",
                [tag], [scope],
                {
                    "201": {
                        "description": "The session is created; the body is the SDP answer "
                                       "with every ICE candidate (no trickle).",
                        "headers": {
                            "Location": {**_header(f"/{prefix}/{{stream}}/{{session}}: "
                                                   "DELETE it to end"), "required": True},
                            "ETag": _header("the session id, quoted"), **CORS_HEADERS},
                        "content": {SDP: {"schema": STR}},
                    },
                    "400": _problem("The stream name is invalid, or the offer is empty, "
                                    "malformed, or has no usable audio section (no ICE "
                                    "credentials or DTLS fingerprint, no codec in common, "
                                    "no rtcp-mux)."),
                    "404": _problem("Unknown stream (`streams.allow_dynamic = false`)."),
                    "409": _problem("The stream already has a live sender."
                                    if role == "publisher" else "The stream is busy."),
                    "413": _r("PayloadTooLarge"),
                    "415": _r("UnsupportedMediaType"),
                    "503": _problem("`webrtc.max_sessions` reached."),
                },
                description=(
                    "RFC 9725 (WHIP)." if role == "publisher" else
                    "WHEP (draft-ietf-wish-whep). The answer's codec is the first of the "
                    "offer's that the gateway speaks: Opus, G.722, PCMU, PCMA."),
                requestBody={"required": True, "content": {SDP: {
                    "schema": STR, "examples": {"offer": {"value": offer}}}}},
            ),
            "options": options,
        },
        f"/{prefix}/{{stream}}/{{session}}": {
            "parameters": [STREAM, SESSION],
            "delete": _op(
                f"{prefix}_delete", "End the session", [tag], [scope],
                {"200": {"description": "Ended.", "headers": CORS_HEADERS},
                 "404": _problem("No such session on this stream.")},
            ),
            "patch": _op(
                f"{prefix}_patch", "Trickle ICE / ICE restart: not supported", [tag], [scope],
                {"405": _problem("Answers carry every candidate; there is nothing to patch.",
                                 headers=CORS_HEADERS)},
                requestBody={"required": False, "content": {
                    "application/trickle-ice-sdpfrag": {"schema": STR}}},
            ),
            "options": {**options, "operationId": f"{prefix}_session_options",
                        "parameters": [_path_param("stream", "stream name (not checked)"),
                                       SESSION]},
        },
    }


def _paths() -> dict[str, Schema]:
    io = "/api/v1/streams/{stream}"
    created = {"Location": {**_header("the new resource"), "required": True}}
    stream_404 = _problem("No such stream (or, on creation, an invalid name or "
                          "`streams.allow_dynamic = false`).")
    return {
        **_whip_whep("whip", "publisher", "publish", PUBLISH_OFFER),
        **_whip_whep("whep", "listener", "listen", LISTEN_OFFER),
        "/api/v1/streams": {"get": _op(
            "list_streams", "Every stream", ["streams"], ["read"],
            {"200": _json("The streams.", _obj(["streams"], {
                "streams": {"type": "array", "items": ref("Stream")}}))},
        )},
        "/api/v1/streams/{stream}": {"parameters": [STREAM], "get": _op(
            "get_stream", "One stream, with its sessions", ["streams"], ["listen"],
            {"200": _json("The stream.", ref("StreamDetail")), "404": _r("NotFound")},
        )},
        "/api/v1/streams/{stream}/levels": {"parameters": [STREAM], "get": _op(
            "stream_levels", "Live meters: the stream's analysis ten times a second",
            ["live"], ["listen"],
            {"200": {"description": "Server-Sent Events, never-ending: `event: levels` with "
                                    "`data:` an Analysis object plus `stream`; `event: ended` "
                                    "when the stream goes away.",
                     "content": {SSE: {"schema": STR}}},
             "404": _r("NotFound")},
            **{"x-never-ends": True},
        )},
        f"{io}/outputs": {"parameters": [STREAM], "post": _op(
            "create_output", "Add an output: RTP, SIP dial-out or recording", ["outputs"],
            ["admin"],
            {"201": _json("Created.", ref("Output"), created),
             "400": _r("FieldErrors"),
             "404": stream_404,
             "409": _problem("SIP is disabled."),
             "413": _r("PayloadTooLarge"),
             "500": _problem("Recording: the directory is not writable."),
             "503": _problem("SIP: the call cannot be placed (network)."),
             "507": _problem("Recording: the disk is full.")},
            requestBody={"required": True, "content": {JSON: {
                "schema": ref("OutputRequest"),
                "examples": {
                    "rtp": {"value": {"type": "rtp", "host": "127.0.0.1", "port": 5004,
                                      "codec": "PCMU"}},
                    "sip": {"value": {"type": "sip", "uri": "sip:alice@pbx.example.org",
                                      "timeout_s": 30}},
                    "recording": {"value": {"type": "recording", "format": "wav",
                                            "sample_rate": 16000}},
                }}}},
        ), "get": _op(
            "list_outputs", "The stream's outputs, with live counters", ["outputs"], ["listen"],
            {"200": _json("RTP outputs, SIP calls (both directions), recordings.",
                          _obj(["outputs"], {"outputs": {"type": "array",
                                                         "items": ref("Output")}})),
             "404": _r("NotFound")},
        )},
        f"{io}/outputs/{{output}}": {"parameters": [STREAM, OUTPUT], "get": _op(
            "get_output", "One output", ["outputs"], ["listen"],
            {"200": _json("The output.", ref("Output")), "404": _r("NotFound")},
        ), "delete": _op(
            "delete_output", "Stop an RTP output, hang up a call, or finalize a recording",
            ["outputs"], ["admin"], {"204": NO_CONTENT, "404": _r("NotFound")},
        )},
        f"{io}/outputs/{{output}}/sdp": {"parameters": [STREAM, OUTPUT], "get": _op(
            "output_sdp", "An RTP output's SDP, for ffmpeg, VLC, GStreamer", ["outputs"],
            ["listen"],
            {"200": {"description": "The SDP.", "content": {SDP: {"schema": STR}}},
             "404": _problem("No such output, or one that has no SDP file (SIP call, "
                             "recording).")},
        )},
        f"{io}/inputs": {"parameters": [STREAM], "post": _op(
            "create_input", "Add an RTP input: the stream's sender", ["inputs"], ["admin"],
            {"201": _json("Created.", ref("RtpInput"), created),
             "400": _r("FieldErrors"),
             "404": stream_404,
             "409": _problem("The port is in use, or the stream has a live sender."),
             "413": _r("PayloadTooLarge")},
            description="JSON, or the sender's SDP (`application/sdp`): port from "
                        "`m=audio`, codecs from `a=rtpmap`. Any other content type is a 400 "
                        "on field `body`.",
            requestBody={"required": True, "content": {
                JSON: {"schema": ref("RtpInputRequest"), "examples": {"pcmu": {
                    "value": {"type": "rtp", "port": 5006, "codec": "PCMU"}}}},
                SDP: {"schema": STR, "examples": {"sdp": {"value": RTP_SDP}}},
            }},
        ), "get": _op(
            "list_inputs", "The stream's inputs, with counters", ["inputs"], ["listen"],
            {"200": _json("The inputs.", _obj(["inputs"], {
                "inputs": {"type": "array", "items": ref("RtpInput")}})),
             "404": _r("NotFound")},
        )},
        f"{io}/inputs/{{input}}": {"parameters": [STREAM, INPUT], "get": _op(
            "get_input", "One input", ["inputs"], ["listen"],
            {"200": _json("The input.", ref("RtpInput")), "404": _r("NotFound")},
        ), "delete": _op(
            "delete_input", "Stop an input", ["inputs"], ["admin"],
            {"204": NO_CONTENT, "404": _r("NotFound")},
        )},
        "/api/v1/sessions": {"get": _op(
            "list_sessions", "Every WebRTC session", ["sessions"], ["read"],
            {"200": _json("The sessions.", _obj(["sessions"], {
                "sessions": {"type": "array", "items": ref("Session")}}))},
        )},
        "/api/v1/sessions/{session}": {"parameters": [SESSION], "delete": _op(
            "delete_session", "End a publisher or listener", ["sessions"], ["admin"],
            {"204": NO_CONTENT, "404": _r("NotFound")},
        )},
        "/api/v1/recordings": {"get": _op(
            "list_recordings", "Recording files, and the recordings in progress",
            ["recordings"], ["admin"],
            {"200": _json("The recordings.", _obj(["recordings", "active"], {
                "recordings": {"type": "array", "items": ref("RecordingFile")},
                "active": {"type": "array", "items": ref("Recorder")}}))},
        )},
        "/api/v1/recordings/{id}": {"parameters": [RECORDING], "get": _op(
            "get_recording", "Download a recording (Range requests supported)",
            ["recordings"], ["admin"],
            {"200": {"description": "The file.",
                     "headers": {"Content-Disposition": _header("attachment; filename")},
                     "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                 for t in ("audio/wav", "audio/ogg",
                                           "application/octet-stream")}},
             "206": {"description": "The requested range (`Content-Range`)."},
             "404": _r("NotFound"),
             "416": {"description": "Range not satisfiable: no body, `Content-Range: "
                                    "bytes */size` (aiohttp's file response; not a problem "
                                    "document)."}},
        ), "delete": _op(
            "delete_recording", "Delete a finished recording", ["recordings"], ["admin"],
            {"204": NO_CONTENT, "404": _r("NotFound"),
             "409": _problem("It is still being recorded: stop its output first.")},
        )},
        "/api/v1/events": {"get": _op(
            "events", "Live gateway events: recent ones first, then as they happen",
            ["live"], ["read"],
            {"200": {"description": "Server-Sent Events, never-ending: `event:` the type "
                                    "(silence alarms, voice, recordings, plug-ins), `data:` "
                                    "a JSON object; `: keep-alive` comments every 15 s.",
                     "content": {SSE: {"schema": STR}}}},
            parameters=[{"name": "stream", "in": "query", "required": False,
                         "description": "only this stream's events", "schema": STR}],
            **{"x-never-ends": True},
        )},
        "/api/v1/stats": {"get": _op(
            "stats", "Gateway counters", ["status"], ["read"],
            {"200": _json("Counters.", ref("Stats"))},
        )},
        "/api/v1/sip": {"get": _op(
            "sip_status", "SIP service status", ["status"], ["admin"],
            {"200": _json("Status.", ref("SipStatus"))},
        )},
        "/healthz": {"get": _op(
            "healthz", "Liveness", ["status"], [], {"200": _json("Alive.", ref("Health"))},
        )},
        "/readyz": {"get": _op(
            "readyz", "Readiness: started, media clock running, SIP listening if enabled",
            ["status"], [],
            {"200": _json("Ready.", ref("Readiness")),
             "503": _json("Not ready (a status document, not a problem: probes read "
                          "`checks`).", ref("Readiness"))},
        )},
        "/metrics": {"get": _op(
            "metrics", "Prometheus metrics (docs/monitoring.md)", ["status"], ["admin"],
            {"200": {"description": "Prometheus text exposition format.",
                     "content": {"text/plain": {"schema": STR}}}},
        )},
        PATH: {"get": _op(
            "openapi", "This document", ["status"], [],
            {"200": _json("OpenAPI 3.1.", {"type": "object"})},
        )},
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    paths = _paths()
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "audio-gateway",
            "version": _version(),
            "summary": "Real-time audio gateway: WebRTC (WHIP/WHEP), RTP and SIP in, "
                       "every listener out.",
            "description": (
                "Every error is an RFC 9457 problem document (`application/problem+json`); "
                "a 400 on a JSON request names the fields at fault in `errors`.\n\n"
                "Every GET also answers HEAD.\n\n"
                "Access control is on when `[auth]` configures keys or a JWT secret (without, "
                "the gateway listens on loopback only). A token's scopes are `admin` "
                "(everything), `publish:<stream pattern>`, `listen:<stream pattern>`. "
                "`x-scopes` on each operation names what it needs: `publish` or `listen` (on "
                "the stream in its path), `read` (any valid token), `admin`; none: public. "
                "`/metrics` is public with `auth.public_metrics`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "WHIP", "description": "Publish over WebRTC (RFC 9725)"},
            {"name": "WHEP", "description": "Listen over WebRTC"},
            {"name": "streams"}, {"name": "outputs"}, {"name": "inputs"},
            {"name": "sessions"}, {"name": "recordings"},
            {"name": "live", "description": "Server-Sent Events"}, {"name": "status"},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http", "scheme": "bearer",
                    "description": "An API key or a signed token (JWT, `scope` claim); "
                                   "`x-scopes` tells which scope each operation needs.",
                },
                "queryToken": {
                    "type": "apiKey", "in": "query", "name": "token",
                    "description": "The same token as `?token=`, for the event feeds and "
                                   "recording downloads (EventSource, <audio>).",
                },
            },
        },
        # What the app serves besides the API: HTML pages and static files.
        "x-undocumented-routes": {
            "pages": ["/", "/publish", "/listen", "/dashboard"],
            "static": ["/static"],
        },
    })


async def serve(request: web.Request) -> web.StreamResponse:
    return web.json_response(text=request.app[DOCUMENT])


#: The document as JSON text: it never changes while the app runs, so it is encoded once.
DOCUMENT: web.AppKey[str] = web.AppKey("openapi_document", str)


def add_routes(app: web.Application) -> None:
    app[DOCUMENT] = json.dumps(document())
    app.router.add_get(PATH, serve)
