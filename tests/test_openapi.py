"""The API contract: /api/v1/openapi.json is valid OpenAPI 3.1, describes exactly the
routes the app serves, and a fuzzer driven by it gets no 5xx and only RFC 9457 errors."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from gateway.app import create_app
from gateway.config import load
from gateway.sip.message import Uri
from gateway.web.auth import required
from gateway.web.keys import MAX_BODY
from gateway.web.openapi import LISTEN_OFFER, PATH, PUBLISH_OFFER, RTP_SDP, document
from gateway.web.problem import error_middleware_factory

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
SCOPES = {"publish", "listen", "read", "admin"}


def _operations(doc: dict[str, Any]):  # type: ignore[no-untyped-def]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


# -- the document -------------------------------------------------------------------------
def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for method, path, op in _operations(doc):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and "content" in response:
                assert set(response["content"]) <= {"application/problem+json",
                                                    "application/json"}, (method, path)


def test_scopes_match_access_control(tmp_path) -> None:
    """x-scopes and security say what gateway/web/auth.py demands, operation by operation."""
    app = create_app(load(None, {"recording": {"directory": str(tmp_path)}}))
    for method, path, op in _operations(document()):
        params = {name: "lobby" for name in ("stream", "session", "output", "input", "id")}
        request = make_mocked_request(method, path.format(**params), app=app,
                                      match_info={k: v for k, v in params.items()
                                                  if "{" + k + "}" in path})
        need = required(request)
        expected = [] if need is None else [need[0]]
        assert op["x-scopes"] == expected, (method, path)
        assert set(op["x-scopes"]) <= SCOPES
        if expected:
            assert op["security"][0] == {"bearerAuth": [] if expected == ["read"] else expected}
            assert {"401", "403"} <= set(op["responses"]), (method, path)
        else:
            assert op["security"] == [], (method, path)


async def test_document_is_served(gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + PATH) as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            served = await r.json()
    assert served == json.loads(json.dumps(document()))
    assert served["info"]["version"] == document()["info"]["version"] != "0.0.0"


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path) -> None:
    """Walks the router: a new route without docs, or docs of a removed route, fail here."""
    app = create_app(load(None, {"recording": {"directory": str(tmp_path)}}))
    doc = document()
    skipped = {p for paths in doc["x-undocumented-routes"].values() for p in paths}
    served: set[tuple[str, str]] = set()
    served_skipped: set[str] = set()
    for route in app.router.routes():
        path = route.resource.canonical
        if path in skipped:
            served_skipped.add(path)
            continue
        served.add((route.method, path))
    gets = {path for method, path in served if method == "GET"}
    heads = {path for method, path in served if method == "HEAD"}
    assert heads <= gets, f"HEAD without GET: {heads - gets}"  # aiohttp adds HEAD to GETs
    served = {(m, p) for m, p in served if m != "HEAD"}
    documented = {(method, path) for method, path, _ in _operations(doc)}
    assert served - documented == set(), "served but not in the OpenAPI document"
    assert documented - served == set(), "in the OpenAPI document but not served"
    assert served_skipped == skipped, "x-undocumented-routes lists a route that is not served"


# -- the fuzzer ---------------------------------------------------------------------------
#: Examples per operation and generation mode (positive: valid by the schema; negative:
#: invalid), plus the document's own examples. Hypothesis is derandomized: same run each time.
EXAMPLES = 25
DERANDOMIZE = True  # False explores: same bounds, new examples each run
CHECKS = [getattr(schemathesis.checks, name) for name in (
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance",
    "negative_data_rejection",  # the handlers refuse what the schemas forbid
)]
#: The fuzzed gateway runs with access control on; the fuzzer holds an admin key.
ADMIN_KEY = "fuzz-admin-key-0123456789abcdef0123"
#: The document's example SDP bodies: they name no ICE candidate, so nothing is dialled.
SAFE_OFFERS = {PUBLISH_OFFER, LISTEN_OFFER, RTP_SDP}

schemathesis.serializer.alias(["application/sdp", "application/trickle-ice-sdpfrag"],
                              "text/plain")


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Report:
    requests: int = 0
    operations: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_operation: dict[str, Counter] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def fail(self, label: str, message: str, curl: str) -> None:
        key = (label, message.splitlines()[0] if message else "")
        self.failures.setdefault(key, f"{label}: {message}\n    {curl}")


def _header(response: schemathesis.Response, name: str) -> str:
    return (response.headers.get(name.lower()) or [""])[0]


def problem_errors(response: schemathesis.Response) -> list[str]:
    """Why a 4xx/5xx response is not an RFC 9457 problem document (empty: it is)."""
    if response.status_code < 400:
        return []
    if response.status_code == 416 and not response.content:
        return []  # aiohttp's Range refusal: headers only (documented)
    ctype = _header(response, "Content-Type").split(";")[0].strip()
    if ctype != "application/problem+json":
        return [f"{response.status_code} with Content-Type {ctype!r}, not problem+json"]
    try:
        body = response.json()
    except ValueError:
        return [f"{response.status_code}: problem body is not JSON"]
    out = []
    if not isinstance(body, dict):
        return [f"{response.status_code}: problem is not an object"]
    if not isinstance(body.get("type"), str) or not isinstance(body.get("title"), str):
        out.append(f"{response.status_code}: problem lacks type/title: {body}")
    if body.get("status") != response.status_code:
        out.append(f"{response.status_code}: problem status is {body.get('status')!r}")
    if "detail" in body and not isinstance(body["detail"], str):
        out.append(f"{response.status_code}: detail is not a string")
    errors = body.get("errors", [])
    if not isinstance(errors, list) or not all(
        isinstance(e, dict) and isinstance(e.get("field"), str)
        and isinstance(e.get("message"), str) for e in errors
    ):
        out.append(f"{response.status_code}: errors is not a list of {{field, message}}")
    return out


class _Authorized:
    """schema[path][method].Case(...) with the admin key, for follow-up requests."""

    def __init__(self, schema: Any, path: str = "", method: str = "") -> None:
        self.schema, self.path, self.method = schema, path, method

    def __getitem__(self, key: str) -> _Authorized:
        if not self.path:
            return _Authorized(self.schema, key)
        return _Authorized(self.schema, self.path, key)

    def Case(self, headers: dict[str, str] | None = None, **kwargs: Any):  # schemathesis name
        headers = {**(headers or {}), "Authorization": f"Bearer {ADMIN_KEY}"}
        return self.schema[self.path][self.method].Case(headers=headers, **kwargs)


class Fuzzer:
    """Drives every operation of the document against a live gateway (blocking: run it in
    a thread while the gateway serves on the event loop)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.schema = schemathesis.openapi.from_dict(document())
        self.http = requests.Session()
        self.report = Report()
        self.safe_uri = f"sip:fuzz@127.0.0.1:{_closed_udp_port()}"

    # Nothing may leave this machine: RTP outputs go to loopback, SIP calls to a closed
    # loopback port, and no SDP offer names an ICE candidate of its own.
    def make_safe(self, case: schemathesis.Case) -> None:
        if case.headers is not None and "Authorization" in case.headers:
            case.headers["Authorization"] = f"Bearer {ADMIN_KEY}"  # not a made-up token
        body = case.body
        if isinstance(body, dict) and case.operation.method.upper() == "POST":
            if isinstance(body.get("host"), str) and body["host"]:  # "" resolves nowhere
                body["host"] = "127.0.0.1"
            uri = body.get("uri")
            if isinstance(uri, str) and uri.strip():  # "" is refused: let the gateway say so
                try:
                    Uri.parse(uri if ":" in uri else f"sip:{uri}@127.0.0.1")
                except Exception:  # refused before any packet is sent (a crash: a 5xx shows)
                    pass
                else:
                    body["uri"] = self.safe_uri  # dialable: dial the closed port instead
        if isinstance(body, str) and "candidate" in body and body not in SAFE_OFFERS:
            case.body = body.replace("candidate", "candidat")

    def call(self, case: schemathesis.Case) -> schemathesis.Response | None:
        self.make_safe(case)
        label = case.operation.label
        try:
            response = case.call(base_url=self.base_url, session=self.http, timeout=20)
        except Exception as exc:  # a dropped connection is a finding too
            self.report.fail(label, f"request failed: {exc!r}", case.as_curl_command())
            return None
        self.report.requests += 1
        self.report.statuses[response.status_code] += 1
        self.report.by_operation.setdefault(label, Counter())[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as exc:  # one failure, or a group
            failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            for failure in failures:
                self.report.fail(label, str(failure).strip(), case.as_curl_command())
        for message in problem_errors(response):
            self.report.fail(label, message, case.as_curl_command())
        return response

    def follow(self, case: schemathesis.Case, response: schemathesis.Response | None) -> None:
        """After a 201, exercise what was made: read it, its stream, then delete it."""
        if response is None or response.status_code != 201:
            return
        location = _header(response, "Location")
        parts = location.strip("/").split("/")
        ops = _Authorized(self.schema)
        if location.startswith(("/whip/", "/whep/")) and len(parts) == 3:
            self.call(ops["/api/v1/streams/{stream}"]["GET"].Case(
                path_parameters={"stream": parts[1]}))
            self.call(ops["/api/v1/sessions"]["GET"].Case())
            self.call(ops[f"/{parts[0]}/{{stream}}/{{session}}"]["DELETE"].Case(
                path_parameters={"stream": parts[1], "session": parts[2]}))
        elif len(parts) == 6 and parts[:3] == ["api", "v1", "streams"]:
            stream, kind, item = parts[3], parts[4], parts[5]
            params = {"stream": stream, kind[:-1]: item}
            base = f"/api/v1/streams/{{stream}}/{kind}"
            item_path = f"{base}/{{{kind[:-1]}}}"
            self.call(ops["/api/v1/streams/{stream}"]["GET"].Case(
                path_parameters={"stream": stream}))
            self.call(ops[base]["GET"].Case(path_parameters={"stream": stream}))
            self.call(ops[item_path]["GET"].Case(path_parameters=params))
            if kind == "outputs":
                self.call(ops[item_path + "/sdp"]["GET"].Case(path_parameters=params))
            self.call(ops[item_path]["DELETE"].Case(path_parameters=params))
            if kind == "outputs" and response.json().get("type") == "recording":
                self.recordings()

    def recordings(self) -> None:
        ops = _Authorized(self.schema)
        listing = self.call(ops["/api/v1/recordings"]["GET"].Case())
        if listing is None or listing.status_code != 200:
            return
        for entry in listing.json()["recordings"][-1:]:
            params = {"id": entry["id"]}
            get = ops["/api/v1/recordings/{id}"]["GET"]
            self.call(get.Case(path_parameters=params))
            for byte_range in ("bytes=0-43", "bytes=99999999-"):
                self.call(get.Case(path_parameters=params, headers={"Range": byte_range}))
            self.call(ops["/api/v1/recordings/{id}"]["DELETE"].Case(path_parameters=params))

    def run(self) -> Report:
        run_settings = settings(
            max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        for result in self.schema.get_all_operations():
            operation = result.ok()
            if operation.definition.raw.get("x-never-ends"):
                self.report.skipped.append(operation.label)  # SSE: would never return
                continue
            self.report.operations += 1
            strategies = [
                *[(s, 1) for s in operation.get_strategies_from_examples()],
                (operation.as_strategy(GenerationMode.POSITIVE), EXAMPLES),
                (operation.as_strategy(GenerationMode.NEGATIVE), EXAMPLES),
            ]
            for strategy, count in strategies:

                @settings(run_settings, max_examples=count)
                @given(case=strategy)
                def drive(case: schemathesis.Case) -> None:
                    self.follow(case, self.call(case))

                try:
                    drive()
                except hypothesis.errors.Unsatisfiable:
                    pass
        return self.report


async def test_fuzzer_finds_no_server_error_and_only_problem_documents(gateway_factory):
    gw = await gateway_factory(sip={"port": 0, "dial_timeout_s": 2.0},
                               webrtc={"host_addresses": ["127.0.0.1"],
                                       "connect_timeout_s": 2.0},
                               auth={"keys": [{"name": "fuzz", "key": ADMIN_KEY,
                                               "scopes": ["admin"]}]})
    started = time.monotonic()
    report = await asyncio.to_thread(Fuzzer(gw.url).run)
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {report.operations} operations with {report.requests} requests in "
          f"{elapsed:.0f} s; statuses {dict(sorted(report.statuses.items()))}; "
          f"not fuzzed (SSE): {', '.join(report.skipped)}")
    assert report.failures == {}, "\n\n".join(report.failures.values())
    assert not any(code >= 500 for code in report.statuses)
    # It went deep enough: each kind of thing was made, read and deleted.
    made = {label: counts[201] for label, counts in report.by_operation.items()
            if label.startswith("POST")}
    assert all(made.values()), f"never created: {made}"
    assert gw.gateway.sip.stats["dial_outs"] > 0, "no SIP output was dialled"
    assert report.by_operation["GET /api/v1/recordings/{id}"][206] > 0, "no download"
    assert report.operations >= 30 and report.requests >= 1000


async def test_undocumented_method_is_a_405_problem_with_allow(gateway) -> None:
    async with aiohttp.ClientSession() as http:
        for _method, path, _ in _operations(document()):
            url = gateway.url + path.replace("{", "").replace("}", "")
            async with http.put(url, data=b"{}") as r:
                assert r.status == 405, path
                assert r.content_type == "application/problem+json", path
                assert (await r.json())["status"] == 405
                assert "Allow" in r.headers


@pytest.mark.parametrize("ctype", ["application/sdp", "application/sdp; charset=no-such",
                                   "application/json", "application/json; charset=no-such"])
@pytest.mark.parametrize("path", ["/whip/x", "/whep/x", "/api/v1/streams/x/inputs",
                                  "/api/v1/streams/x/outputs"])
async def test_bodies_that_do_not_decode_are_400_problems(gateway, path, ctype) -> None:
    """Bytes the fuzzer never sends (it speaks UTF-8): invalid text, unknown charsets."""
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + path, data=b"v=0\r\n\xff\xfe{",
                             headers={"Content-Type": ctype}) as r:
            assert r.status in (400, 415), await r.text()
            assert r.content_type == "application/problem+json"
            body = await r.json()
    assert body["status"] == r.status
    if path.startswith("/api/"):
        assert body["errors"][0]["field"] in ("body", "sdp")


