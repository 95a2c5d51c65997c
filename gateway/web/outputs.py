"""Outputs and inputs of a stream: /api/v1/streams/{stream}/outputs and .../inputs."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..codecs.spec import L16, CodecSpec, check_ptime, codec_by_name
from ..core.registry import UnknownStream
from ..core.stream import StreamBusy
from ..egress.rtp import OutputError
from ..ingress.rtp import InputError, open_rtp_input
from ..recording.store import RecordingError
from ..sdp import SdpError, parse_audio
from ..sip.dial_out import DialError
from .keys import gateway_of
from .problem import problem
from .recordings import storage_problem


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise FieldError("body", "send JSON with Content-Type: application/json")
    try:
        body = json.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError, LookupError) as exc:  # Lookup: charset
        raise FieldError("body", f"not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, default: Any = ..., choices=None) -> Any:
    if name not in body:
        if default is ...:
            raise FieldError(name, "is required")
        return default
    value = body[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise FieldError(name, f"must be {'an integer' if kind is int else 'a ' + kind.__name__}")
    if choices is not None and value not in choices:
        raise FieldError(name, f"must be one of {', '.join(map(str, choices))}")
    return value


def bad_fields(exc: FieldError) -> web.Response:
    return problem(
        400, "Bad Request", str(exc), errors=[{"field": exc.field, "message": exc.message}]
    )


def _codec(body: dict[str, Any]) -> CodecSpec:
    name, rate = field(body, "codec", str, "PCMU"), field(body, "rate", int, None)
    try:
        spec = codec_by_name(name, rate)
    except ValueError as exc:
        raise FieldError("codec", str(exc)) from None
    if rate is not None and spec.name == "L16" and spec.clock_rate != rate:  # rate 0
        raise FieldError("rate", f"L16 rate must be one of {sorted(L16)}, got {rate}")
    return spec


def _no_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = set(body) - known
    if unknown:
        raise FieldError(sorted(unknown)[0], "unknown field")


def parse_output(body: dict[str, Any], default_bitrate: int) -> dict[str, Any]:
    """Validate an output request (API or config file) into RtpOutputs.create() arguments."""
    field(body, "type", str, choices=("rtp", "sip", "recording"))
    spec = _codec(body)
    try:
        ptime = check_ptime(spec, field(body, "ptime", int, 20))
    except ValueError as exc:
        raise FieldError("ptime", str(exc)) from None
    ttl = field(body, "ttl", int, 16)
    if not 1 <= ttl <= 255:
        raise FieldError("ttl", "must be 1-255")
    bitrate = field(body, "bitrate", int, default_bitrate)
    if not 6000 <= bitrate <= 510000:  # else libopus refuses, or PyAV overflows (a 500)
        raise FieldError("bitrate", "must be 6000-510000")
    known = {"type", "stream", "host", "port", "codec", "rate", "ptime", "ttl", "bitrate"}
    _no_unknown(body, known)
    host = field(body, "host", str)
    port = field(body, "port", int)
    if not 1 <= port <= 65534:  # RTCP goes to port + 1
        raise FieldError("port", "must be 1-65534 (RTCP goes to port + 1)")
    return {
        "spec": spec,
        "host": host,
        "port": port,
        "ptime": ptime,
        "ttl": ttl,
        "bitrate": bitrate,
    }


def parse_input(body: dict[str, Any]) -> dict[str, Any]:
    """Validate an RTP input request into open_rtp_input() arguments."""
    field(body, "type", str, "rtp", choices=("rtp",))
    spec = _codec(body)
    payload_type = field(body, "payload_type", int, spec.payload_type)
    if not 0 <= payload_type <= 127:
        raise FieldError("payload_type", "must be 0-127")
    _no_unknown(body, {"type", "stream", "port", "codec", "rate", "payload_type"})
    return {"port": field(body, "port", int), "codecs": {payload_type: spec}}


def parse_input_sdp(sdp: str) -> dict[str, Any]:
    """An input described by the SDP of the sender: port from m=audio, codecs from rtpmap."""
    try:
        desc = parse_audio(sdp)
    except SdpError as exc:
        raise FieldError("sdp", str(exc)) from None
    return {"port": desc.port, "codecs": desc.codecs}


def parse_sip_output(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a dial-out request: {"type": "sip", "uri": "sip:alice@pbx", "timeout_s": 30}."""
    _no_unknown(body, {"type", "stream", "uri", "timeout_s"})
    uri = field(body, "uri", str)
    if not uri.strip():
        raise FieldError("uri", "must not be empty")
    timeout = field(body, "timeout_s", float, None)
    if timeout is not None and not 1 <= timeout <= 600:
        raise FieldError("timeout_s", "must be 1-600")
    return {"uri": uri, "timeout_s": timeout}


