"""Overload under a container CPU limit: the newcomers past capacity are refused, the
admitted listeners keep hearing everything.

The gateway runs as its own process in a cgroup with a CPU quota (as `docker run --cpus`
would put it), so the test fits in CI whatever the machine: capacity is a few dozen
listeners. The quota is set at run time (as `docker update --cpus` would) from what the
gateway measured for its stream alone, so that stream takes the same share of it on a
fast machine, a slow one, or a busy one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from audio_checks import active, assert_tone
from conftest import free_port, need_program

from gateway.codecs.g711 import ulaw_encode
from gateway.webrtc.client import Listener

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10000  # the quota must be at least 1 ms a period
#: The share of the quota the gateway's stream (and its idle work) is given: the rest is
#: for listeners, 15-30 of them (with 76, the test's own process, receiving them all on a
#: busy machine, once lost frames the gateway had sent). Not more: the first listener
#: also starts the stream's Opus encoder, which the gateway counts as that listener's
#: cost until it has seen more of them, and with 0.6 a cheap stream once left CI room
#: for that one listener only.
STREAM_SHARE = 0.45


@pytest.fixture
def cpu_cgroup():
    if os.geteuid() != 0 or not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        need_program("__root_and_cgroup_v1_cpu__")
    group = CGROUP_CPU / f"gateway-test-{os.getpid()}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text("-1")  # set_quota() once the stream plays
    # Its quota, whatever else the machine runs: the test is about the quota, not about
    # sharing a busy machine (the default share is 1024).
    (group / "cpu.shares").write_text("8192")
    yield group
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            (CGROUP_CPU / "cgroup.procs").write_text(pid)
        except OSError:
            pass
    group.rmdir()


@pytest.fixture
async def confined_gateway(cpu_cgroup):
    port = free_port()
    env = dict(os.environ, GATEWAY_SIP__ENABLED="false",
               GATEWAY_RECORDING__DIRECTORY=tempfile.mkdtemp(prefix="gateway-rec-"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), "--ice-host",
        "127.0.0.1", "--log-format", "text", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    (cpu_cgroup / "cgroup.procs").write_text(str(proc.pid))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    episodes: list[int] = []
    yield url, episodes, cpu_cgroup
    proc.terminate()
    _, err = await proc.communicate()
    if episodes:  # the test got that far: logged once per episode, not once per refusal
        assert err.count(b"overloaded: refusing") == episodes[0] >= 1, err.decode()[-3000:]


async def set_quota(url: str, group: Path) -> float:
    """Give the gateway a quota in which its stream (already playing) and its idle work
    take STREAM_SHARE; returns the quota in cores, once the gateway follows it."""
    await asyncio.sleep(2.0)  # a full CPU window of the stream playing
    shares = []
    for _ in range(3):  # three one-second CPU windows: one varies by +-25 %
        await asyncio.sleep(1.0)
        used = (await _stats(url))["admission"]
        assert used["cores_available"] == 1.0, used  # no quota yet
        shares.append(used["cpu_share"])
    cores = min(0.3, max(0.1, sum(shares) / 3 / STREAM_SHARE))  # 1 ms a period at least
    (group / "cpu.cfs_quota_us").write_text(str(int(cores * PERIOD_US)))
    cores = int(cores * PERIOD_US) / PERIOD_US
    for _ in range(50):
        await asyncio.sleep(0.1)
        if (await _stats(url))["admission"]["cores_available"] == round(cores, 3):
            break
    else:
        raise AssertionError(f"the gateway did not follow its new quota of {cores} cores")
    await asyncio.sleep(2.0)  # a CPU window under the quota
    return cores


async def send_pcmu_tone(url: str, stream: str) -> None:
    """An RTP input on the gateway, fed a 440 Hz PCMU tone at 20 ms a packet."""
    port = free_port(socket.SOCK_DGRAM)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/v1/streams/{stream}/inputs",
                             json={"type": "rtp", "port": port, "codec": "PCMU"}) as r:
            assert r.status == 201, await r.text()
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 0.3 * 32767).astype(np.int16)
    ulaw = ulaw_encode(tone)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i in range(1 << 30):
            payload = ulaw[(i % 50) * 160:(i % 50 + 1) * 160]
            sock.sendto(struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * 160, 7) + payload,
                        ("127.0.0.1", port))
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    finally:
        sock.close()


async def _stats(url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/v1/stats") as r:
            return await r.json()


async def _packets_sent(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/v1/sessions") as r:
            sessions = (await r.json())["sessions"]
    return {s.get("id") or str(n): s["packets_sent"] for n, s in enumerate(sessions)
            if s["role"] == "listener"}


def _frames_within(pts: list[int], frames: int, step: int = 960) -> int:
    """How many of the ``frames`` 20 ms frames from the first in ``pts`` arrived
    (RTP timestamps at 48 kHz, wrapping at 2**32)."""
    if not pts:
        return 0
    offsets = {(p - pts[0]) % (1 << 32) for p in pts}
    return sum(1 for k in range(frames) if k * step in offsets)


async def test_listeners_past_capacity_get_503_and_the_admitted_hear_everything(
        confined_gateway):
    url, episodes, group = confined_gateway
    sender = asyncio.create_task(send_pcmu_tone(url, "tone"))  # a cheap sender: plain RTP
    cores = await set_quota(url, group)
    admitted: list[Listener] = []
    refusals = []
    while len(refusals) < 3 and len(admitted) < 120:
        # after a refusal, wait as a client told "Retry-After: 1" would: three in a row
        # then span the time the gateway needs to learn what the admitted cost it
        await asyncio.sleep(1.5 if refusals else 0.5)
        lis = Listener(url, "tone")
        try:
            await lis.negotiate()
        except RuntimeError as exc:
            refusals.append(str(exc))
            await lis.pc.close()
            continue
        refusals.clear()  # three refusals in a row end the ramp
        admitted.append(lis)
        await lis.connected(timeout=20)
    assert len(refusals) == 3 and len(admitted) >= 3, (len(admitted), refusals)
    assert all(" 503 " in r and "at capacity" in r for r in refusals), refusals
    print(f"{len(admitted)} admitted under {cores:g} cores, then refused:",
          (await _stats(url))["admission"])

    # The admitted listeners all get every frame of a 10 s stretch of the stream, counted
    # by RTP timestamp: a frame that arrives late (the gateway is throttled by its quota)
    # is not a frame lost.
    await asyncio.sleep(3.0)
    first = [len(lis.pts) for lis in admitted]
    sent_before = await _packets_sent(url)
    await asyncio.sleep(11.0)
    sent = await _packets_sent(url)
    delivered = [_frames_within(lis.pts[i:], 500) for lis, i in zip(admitted, first, strict=True)]
    worst = min(delivered)
    # which side lost them, if any: the gateway's sends over about the same window
    sent_worst = min(sent[i] - sent_before.get(i, 0) for i in sent)
    assert worst >= 500 - 3, (f"worst admitted listener got {worst} of 500 frames; "
                              f"the gateway sent at least {sent_worst} to each in 11 s")
    for lis in admitted[:: max(1, len(admitted) // 5)]:
        assert_tone(active(lis.audio()[-48000 * 5:]), 440, min_seconds=2.0)

    stats = await _stats(url)
    assert stats["admission"]["refused"]["webrtc_listen"] >= len(refusals), stats["admission"]
    assert stats["admission"]["episodes"] < stats["admission"]["refused"]["webrtc_listen"]

    # A refusal is a problem document with Retry-After. The CPU of the listeners that
    # play settles below the limit after the ramp (CI once admitted 20 newcomers in a
    # row there), so newcomers are kept, and connected, until one is refused.
    extra: list[Listener] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(30):
            lis = Listener(url, "tone")
            await lis.pc.setLocalDescription(await lis.pc.createOffer())
            async with http.post(url + "/whep/tone", data=lis.offer_sdp(),
                                 headers={"Content-Type": "application/sdp"}) as r:
                if r.status == 201:
                    lis.location = r.headers["Location"]
                    answer = await r.text()
                else:
                    body = await r.json(content_type=None)
                    assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
                    assert r.content_type == "application/problem+json"
                    assert "capacity" in body["detail"]
                    await lis.pc.close()
                    break
            await lis.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            extra.append(lis)
            await lis.connected(timeout=20)
            await asyncio.sleep(1.0)  # the CPU window
        else:
            raise AssertionError("no refusal while adding 30 listeners past the ramp")
    for lis in extra:
        await lis.delete()

    # When listeners leave, newcomers are admitted again. All but one leave: the CPU a
    # listener costs varies (CI's once stayed at 0.88 of the quota after 7 of 15 left).
    leaving = admitted[:-1]
    for lis in leaving:
        await lis.delete()
    for _attempt in range(15):  # within seconds (the CPU window is one second)
        await asyncio.sleep(1.0)
        again = Listener(url, "tone")
        try:
            await again.negotiate()
            break
        except RuntimeError:
            await again.pc.close()
    else:
        raise AssertionError(f"still refusing 15 s after {len(leaving)} listeners left: "
                             f"{(await _stats(url))['admission']}")
    await again.delete()
    episodes.append((await _stats(url))["admission"]["episodes"])
    await admitted[-1].delete()
    sender.cancel()
