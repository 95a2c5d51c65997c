"""Shell commands that talk to a running gateway's HTTP API (`gateway streams`, `outputs`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .codecs.spec import L16

DEFAULT_URL = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    streams = sub.add_parser("streams", help="list live streams of a running gateway")
    streams.add_argument("--url", default=DEFAULT_URL, help="gateway URL (env GATEWAY_URL)")
    outputs = sub.add_parser("outputs", help="list, add or remove a stream's RTP outputs")
    outputs.add_argument("--url", default=DEFAULT_URL, help="gateway URL (env GATEWAY_URL)")
    actions = outputs.add_subparsers(dest="action", required=True)
    # --url also after the action (`gateway outputs add lobby ... --url URL`)
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument("--url", default=argparse.SUPPRESS, help="gateway URL (env GATEWAY_URL)")
    ls = actions.add_parser("ls", help="list a stream's outputs", parents=[url])
    ls.add_argument("stream")
    add = actions.add_parser("add", help="send a stream to an RTP destination", parents=[url])
    add.add_argument("stream")
    add.add_argument("--host", required=True, help="destination address (unicast or multicast)")
    add.add_argument("--port", type=int, required=True, help="destination UDP port")
    add.add_argument("--codec", default="PCMU", help="PCMU, PCMA, G722, opus or L16")
    add.add_argument("--rate", type=int, help=f"L16 sample rate: one of {sorted(L16)}")
    add.add_argument("--ptime", type=int, default=20, help="packet time in ms (default 20)")
    add.add_argument("--ttl", type=int, help="multicast TTL (default 16)")
    add.add_argument("--bitrate", type=int, help="opus bit rate, b/s")
    rm = actions.add_parser("rm", help="stop an output", parents=[url])
    rm.add_argument("stream")
    rm.add_argument("id")
    sdp = actions.add_parser("sdp", help="print the SDP file for an output", parents=[url])
    sdp.add_argument("stream")
    sdp.add_argument("id")


def _call(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read().decode(), exc.code
    except urllib.error.URLError as exc:
        raise SystemExit(f"error: cannot reach the gateway at {url}: {exc.reason}") from None
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw


def run(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/") + "/api/v1/streams"
    if args.command == "streams":
        status, body = _call(base)
        if status >= 400:
            return _failed(status, body)
        for s in body["streams"]:
            sender = s["sender"]["kind"] if s["sender"] else "-"
            print(f"{s['name']:<24} sender={sender:<8} listeners={s['listeners']}")
        return 0
    path = f"{base}/{_quoted(args.stream)}/outputs"
    if args.action == "ls":
        status, body = _call(path)
    elif args.action == "add":
        req = {"type": "rtp", "host": args.host, "port": args.port, "codec": args.codec,
               "ptime": args.ptime}
        if args.rate:
            req["rate"] = args.rate
        if args.ttl:
            req["ttl"] = args.ttl
        if args.bitrate:
            req["bitrate"] = args.bitrate
        status, body = _call(path, "POST", req)
    elif args.action == "rm":
        status, body = _call(f"{path}/{_quoted(args.id)}", "DELETE")
    else:
        status, body = _call(f"{path}/{_quoted(args.id)}/sdp")
        if status == 200:
            sys.stdout.write(body)
            return 0
    if status >= 400:
        return _failed(status, body)
    if body is not None:
        print(json.dumps(body, indent=2))
    return 0


def _quoted(segment: str) -> str:
    """One path segment as typed: a name with spaces or slashes gets the API's 4xx."""
    return urllib.parse.quote(segment, safe="")


def _failed(status: int, body: Any) -> int:
    detail = body.get("detail", body) if isinstance(body, dict) else body
    print(f"error: {status} {detail}", file=sys.stderr)
    return 1
