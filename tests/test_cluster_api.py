"""Any node of a cluster answers for every stream, whichever node holds it and whatever
its sender (docs/cluster.md: "any node answers any API call")."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import aiohttp
from conftest import free_port
from test_cluster_outages import _get, _node, nats_server  # noqa: F401 - a fixture


async def _post(url: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body) as r:
            return r.status, await r.json()


async def test_every_node_lists_and_shows_a_stream_fed_by_an_rtp_input_on_another(
        nats_server, gateway_factory):  # noqa: F811
    a = await _node(gateway_factory, nats_server, "a")
    b = await _node(gateway_factory, nats_server, "b")
    port = free_port(socket.SOCK_DGRAM)
    status, created = await _post(f"{a.url}/api/v1/streams/radio/inputs",
                                  {"type": "rtp", "port": port, "codec": "PCMU"})
    assert status == 201, created
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(50):  # a second of PCMU: the input becomes the stream's sender
        sock.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + b"\x55" * 160,
                    ("127.0.0.1", port))
        await asyncio.sleep(0.02)
    sock.close()
    for _ in range(50):  # the owner's lease reaches b's view of the directory
        status, body = await _get(f"{b.url}/api/v1/streams")
        assert status == 200, body  # was a 500: the remote sender came without its id
        listed = {s["name"]: s for s in json.loads(body)["streams"]}
        if "radio" in listed and listed["radio"]["cluster"]["owner"] == "a":
            break
        await asyncio.sleep(0.1)
    radio = listed["radio"]
    assert radio["sender"]["kind"] == "rtp" and radio["sender"]["id"] == created["id"], radio
    assert radio["cluster"]["owner"] == "a", radio
    status, body = await _get(f"{b.url}/api/v1/streams/radio")  # was a 404 on b
    assert status == 200, body
    shown = json.loads(body)
    assert shown["sender"]["id"] == created["id"] and shown["cluster"]["owner"] == "a", shown
    status, body = await _get(f"{b.url}/api/v1/streams/nothing")
    assert status == 404, body
