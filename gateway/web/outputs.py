"""Outputs and inputs of a stream: /api/v1/streams/{stream}/outputs and .../inputs."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..cluster.node import NodeUnreachable
from ..core.outputs import Output
from ..core.registry import UnknownStream
from ..core.stream import Stream, StreamBusy
from ..egress.rtp import OutputError
from ..gateway import Gateway
from ..ingress.rtp import InputError
from ..io_requests import (
    FieldError,
    RecordingOutputRequest,
    SipOutputRequest,
    parse_input,
    parse_input_sdp,
    parse_output,
)
from ..models.info import InputList, OutputList, SipCallInfo
from ..recording.errors import RecordingError
from ..sip.dial_out import DialError, NotRegisteredHere
from .keys import gateway_of
from .problem import overloaded, problem
from .recordings import storage_problem
from .reply import reply


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object: every JSON body is read here, so that any bad one is a 400."""
    if request.content_type != "application/json":
        raise FieldError("body", "send JSON with Content-Type: application/json")
    try:
        body = json.loads(await request.text(), parse_constant=_not_json)
    except RecursionError:
        raise FieldError("body", "not valid JSON: nested too deeply") from None
    except (ValueError, LookupError) as exc:  # bad JSON or bytes (ValueErrors); Lookup: charset
        raise FieldError("body", f"not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    return body


def _not_json(name: str) -> None:
    """Python's reader takes NaN and Infinity; JSON (RFC 8259) has neither."""
    raise ValueError(f"{name} is not a JSON number")


def bad_fields(exc: FieldError) -> web.Response:
    return problem(400, "Bad Request", "; ".join(f"{f}: {m}" for f, m in exc.errors),
                   errors=exc.errors)


async def create_sip_output(request: web.Request, req: SipOutputRequest) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    if gw.sip is None:
        return problem(409, "Conflict", "SIP is disabled (sip.enabled = false)")
    refusal = gw.admission.admit("dial_out")
    if refusal is not None:
        return overloaded(refusal)
    stream = stream_for_io(gw, name)
    try:
        info = (await gw.sip.dial(stream, req.uri, req.timeout_s)).info()
    except NotRegisteredHere as exc:
        elsewhere = None
        if gw.cluster is not None:  # the phone may have registered at another node
            elsewhere = await gw.dial_registered_elsewhere(name, exc.user, req.timeout_s)
        if elsewhere is None:
            where = "at any node" if gw.cluster is not None else "here"
            return bad_fields(FieldError(exc.field, f"user {exc.user!r} is not registered "
                                                    f"{where}"))
        info = SipCallInfo.model_validate(elsewhere)
    except DialError as exc:
        return bad_fields(FieldError(exc.field, exc.message))
    except OSError as exc:
        return problem(503, "Service Unavailable", f"cannot place the call: {exc.strerror}")
    resp = reply(info, 201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/outputs/{info.id}"
    return resp


async def create_recording_output(request: web.Request,
                                  req: RecordingOutputRequest) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    refusal = gw.admission.admit("recording")
    if refusal is not None:
        return overloaded(refusal)
    stream = stream_for_io(gw, name)
    try:
        recorder = await gw.recordings.record(stream, req.format, req.sample_rate)
    except (OSError, RecordingError) as exc:
        return storage_problem(exc)
    resp = reply(recorder.info(), 201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/outputs/{recorder.id}"
    return resp


async def create_output(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    try:
        req = parse_output(await json_body(request))
    except FieldError as exc:
        return bad_fields(exc)
    if isinstance(req, SipOutputRequest):
        return await create_sip_output(request, req)
    if isinstance(req, RecordingOutputRequest):
        return await create_recording_output(request, req)
    refusal = gw.admission.admit("rtp_output")
    if refusal is not None:
        return overloaded(refusal)
    stream = stream_for_io(gw, name)
    try:
        output = await gw.rtp_outputs.create(stream, **req.arguments(gw.config.webrtc.opus_bitrate))
    except OutputError as exc:
        field = "port" if str(exc).startswith("port") else "host"
        return bad_fields(FieldError(field, str(exc)))
    resp = reply(output.info(), 201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/outputs/{output.id}"
    return resp


def stream_for_io(gw: Gateway, name: str) -> Stream:
    """The stream an output or input attaches to (created if dynamic), or a 404 problem."""
    try:
        return gw.registry.get_or_create(name)
    except (UnknownStream, ValueError) as exc:
        raise web.HTTPNotFound(text=f"no stream named {name!r}: {exc}") from None


def _listed(output: Output | None) -> bool:
    """The API lists every output of a stream but its WebRTC listeners (they are sessions)."""
    return output is not None and output.kind != "webrtc"


def _find(request: web.Request, kind: str):  # type: ignore[no-untyped-def]
    """The stream's output (RTP, recording, SIP call, or a call that ended recently) or
    input named in the URL, or a 404 problem."""
    gw = gateway_of(request)
    key = request.match_info[kind]
    name = request.match_info["stream"]
    item: Any = None
    if kind == "input":
        item = gw.rtp_inputs.get(key)
    else:
        stream = gw.registry.streams.get(name)
        output = stream.outputs.get(key) if stream is not None else None
        if _listed(output):
            item = output
        elif gw.sip is not None:
            item = gw.sip.find_call(key)
    if item is None or item.stream.name != name:
        raise web.HTTPNotFound(text=f"no such {kind}")
    return item


async def list_outputs(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    stream = gw.registry.streams.get(name)
    if stream is None:
        return problem(404, "Not Found", f"no stream named {name!r}")
    return reply(OutputList(outputs=[o.info() for o in stream.outputs if _listed(o)]))


async def _on_its_node(request: web.Request, kind: str,
                       action: str = "get") -> web.StreamResponse | None:
    """An output or input id naming another node of the cluster (".<node>"): that node
    answers (``action``: get, delete or sdp); None when the item would be here."""
    gw = gateway_of(request)
    item_id = request.match_info[kind]
    node = gw.node_of(item_id)
    if gw.cluster is None or node == gw.node_name:
        return None
    try:
        answer = await gw.cluster.request(node, kind, stream=request.match_info["stream"],
                                         id=item_id, action=action)
    except NodeUnreachable as exc:
        return problem(502, "Bad Gateway", f"the {kind}'s node did not answer: {exc}")
    status = int(answer.get("status", 500))
    if status == 204:
        return web.Response(status=204)
    if status == 200 and "sdp" in answer:
        return web.Response(text=answer["sdp"], content_type="application/sdp")
    if status == 200:
        return web.json_response(answer["info"])
    return problem(status, answer.get("title", "Error"), answer.get("detail", ""))


async def get_output(request: web.Request) -> web.StreamResponse:
    elsewhere = await _on_its_node(request, "output")
    if elsewhere is not None:
        return elsewhere
    return reply(_find(request, "output").info())


async def output_sdp(request: web.Request) -> web.StreamResponse:
    elsewhere = await _on_its_node(request, "output", "sdp")
    if elsewhere is not None:
        return elsewhere
    output = _find(request, "output")
    if not hasattr(output, "sdp"):
        return problem(404, "Not Found", "a SIP call has no SDP file; its SDP is negotiated")
    return web.Response(text=output.sdp(), content_type="application/sdp")


async def delete_output(request: web.Request) -> web.StreamResponse:
    """Stop an RTP output, finalize a recording, or hang up a call (BYE; CANCEL while it
    is still ringing), here or on the node that holds it."""
    elsewhere = await _on_its_node(request, "output", "delete")
    if elsewhere is not None:
        return elsewhere
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
    try:
        rtp_input = await gw.open_rtp_input(stream, **args)
    except InputError as exc:
        if exc.conflict:
            return problem(409, "Conflict", str(exc))
        return bad_fields(FieldError("port", str(exc)))
    except StreamBusy as exc:
        return problem(409, "Conflict", str(exc))
    resp = reply(rtp_input.info(), 201)
    resp.headers["Location"] = f"/api/v1/streams/{name}/inputs/{rtp_input.id}"
    return resp


async def list_inputs(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    if name not in gw.registry.streams:
        return problem(404, "Not Found", f"no stream named {name!r}")
    inputs = [i.info() for i in gw.rtp_inputs.values() if i.stream.name == name]
    return reply(InputList(inputs=inputs))


async def get_input(request: web.Request) -> web.StreamResponse:
    elsewhere = await _on_its_node(request, "input")
    if elsewhere is not None:
        return elsewhere
    return reply(_find(request, "input").info())


async def delete_input(request: web.Request) -> web.StreamResponse:
    elsewhere = await _on_its_node(request, "input", "delete")
    if elsewhere is not None:
        return elsewhere
    await gateway_of(request).close_rtp_input(_find(request, "input"), "deleted through the API")
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
