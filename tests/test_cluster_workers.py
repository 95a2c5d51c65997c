"""`gateway serve --workers 2`: two processes on the same ports behave as one gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile

import aiohttp
import pytest
from audio_checks import active, assert_tone
from conftest import free_port

from gateway.webrtc.client import Listener, Publisher, ToneTrack


async def _get(url: str) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as http:  # a new connection: any worker may answer
        async with http.get(url) as r:
            return r.status, await r.json(), r.headers.get("X-Gateway-Node", "")


@pytest.fixture
async def two_workers():
    port = free_port()
    env = dict(os.environ, GATEWAY_SIP__PORT=str(free_port(socket.SOCK_DGRAM)),
               GATEWAY_RECORDING__DIRECTORY=tempfile.mkdtemp(prefix="gateway-rec-"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(port),
        "--ice-host", "127.0.0.1", "--node-name", "box", "--log-format", "text",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                status, body, _ = await _get(f"{url}/api/v1/cluster")
                if status == 200 and len(body["nodes"]) == 2 and all(
                        "sessions" in load for load in body["nodes"].values()):
                    break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the two workers did not both join the cluster")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]


async def test_one_publisher_and_twenty_listeners_over_two_workers(two_workers):
    url = two_workers
    pub = Publisher(url, "tone", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()

    listeners = [Listener(url, "tone") for _ in range(20)]
    for lis in listeners:  # one at a time: each POST on a new connection
        await lis.negotiate()
    await asyncio.gather(*(lis.connected() for lis in listeners))
    await asyncio.sleep(3.0)

    _, body, _ = await _get(f"{url}/api/v1/streams")
    [stream] = [s for s in body["streams"] if s["name"] == "tone"]
    cluster = stream["cluster"]
    assert cluster["listeners_total"] == 20, cluster
    assert sorted(cluster["listeners_by_node"]) == ["box-w0", "box-w1"], cluster
    assert cluster["owner"] == pub.location.rsplit(".", 1)[1]
    for lis in listeners:
        assert_tone(active(lis.audio()), 440, min_seconds=1.5)

    for _ in range(4):  # whichever worker answers, the stream has a live sender
        second = Publisher(url, "tone", ToneTrack(880))
        with pytest.raises(RuntimeError, match="409"):
            await second.negotiate()
        await second.pc.close()

    answered_elsewhere = 0
    for lis in listeners:
        async with aiohttp.ClientSession() as http:
            async with http.delete(url + lis.location) as r:
                assert r.status == 200, await r.text()
                if r.headers["X-Gateway-Node"] != lis.location.rsplit(".", 1)[1]:
                    answered_elsewhere += 1
        await lis.pc.close()
    assert answered_elsewhere > 0  # some DELETEs crossed to the other worker
    _, body, _ = await _get(f"{url}/api/v1/sessions")
    assert all(s["role"] == "publisher" for s in body["sessions"])  # (this worker's view)
    await pub.delete()


async def test_offers_on_one_kept_alive_connection_are_spread_over_both_workers(two_workers):
    """SO_REUSEPORT spreads connections, not sessions: a client (or a proxy) that sends
    every offer on one connection reaches one worker, which hands offers to its sibling
    while the sibling holds fewer sessions."""
    url = two_workers
    pub = Publisher(url, "tone", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()
    listeners = [Listener(url, "tone") for _ in range(10)]
    nodes = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for lis in listeners:
            await lis.negotiate(http=http)
        async with http.get(f"{url}/api/v1/stats") as r:
            nodes.add(r.headers["X-Gateway-Node"])
    assert len(nodes) == 1  # every request of this client went to one worker
    await asyncio.gather(*(lis.connected() for lis in listeners))
    await asyncio.sleep(2.0)

    by_node = {}
    for lis in listeners:
        node = lis.location.rsplit(".", 1)[1]
        by_node[node] = by_node.get(node, 0) + 1
    assert sorted(by_node) == ["box-w0", "box-w1"], by_node
    assert min(by_node.values()) >= 4, by_node  # (publisher: one session more on its worker)
    for lis in listeners:
        assert_tone(active(lis.audio()), 440, min_seconds=1.0)
    for lis in listeners:  # the URLs of handed-off sessions work as any other
        assert await lis.delete() == 200
    await pub.delete()


@pytest.mark.peer("chromium")
async def test_dashboard_shows_the_sender_node_and_listeners_per_worker(two_workers, tmp_path):
    from conftest import need_program
    from test_browser import CHROMIUM, chromium

    need_program(CHROMIUM)
    url = two_workers
    pub = Publisher(url, "tone", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()
    listeners = [Listener(url, "tone") for _ in range(6)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for lis in listeners:  # one connection: the hand-off puts some on each worker
            await lis.negotiate(http=http)
    await asyncio.gather(*(lis.connected() for lis in listeners))
    owner = pub.location.rsplit(".", 1)[1]
    async with chromium(tmp_path) as page:
        await page.goto(f"{url}/dashboard")
        line = page.locator('section.card[data-stream="tone"] .cluster')
        await line.filter(has_text="6 listener(s)").wait_for(timeout=15000)
        text = await line.text_content()
    assert f"sender on {owner}" in text, text
    assert "box-w0: " in text and "box-w1: " in text, text
    for lis in listeners:
        await lis.delete()
    await pub.delete()
