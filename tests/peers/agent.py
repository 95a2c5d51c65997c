"""A client program on one "machine" (network namespace), driven by JSON lines on stdin.

    ip netns exec <ns> python tests/peers/agent.py

Each request line ``{"id": 1, "op": "listen", ...}`` gets one reply line with the same id
(``{"id": 1, "ok": true, ...}`` or ``{"id": 1, "ok": false, "error": "..."}``); requests run
concurrently. Ops:

* ``http`` (method, url, json?): ``status``, ``body`` (JSON when it is JSON, else text);
* ``wait_http`` (url, timeout): poll until the URL answers 200;
* ``publish`` (key, url, stream, freq): a WHIP publisher of a sine, connected;
* ``listen`` (key, url, stream): a WHEP listener, connected; it keeps every decoded frame
  with its RTP timestamp and its arrival time (``time.monotonic()``, the same clock in
  every process of the host);
* ``save`` (key, path): the listener's frames so far as .npz (audio, pts, arrivals);
* ``close`` (key): end a publisher or listener (DELETE, then close the peer connection);
* ``nats`` (url, subject, data): a NATS request; ``data`` is the reply's payload.

The test process cannot reach the machines' addresses (they live behind the bridge), so
everything that talks to a gateway runs in an agent on one of them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import numpy as np

from gateway.webrtc.client import Listener, Publisher, ToneTrack, WebRTCClient


def gap_free_tone(arrivals: np.ndarray, pts: np.ndarray, audio: np.ndarray, since: float,
                  until: float, freq: float, max_gap_s: float = 0.12,
                  origin_silence: int = 0) -> str:
    """Why the frames a Listener received between two instants (time.monotonic())
    are not a gap-free tone, or "" when they are. Gap-free: each 20 ms frame's RTP
    timestamp is the previous one's + 960 (48 kHz: no packet lost or skipped on the way to
    the listener), no frame arrived more than ``max_gap_s`` after the previous one, and
    every frame holds the tone (louder than -30 dBFS; dominant frequency within 2%) except
    at most ``origin_silence`` frames: those the stream itself had as silence on the
    publisher's node (its publisher starved of CPU on a busy test host)."""
    from audio_checks import dominant_frequency, rms_dbfs

    keep = np.nonzero((arrivals >= since) & (arrivals <= until))[0]
    if len(keep) < (until - since) * 50 * 0.9:
        return f"only {len(keep)} frames in {until - since:.1f} s"
    steps = np.diff(pts[keep])
    if (steps != 960).any():
        return f"RTP timestamp steps other than 960: {steps[steps != 960][:10].tolist()}"
    gaps = np.diff(arrivals[keep])
    if gaps.max() > max_gap_s:
        return f"a {gaps.max() * 1000:.0f} ms gap between frames"
    frames = audio[keep[0] * 960:(keep[-1] + 1) * 960].reshape(-1, 960)
    quiet = [i for i, f in enumerate(frames) if rms_dbfs(f) < -30]
    if len(quiet) > origin_silence:
        return (f"{len(quiet)} frames without the tone (first {quiet[0] * 0.02:.2f} s in); "
                f"{origin_silence} excused")
    frames = np.delete(frames, quiet, axis=0)
    found = dominant_frequency(frames.reshape(-1))
    if abs(found - freq) > freq * 0.02:
        return f"dominant {found:.0f} Hz, expected {freq:.0f} Hz"
    return ""


clients: dict[str, WebRTCClient] = {}


async def _http(method: str, url: str, json_body: Any = None,
                timeout: float = 5.0) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.request(method, url, json=json_body) as r:
            text = await r.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return {"status": r.status, "body": body, "headers": dict(r.headers)}


async def handle(req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    if op == "http":
        return await _http(req.get("method", "GET"), req["url"], req.get("json"))
    if op == "wait_http":
        deadline = time.monotonic() + req.get("timeout", 20.0)
        while True:
            try:
                reply = await _http("GET", req["url"], timeout=1.0)
                if reply["status"] == 200:
                    return reply
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{req['url']} did not answer 200")
            await asyncio.sleep(0.1)
    if op in ("publish", "listen"):
        if op == "publish":
            client: WebRTCClient = Publisher(req["url"], req["stream"],
                                             ToneTrack(req.get("freq", 440.0)))
        else:
            client = Listener(req["url"], req["stream"])
        try:
            await client.negotiate()
            await client.connected()
        except BaseException:
            await client.pc.close()
            raise
        clients[req["key"]] = client
        return {"location": client.location}
    if op == "save":
        lis = clients[req["key"]]
        assert isinstance(lis, Listener)
        n = len(lis.pts)
        audio = np.concatenate(lis.chunks[:n]) if n else np.zeros(0, np.int16)
        np.savez(req["path"], audio=audio, pts=np.array(lis.pts[:n], np.int64),
                 arrivals=np.array(lis.arrivals[:n]), rate=lis.sample_rate)
        return {"frames": n}
    if op == "close":
        client = clients.pop(req["key"])
        try:
            await asyncio.wait_for(client.delete(), 3)
        except (aiohttp.ClientError, TimeoutError):  # its gateway is gone
            await client.pc.close()
        return {}
    if op == "nats":
        import nats

        nc = await nats.connect(req["url"], connect_timeout=2, max_reconnect_attempts=0)
        try:
            msg = await nc.request(req["subject"], req.get("data", "").encode(), timeout=3)
        finally:
            await nc.close()
        return {"data": msg.data.decode()}
    raise ValueError(f"unknown op {op!r}")


async def serve(req: dict[str, Any], out: asyncio.Lock) -> None:
    try:
        reply = {"ok": True, **await handle(req)}
    except Exception as exc:
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    async with out:
        sys.stdout.write(json.dumps({"id": req.get("id"), **reply}) + "\n")
        sys.stdout.flush()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = asyncio.Lock()
    tasks = set()
    sys.stdout.write(json.dumps({"id": 0, "ok": True, "ready": True}) + "\n")
    sys.stdout.flush()
    while line := await reader.readline():
        task = asyncio.create_task(serve(json.loads(line), out))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for client in list(clients.values()):
        await client.pc.close()


if __name__ == "__main__":
    asyncio.run(main())