async def test_head_answers_like_get(gateway) -> None:
    """aiohttp answers HEAD on every GET route; the document lists GET only."""
    async with aiohttp.ClientSession() as http:
        for method, path, op in _operations(document()):
            if method != "GET" or op.get("x-never-ends"):
                continue
            url = gateway.url + path.replace("{", "").replace("}", "")
            async with http.get(url) as get, http.head(url) as head:
                assert head.status == get.status < 500, path


async def test_unexpected_exception_is_a_500_problem() -> None:
    """A bug in a handler still answers in the one error shape (and is logged)."""

    async def broken(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[error_middleware_factory()])
    app[MAX_BODY] = 1024
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/broken") as r:
                assert r.status == 500
                assert r.content_type == "application/problem+json"
                body = await r.json()
        assert body["status"] == 500 and "boom" not in json.dumps(body)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/streams/{stream}/levels"])
async def test_event_streams_are_documented_as_sse(gateway, path) -> None:
    """The SSE feeds the fuzzer leaves alone: their documented type is what they send."""
    op = document()["paths"][path]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    url = gateway.url + path.replace("{stream}", "sse-check")
    if "{stream}" in path:
        async with aiohttp.ClientSession() as http:
            await http.post(gateway.url + "/api/v1/streams/sse-check/outputs",
                            json={"type": "recording"})
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            assert r.status == 200
            assert r.content_type == "text/event-stream"
        async with http.get(gateway.url + "/api/v1/streams/nosuch/levels") as r:
            assert r.status == 404
            assert r.content_type == "application/problem+json"
