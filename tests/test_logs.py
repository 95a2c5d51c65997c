"""Logs are JSON lines when not on a terminal, and a request id ties each line of a
request (and of what it started) together."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import aiohttp
from conftest import free_port


async def test_json_logs_carry_the_request_id(tmp_path):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port),
        env={"GATEWAY_SIP__PORT": "0", "GATEWAY_RECORDING__DIRECTORY": str(tmp_path),
             "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{url}/healthz"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            target = free_port(socket.SOCK_DGRAM)
            async with http.post(f"{url}/api/v1/streams/logged/outputs",
                                 json={"type": "rtp", "host": "127.0.0.1", "port": target},
                                 headers={"X-Request-Id": "req-42"}) as r:
                assert r.status == 201 and r.headers["X-Request-Id"] == "req-42"
                output = await r.json()
            async with http.delete(f"{url}/api/v1/streams/logged/outputs/{output['id']}") as r:
                assert r.status == 204 and len(r.headers["X-Request-Id"]) >= 8
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)
    started = [e for e in lines if "rtp output" in e["msg"] and "logged" in e["msg"]]
    assert started and started[0]["request_id"] == "req-42", lines
    assert any(e["msg"].startswith("rtp output") and "stopped" in e["msg"] for e in lines)
    assert lines[-1]["msg"] == "gateway stopped"
