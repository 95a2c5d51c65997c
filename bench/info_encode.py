"""What answering the API costs in encoding: one stream's info, and GET /api/v1/streams and
GET .../outputs with N streams (each with an RTP input as its sender, an RTP output and
so a shared encoder, and the analysers), timed on the handlers themselves.

    python bench/info_encode.py [--streams 100] [--repeat 5]

Media time does not move (a stepped clock), so only the encoding is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
import timeit

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.codecs.spec import PCMU
from gateway.config import load
from gateway.core.clock import SteppedClock
from gateway.gateway import Gateway
from gateway.web import api, outputs
from gateway.web.keys import GATEWAY


def _as_json(stream) -> bytes:  # type: ignore[no-untyped-def]
    """What a handler sends: a model encoded by pydantic, or a dict by json.dumps."""
    info = stream.info()
    if isinstance(info, dict):
        return json.dumps(info).encode()
    return info.__pydantic_serializer__.to_json(info)


async def measure(streams: int, repeat: int) -> dict[str, float]:
    config = load(None, {"sip": {"enabled": False},
                         "recording": {"directory": tempfile.mkdtemp()}})
    gw = Gateway(config, SteppedClock())
    await gw.start()
    try:
        for i in range(streams):
            stream = gw.registry.get_or_create(f"s{i}")
            await gw.open_rtp_input(stream, 0, {0: PCMU})
            await gw.rtp_outputs.create(stream, PCMU, "127.0.0.1", 9)
        app = web.Application()
        app[GATEWAY] = gw

        one = gw.registry.streams["s0"]
        out = {
            "stream info (us)":
                min(timeit.repeat(one.info, number=2000, repeat=repeat)) / 2000 * 1e6,
            "stream info + JSON (us)":
                min(timeit.repeat(lambda: _as_json(one), number=2000, repeat=repeat)) / 2000 * 1e6,
        }
        for label, fn, path, match, number in (
            (f"GET /api/v1/streams, {streams} streams (us)", api.list_streams,
             "/api/v1/streams", {}, 50),
            ("GET /api/v1/streams/s0/outputs (us)", outputs.list_outputs,
             "/api/v1/streams/s0/outputs", {"stream": "s0"}, 2000),
        ):
            request = make_mocked_request("GET", path, app=app, match_info=match)
            best = float("inf")
            for _ in range(repeat):
                started = time.perf_counter()
                for _ in range(number):
                    await fn(request)
                best = min(best, time.perf_counter() - started)
            out[label] = best / number * 1e6
        return out
    finally:
        await gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(measure(args.streams, args.repeat))
    print(f"python {platform.python_version()}; best of {args.repeat}")
    for label, us in results.items():
        print(f"  {label:48s} {us:9.1f}")
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
