"""The HTTP API contract: an OpenAPI 3.1 document, served at /api/v1/openapi.json.

Its schema components are generated from the models the handlers validate requests with
(``io_requests``) and answer with (``models.info``, ``web.problem``), so a limit or a
field is declared once; only the paths and operations are written here.
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
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from ..core.registry import STREAM_NAME
from ..io_requests import OutputRequest, RtpInputRequest
from ..models import info
from ..recording.store import ID_PATTERN, MAX_ID_CHARS
from .problem import Problem, ValidationProblem

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
    return {"$ref": REF.format(model=name)}


STR = {"type": "string"}

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


REF = "#/components/schemas/{model}"
#: The schema components: every one is generated from the model (or union of models) that
#: the handlers validate requests with or answer with; a component's name is the model's.
MODELS: dict[str, tuple[Any, JsonSchemaMode]] = {
    "OutputRequest": (OutputRequest, "validation"),
    "RtpInputRequest": (RtpInputRequest, "validation"),
    "Problem": (Problem, "serialization"),
    "ValidationProblem": (ValidationProblem, "serialization"),
    "StreamList": (info.StreamList, "serialization"),
    "StreamDetail": (info.StreamDetail, "serialization"),
    "SessionList": (info.SessionList, "serialization"),
    "Output": (info.Output, "serialization"),
    "OutputList": (info.OutputList, "serialization"),
    "RtpInputInfo": (info.RtpInputInfo, "serialization"),
    "InputList": (info.InputList, "serialization"),
    "RecordingList": (info.RecordingList, "serialization"),
    "Stats": (info.Stats, "serialization"),
    "SipStatus": (info.SipStatus, "serialization"),
    "Health": (info.Health, "serialization"),
    "Readiness": (info.Readiness, "serialization"),
}


class _Untitled(GenerateJsonSchema):
    """Property titles repeat the property names: left out."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _schemas() -> dict[str, Schema]:
    adapters = [(name, mode, TypeAdapter(kind)) for name, (kind, mode) in MODELS.items()]
    named, defs = TypeAdapter.json_schemas(adapters, ref_template=REF,
                                           schema_generator=_Untitled)
    out = dict(defs.get("$defs", {}))
    for (name, _mode), schema in named.items():
        if schema != ref(name):  # a union: named here, its members are components
            out[name] = schema
    out["StreamName"] = {  # the path parameter
        "type": "string", "pattern": STREAM_NAME.pattern, "examples": ["lobby"],
        "description": "1-64 of `A-Z a-z 0-9 . _ ~ -`, starting with a letter or digit",
    }
    return dict(sorted(out.items()))


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
RECORDING = _path_param("id", "recording id (from GET /api/v1/recordings)",
                        {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS,
                         "pattern": f"^{ID_PATTERN}$"})


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
        responses = {**responses, "401": _r("Unauthorized"),
                     "403": responses.get("403", _r("Forbidden"))}
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
                 "403": _problem("The token lacks the scope, or did not create this "
                                 "session: only its creator (the same API key, or JWT "
                                 "`sub`) or an admin may end it."),
                 "404": _problem(f"No such {role} session on this stream.")},
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
            {"200": _json("The streams.", ref("StreamList"))},
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
                          ref("OutputList")),
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
            {"201": _json("Created.", ref("RtpInputInfo"), created),
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
            {"200": _json("The inputs.", ref("InputList")),
             "404": _r("NotFound")},
        )},
        f"{io}/inputs/{{input}}": {"parameters": [STREAM, INPUT], "get": _op(
            "get_input", "One input", ["inputs"], ["listen"],
            {"200": _json("The input.", ref("RtpInputInfo")), "404": _r("NotFound")},
        ), "delete": _op(
            "delete_input", "Stop an input", ["inputs"], ["admin"],
            {"204": NO_CONTENT, "404": _r("NotFound")},
        )},
        "/api/v1/sessions": {"get": _op(
            "list_sessions", "Every WebRTC session", ["sessions"], ["read"],
            {"200": _json("The sessions.", ref("SessionList"))},
        )},
        "/api/v1/sessions/{session}": {"parameters": [SESSION], "delete": _op(
            "delete_session", "End a publisher or listener", ["sessions"], ["admin"],
            {"204": NO_CONTENT, "404": _r("NotFound")},
        )},
        "/api/v1/recordings": {"get": _op(
            "list_recordings", "Recording files, and the recordings in progress",
            ["recordings"], ["admin"],
            {"200": _json("The recordings.", ref("RecordingList"))},
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
        "/api/v1/cluster": {"get": _op(
            "cluster", "This node and every live node of the cluster, with its load",
            ["status"], ["read"],
            {"200": _json("The cluster.", {"type": "object", "required": ["node", "nodes"],
                                           "properties": {"node": STR,
                                                          "nodes": {"type": "object"}}}),
             "404": _problem("Not part of a cluster.")},
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