async def create_sip_output(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    args = parse_sip_output(body)  # a FieldError is answered by create_output
    if gw.sip is None:
        return problem(409, "Conflict", "SIP is disabled (sip.enabled = false)")
    stream = stream_for_io(gw, name)
    try:
        call = await gw.sip.dial(stream, args["uri"], args["timeout_s"])
    except DialError as exc:
        field_name, _, message = str(exc).partition(": ")
        return bad_fields(FieldError(field_name if message else "uri", message or str(exc)))
    except OSError as exc:
        return problem(503, "Service Unavailable", f"cannot place the call: {exc.strerror}")
    resp = web.json_response(call.info(), status=201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/outputs/{call.id}"
    return resp


def parse_recording_output(body: dict[str, Any]) -> dict[str, Any]:
    """{"type": "recording", "format": "wav" | "opus", "sample_rate": 16000}"""
    _no_unknown(body, {"type", "stream", "format", "sample_rate"})
    fmt = field(body, "format", str, None, choices=("wav", "opus"))
    rate = field(body, "sample_rate", int, None, choices=(8000, 16000, 24000, 48000))
    if rate is not None and fmt == "opus":
        raise FieldError("sample_rate", "applies to WAV only (Opus is 48 kHz)")
    return {"fmt": fmt, "sample_rate": rate}


async def create_recording_output(request: web.Request,
                                  body: dict[str, Any]) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    args = parse_recording_output(body)  # a FieldError is answered by create_output
    stream = stream_for_io(gw, name)
    try:
        recorder = await gw.recordings.record(stream, **args)
    except (OSError, RecordingError) as exc:
        return storage_problem(exc)
    resp = web.json_response(recorder.info(), status=201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/outputs/{recorder.id}"
    return resp


async def create_output(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    try:
        body = await json_body(request)
        if body.get("type") == "sip":
            return await create_sip_output(request, body)
        if body.get("type") == "recording":
            return await create_recording_output(request, body)
        args = parse_output(body, gw.config.webrtc.opus_bitrate)
    except FieldError as exc:
        return bad_fields(exc)
    stream = stream_for_io(gw, name)
    try:
        output = await gw.rtp_outputs.create(stream, **args)
    except OutputError as exc:
        errors = [{"field": "port" if str(exc).startswith("port") else "host",
                   "message": str(exc)}]
        return problem(400, "Bad Request", str(exc), errors=errors)
    resp = web.json_response(output.info(), status=201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/outputs/{output.id}"
    return resp


def stream_for_io(gw, name: str):  # type: ignore[no-untyped-def]
    """The stream an output or input attaches to (created if dynamic), or a 404 problem."""
    try:
        return gw.registry.get_or_create(name)
    except (UnknownStream, ValueError) as exc:
        raise web.HTTPNotFound(text=f"no stream named {name!r}: {exc}") from None


def _find(request: web.Request, kind: str):  # type: ignore[no-untyped-def]
    """The stream's output (RTP or SIP call) or input named in the URL, or a 404 problem."""
    gw = gateway_of(request)
    key = request.match_info[kind]
    if kind == "input":
        item = gw.rtp_inputs.get(key)
    else:
        item = (gw.rtp_outputs.outputs.get(key) or gw.recordings.find(key)
                or (gw.sip.find_call(key) if gw.sip else None))
    if item is None or item.stream.name != request.match_info["stream"]:
        raise web.HTTPNotFound(text=f"no such {kind}")
    return item


async def list_outputs(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    if name not in gw.registry.streams:
        return problem(404, "Not Found", f"no stream named {name!r}")
    outputs = [o.info() for o in gw.rtp_outputs.outputs.values() if o.stream.name == name]
    if gw.sip is not None:
        outputs += [call.info() for call in gw.sip.calls_on(name)]
    outputs += [r.info() for r in gw.recordings.active.values() if r.stream.name == name]
    return web.json_response({"outputs": outputs})


async def get_output(request: web.Request) -> web.StreamResponse:
    return web.json_response(_find(request, "output").info())


async def output_sdp(request: web.Request) -> web.StreamResponse:
    output = _find(request, "output")
    if not hasattr(output, "sdp"):
        return problem(404, "Not Found", "a SIP call has no SDP file; its SDP is negotiated")
    return web.Response(text=output.sdp(), content_type="application/sdp")


async def delete_output(request: web.Request) -> web.StreamResponse:
    """Stop an RTP output, finalize a recording, or hang up a call (BYE; CANCEL while it
    is still ringing)."""
    await _find(request, "output").close("stopped through the API")
    return web.Response(status=204)


async def create_input(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    try:
        if request.content_type == "application/sdp":
            try:
                sdp = await request.text()
            except (UnicodeDecodeError, LookupError) as exc:  # bad bytes, unknown charset
                raise FieldError("sdp", f"not valid text: {exc}") from None
            args = parse_input_sdp(sdp)
        else:
            args = parse_input(await json_body(request))
    except FieldError as exc:
        return bad_fields(exc)
    stream = stream_for_io(gw, name)
    if stream.source is not None and not gw.sender_is_stale(stream.source):
        return problem(409, "Conflict", f"stream {name!r} already has a live sender")
    if stream.source is not None:
        await stream.source.close("replaced by an RTP input")
    try:
        rtp_input = await open_rtp_input(stream, gw.config.rtp.bind_host, max_depth=5, **args)
    except InputError as exc:
        if exc.conflict:
            return problem(409, "Conflict", str(exc))
        errors = [{"field": "port", "message": str(exc)}]
        return problem(400, "Bad Request", str(exc), errors=errors)
    except StreamBusy as exc:
        return problem(409, "Conflict", str(exc))
    gw.rtp_inputs[rtp_input.id] = rtp_input
    resp = web.json_response(rtp_input.info(), status=201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/inputs/{rtp_input.id}"
    return resp


async def list_inputs(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    if name not in gw.registry.streams:
        return problem(404, "Not Found", f"no stream named {name!r}")
    inputs = [i.info() for i in gw.rtp_inputs.values() if i.stream.name == name]
    return web.json_response({"inputs": inputs})


async def get_input(request: web.Request) -> web.StreamResponse:
    return web.json_response(_find(request, "input").info())


async def delete_input(request: web.Request) -> web.StreamResponse:
    rtp_input = _find(request, "input")
    gateway_of(request).rtp_inputs.pop(rtp_input.id, None)
    await rtp_input.close("deleted through the API")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    inputs = "/api/v1/streams/{stream}/inputs"
    app.router.add_post(inputs, create_input)
    app.router.add_get(inputs, list_inputs)
    app.router.add_get(inputs + "/{input}", get_input)
    app.router.add_delete(inputs + "/{input}", delete_input)
    base = "/api/v1/streams/{stream}/outputs"
    app.router.add_post(base, create_output)
    app.router.add_get(base, list_outputs)
    app.router.add_get(base + "/{output}", get_output)
    app.router.add_get(base + "/{output}/sdp", output_sdp)
    app.router.add_delete(base + "/{output}", delete_output)
