"""HTTP connections that never finish their request headers are closed after
http.header_timeout_s, and one address cannot hold more than
http.max_pending_per_address such connections; everyone else is still served, and
slow-but-whole requests, keep-alive and never-ending SSE replies are untouched."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from conftest import free_port
from test_recording_crash import start_gateway

from gateway.config import ConfigError, HttpConfig, load
from gateway.web.keys import HTTP_GUARD

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def connect(gw, source: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(source, 0))


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float | None:
    """Seconds until the server closes the connection (reading discards any reply), or
    None if it is still open after ``limit``."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return head


def test_defaults_are_safe_for_ordinary_clients():
    http = HttpConfig()
    assert 0 < http.header_timeout_s <= 20
    assert http.max_pending_per_address >= 20
    for bad in ({"header_timeout_s": 0}, {"max_pending_per_address": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load(None, {"http": bad})


async def test_unfinished_and_silent_connections_are_closed_after_the_header_timeout(
        gateway_factory):
    gw = await gateway_factory(http={"header_timeout_s": 0.5})
    dribbler, silent = await connect(gw), await connect(gw)
    dribbler[1].write(b"GET /healthz HT")
    took = await asyncio.gather(closed_after(dribbler[0], 5.0), closed_after(silent[0], 5.0))
    assert all(t is not None and 0.3 < t < 2.0 for t in took), took
    assert gw.app[HTTP_GUARD].header_timeouts == 2
    for _, writer in (dribbler, silent):
        writer.close()


async def test_a_slow_but_complete_request_is_served(gateway_factory):
    gw = await gateway_factory(http={"header_timeout_s": 1.0})
    reader, writer = await connect(gw)
    for i in range(0, len(REQUEST), 8):
        writer.write(REQUEST[i:i + 8])
        await asyncio.sleep(0.1)  # 0.5 s in all
    assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
    # a body may take longer than the headers' limit: the handler is reading it
    body = b"hello world, not sdp"
    writer.write(b"POST /whip/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 4):
        await asyncio.sleep(0.3)  # 1.5 s in all
        writer.write(body[i:i + 4])
    assert (await read_response(reader)).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_keep_alive_and_sse_outlive_the_header_timeout(gateway_factory):
    gw = await gateway_factory(http={"header_timeout_s": 0.5})
    reader, writer = await connect(gw)
    writer.write(REQUEST)
    assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.8)  # idle between requests: the keep-alive timeout's business
    writer.write(REQUEST)
    assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
    # a next request begun but never finished is closed like a first one
    writer.write(b"GET /healthz HTTP/1.1\r\nHo")
    took = await closed_after(reader, 5.0)
    assert took is not None and took < 2.0, took
    writer.close()

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/api/v1/events") as r:
            assert r.status == 200
            await asyncio.sleep(0.8)
            assert not r.connection.transport.is_closing()
            gw.gateway.events.publish("test_event", "x")
            line = await asyncio.wait_for(r.content.readline(), 2.0)
            while b"test_event" not in line:
                line = await asyncio.wait_for(r.content.readline(), 2.0)


async def test_one_address_cannot_hold_more_than_its_share(gateway_factory, caplog):
    caplog.set_level(logging.INFO, "gateway")
    gw = await gateway_factory(http={"header_timeout_s": 30.0, "max_pending_per_address": 5})
    held = [await connect(gw) for _ in range(5)]
    await asyncio.sleep(0.1)
    excess = [await connect(gw) for _ in range(3)]
    took = await asyncio.gather(*(closed_after(r, 2.0) for r, _ in excess))
    assert all(t is not None and t < 0.5 for t in took), took
    assert await closed_after(held[0][0], 0.05) is None  # the first five stay
    # another address is served meanwhile; so is this one once its connections are gone
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=other) as http:
        async with http.get(f"{gw.url}/healthz") as r:
            assert r.status == 200
    guard = gw.app[HTTP_GUARD]
    assert guard.refused == 3
    warnings = [r for r in caplog.records if "refusing" in r.getMessage()]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0].getMessage()
    for _, writer in held + excess:
        writer.close()
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{gw.url}/metrics") as r:
            text = await r.text()
    assert "gateway_http_connections_refused_total 3.0" in text
    assert any("refused 3" in r.getMessage() for r in caplog.records)


async def test_gateway_serve_has_the_same_protection(tmp_path):
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f"[http]\nport = {port}\nheader_timeout_s = 0.5\n"
                      "[sip]\nenabled = false\n")
    proc = await start_gateway(config, port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HT")
        took = await closed_after(reader, 5.0)
        writer.close()
    finally:
        proc.terminate()
        await proc.wait()
    assert took is not None and took < 2.0, took
