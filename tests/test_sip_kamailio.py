"""Kamailio's dispatcher in front of three gateway nodes joined by NATS: calls are spread
over the nodes, every caller hears the stream published on one of them, and a full node's
503 (or a node that no longer answers) sends the call on to another."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import defaultdict

from audio_checks import assert_tone
from conftest import free_port, need_program
from gateway_procs import GatewayProcess, http, send_tone
from peers.kamailio import Kamailio
from peers.sipp import run_sipp, start_sipp

from gateway.cluster.server import EmbeddedNats
from gateway.codecs.g711 import ulaw_decode

NODES = ("node-a", "node-b", "node-c")
FULL_AT = 12  # node-c's sip.max_calls


def node_config(index: int, sip_port: int, max_calls: int) -> str:
    low = 31000 + 1000 * index  # apart from each other and from baresip tests' 30000-39000
    return f"""
[streams]
declared = ["tone"]
[sip]
port = {sip_port}
rtp_port_min = {low}
rtp_port_max = {low + 998}
max_calls = {max_calls}
"""


class RtpSink:
    """One UDP socket that every call's SDP names: packets are told apart by source and
    SSRC (one RTP output, so one SSRC, per call)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.port = self.sock.getsockname()[1]
        self.calls: dict[tuple, list[tuple[int, bytes]]] = defaultdict(list)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, source = await loop.sock_recvfrom(self.sock, 2048)
            if len(data) > 12 and data[1] & 0x7F == 0:  # PCMU (RTCP has PT 200-204)
                seq, ssrc = struct.unpack_from("!H", data, 2)[0], data[8:12]
                self.calls[(source, ssrc)].append((seq, data[12:]))

    def audio(self, key: tuple):
        packets = sorted(self.calls[key])
        return ulaw_decode(b"".join(p for _, p in packets))

    def close(self) -> None:
        self.task.cancel()
        self.sock.close()


async def sip_of(gw: GatewayProcess) -> dict:
    status, body, _ = await http("GET", f"{gw.url}/api/v1/sip")
    assert status == 200, body
    return body


async def test_kamailio_spreads_calls_over_three_nodes_and_fails_over(tmp_path):
    need_program("kamailio", "sipp")
    nats = EmbeddedNats()
    await nats.start()
    ports = [free_port(socket.SOCK_DGRAM) for _ in NODES]
    gateways: dict[str, GatewayProcess] = {}
    sink = RtpSink()
    sender = None
    try:
        started = await asyncio.gather(*(
            GatewayProcess.start(tmp_path / name, node_config(
                i, ports[i], FULL_AT if name == "node-c" else 500),
                "--nats-url", nats.url, "--node-name", name)
            for i, name in enumerate(NODES)))
        gateways = dict(zip(NODES, started, strict=True))
        a, b, c = started
        for _ in range(100):
            status, cluster, _ = await http("GET", f"{a.url}/api/v1/cluster")
            if len(cluster["nodes"]) == 3:
                break
            await asyncio.sleep(0.1)
        assert sorted(cluster["nodes"]) == list(NODES), cluster
        rtp_in = free_port(socket.SOCK_DGRAM)  # the publisher: an RTP input on node A
        status, body, _ = await http("POST", f"{a.url}/api/v1/streams/tone/inputs",
                                     {"port": rtp_in, "codec": "PCMU"})
        assert status == 201, body
        sender = asyncio.create_task(send_tone(rtp_in, 440))

        async with Kamailio(tmp_path / "kamailio",
                            [f"sip:127.0.0.1:{p}" for p in ports]) as kamailio:
            proxy = f"127.0.0.1:{kamailio.port}"
            # 1. 30 calls through Kamailio: round-robin over the three nodes
            calls = start_sipp("uac_listen.xml", proxy, service="tone", calls=30, rate=20,
                               keys={"rtp_port": sink.port, "listen_ms": 3000})
            spread: dict = {}
            while not calls.done() and len(spread) < 3:  # listeners per node, from node A
                await asyncio.sleep(0.3)
                _, streams, _ = await http("GET", f"{a.url}/api/v1/streams")
                [tone] = [s for s in streams["streams"] if s["name"] == "tone"]
                spread = tone["cluster"]["listeners_by_node"]
            result = await calls
            assert result.ok, result.describe()
            assert sorted(spread) == list(NODES), spread
            taken = {name: (await sip_of(gw))["calls_total"] for name, gw in gateways.items()}
            assert sum(taken.values()) == 30 and min(taken.values()) >= 8, taken
            assert len(sink.calls) == 30, {k: len(v) for k, v in sink.calls.items()}
            for key in sink.calls:
                assert_tone(sink.audio(key)[4000:], 440, rate=8000, min_seconds=2.0)

            # 2. node C full: its 503 sends the calls Kamailio gives it to another node
            filler_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            filler_sink.bind(("127.0.0.1", 0))
            fillers = start_sipp("uac_listen.xml", f"127.0.0.1:{ports[2]}", service="tone",
                                 calls=FULL_AT, rate=50,
                                 keys={"rtp_port": filler_sink.getsockname()[1],
                                       "listen_ms": 8000})
            for _ in range(50):
                if (await sip_of(c))["calls"] == FULL_AT:
                    break
                await asyncio.sleep(0.1)
            refused = (await sip_of(c))["calls_refused"]
            sink.calls.clear()
            result = await run_sipp("uac_listen.xml", proxy, service="tone", calls=15,
                                    rate=20, keys={"rtp_port": sink.port, "listen_ms": 2000})
            assert result.ok, result.describe()
            assert (await sip_of(c))["calls_refused"] >= refused + 4  # ~1 in 3 went there
            assert "failover to" in kamailio.log
            assert len(sink.calls) == 15
            for key in sink.calls:
                assert_tone(sink.audio(key)[4000:], 440, rate=8000, min_seconds=1.0)
            filled = await fillers
            assert filled.ok, filled.describe()
            filler_sink.close()

            # 3. node B gone (killed): no answer within fr_timer, the call moves on
            await b.stop(check=False, sig=9)
            sink.calls.clear()
            result = await run_sipp("uac_listen.xml", proxy, service="tone", calls=6,
                                    rate=20, keys={"rtp_port": sink.port, "listen_ms": 1500})
            assert result.ok, result.describe()
            assert len(sink.calls) == 6
            for key in sink.calls:
                assert_tone(sink.audio(key)[2000:], 440, rate=8000, min_seconds=0.8)
    finally:
        if sender is not None:
            sender.cancel()
        sink.close()
        for name, gw in gateways.items():
            await gw.stop(check=name != "node-b")
        await nats.stop()
