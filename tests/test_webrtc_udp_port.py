"""One UDP port for every WebRTC session (webrtc.udp_port, gateway/webrtc/udp_mux.py).

The router on its own (STUN built with aioice, no sockets); aiortc and Chromium publishers
and listeners on one port; each worker of `--workers 2` on its own port; and the gateway in
a "container" behind Docker-style port mapping (network namespaces, nftables DNAT), heard
from a machine outside that reaches it only through the two published ports.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aioice import stun
from audio_checks import active, assert_tone
from conftest import free_port, need_program, start_gateway
from test_webrtc_fanout import publish
from test_webrtc_relay import listen

from gateway.config import ConfigError, load
from gateway.webrtc.client import Listener, Publisher, ToneTrack
from gateway.webrtc.udp_mux import Route, UdpRouter

ROOT = Path(__file__).resolve().parent.parent


# -- the router ------------------------------------------------------------------------
class Session:
    """What a route hands datagrams to, recorded."""

    def __init__(self, ufrag: str, password: str = "p" * 22) -> None:
        self.stun_in: list[tuple[bytes, tuple]] = []
        self.data_in: list[bytes] = []
        self.route = Route(ufrag, password.encode(), lambda d, a: self.stun_in.append((d, a)),
                           self.data_in.append)


def check(ufrag: str, password: str | None = "p" * 22) -> bytes:
    """A connectivity check for local ufrag ``ufrag``, signed with ``password``."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:peer"
    message.attributes["PRIORITY"] = 1
    if password is not None:
        message.add_message_integrity(password.encode())
    return bytes(message)


DTLS = bytes([22, 254, 253]) + bytes(20)
RTP = bytes([0x80, 111]) + bytes(30)
PEER, OTHER = ("192.0.2.1", 5000), ("192.0.2.2", 6000)


def test_a_signed_check_routes_its_address_to_the_session_by_ufrag():
    router, a, b = UdpRouter(), Session("aaaa"), Session("bbbb")
    router.add(a.route)
    router.add(b.route)
    router.received(DTLS, PEER)  # before any check: nobody's
    assert router.unclaimed == 1 and not a.data_in

    router.received(check("bbbb"), PEER)
    assert [addr for _, addr in b.stun_in] == [PEER] and not a.stun_in
    router.received(DTLS, PEER)
    router.received(RTP, PEER)
    assert b.data_in == [DTLS, RTP] and not a.data_in
    router.received(RTP, OTHER)
    assert router.unclaimed == 2


def test_an_unsigned_or_forged_check_reaches_the_session_but_does_not_move_an_address():
    router, a, b = UdpRouter(), Session("aaaa"), Session("bbbb")
    router.add(a.route)
    router.add(b.route)
    router.received(check("aaaa"), PEER)
    router.received(check("bbbb", password=None), PEER)  # unsigned: aioice answers 400
    router.received(check("bbbb", password="w" * 22), PEER)  # wrong key: 401
    assert len(b.stun_in) == 2
    router.received(RTP, PEER)
    assert a.data_in == [RTP] and not b.data_in
    router.received(check("bbbb"), PEER)  # signed: the peer's port is b's now
    router.received(RTP, PEER)
    assert b.data_in == [RTP] and not a.route.addresses


def test_a_response_finds_the_session_that_asked_by_transaction_id():
    router, a, b = UdpRouter(), Session("aaaa"), Session("bbbb")
    router.add(a.route)
    router.add(b.route)
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    router.sent(a.route, bytes(request), PEER)
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                            transaction_id=request.transaction_id)
    router.received(bytes(response), OTHER)  # from elsewhere: delivered, teaches nothing
    assert len(a.stun_in) == 1 and not b.stun_in and OTHER not in router.by_address
    router.received(bytes(response), PEER)  # the transaction is over: unclaimed
    assert router.unclaimed == 1

    router.sent(b.route, bytes(request), PEER)
    router.received(bytes(response), PEER)  # from the address asked: learnt
    router.received(DTLS, PEER)
    assert b.data_in == [DTLS]


def test_removing_a_session_forgets_its_ufrag_addresses_and_transactions():
    router, a = UdpRouter(), Session("aaaa")
    router.add(a.route)
    with pytest.raises(KeyError, match="aaaa"):
        router.add(Session("aaaa").route)
    router.received(check("aaaa"), PEER)
    router.sent(a.route, bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)), OTHER)
    router.remove(a.route)
    assert not router.by_ufrag and not router.by_address and not router.by_transaction
    router.received(RTP, PEER)
    router.received(check("aaaa"), PEER)
    assert router.unclaimed == 2 and len(router) == 0


def test_short_and_malformed_stun_is_unclaimed():
    router, a = UdpRouter(), Session("aaaa")
    router.add(a.route)
    # a 2-byte PRIORITY attribute: aioice's parser raises struct.error, not ValueError
    short_priority = bytes.fromhex("00010008 2112a442") + bytes(12) + bytes.fromhex(
        "00240002 00010000")
    for junk in (b"", b"\x00\x01", check("aaaa")[:-4], bytes(40), short_priority):
        router.received(junk, PEER)
    assert router.unclaimed == 5 and not a.stun_in


def test_an_error_response_teaches_no_address():
    router, a = UdpRouter(), Session("aaaa")
    router.add(a.route)
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    router.sent(a.route, bytes(request), PEER)
    error = stun.Message(stun.Method.BINDING, stun.Class.ERROR,
                         transaction_id=request.transaction_id)
    error.attributes["ERROR-CODE"] = (401, "Unauthorized")
    router.received(bytes(error), PEER)
    assert len(a.stun_in) == 1 and PEER not in router.by_address


def test_a_session_holds_a_bounded_number_of_addresses_and_transactions():
    """A peer checking from ever new addresses (an IPv6 /64 has plenty), or requests
    that never get an answer, cannot grow the port's tables without end."""
    from gateway.webrtc.udp_mux import MAX_ADDRESSES, MAX_TRANSACTIONS

    router, a = UdpRouter(), Session("aaaa")
    router.add(a.route)
    for i in range(100):
        router.received(check("aaaa"), (f"2001:db8::{i:x}", 5000))
        router.sent(a.route, bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)),
                    PEER)
    assert len(router.by_address) == len(a.route.addresses) == MAX_ADDRESSES
    assert len(router.by_transaction) == len(a.route.transactions) == MAX_TRANSACTIONS
    router.received(RTP, ("2001:db8::63", 5000))  # the newest are kept
    router.received(RTP, ("2001:db8::0", 5000))
    assert a.data_in == [RTP] and router.unclaimed == 1


# -- configuration ---------------------------------------------------------------------
def test_additional_hosts_need_the_shared_port_and_are_addresses():
    with pytest.raises(ConfigError, match="additional_hosts needs udp_port"):
        load(None, {"webrtc": {"additional_hosts": ["203.0.113.7"]}})
    with pytest.raises(ConfigError, match="not an IP address"):
        load(None, {"webrtc": {"udp_port": 8189, "additional_hosts": ["gw.example.org"]}})
    config = load(None, {"webrtc": {"udp_port": 8189, "additional_hosts": ["203.0.113.7"]}})
    assert config.webrtc.udp_port == 8189


async def test_a_port_in_use_stops_the_gateway_with_the_key_named():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        with pytest.raises(ConfigError,
                           match=rf"webrtc.udp_port: cannot bind UDP 127.0.0.1:{port}"):
            gw = await start_gateway(webrtc={"udp_port": port})
            await gw.runner.cleanup()


# -- aiortc and Chromium on one port ---------------------------------------------------
def ice_connection(session):  # type: ignore[no-untyped-def]
    """The aioice Connection of a gateway session."""
    return session.pc.getTransceivers()[0].sender.transport.transport.iceGatherer._connection


def candidates(sdp: str) -> list[tuple[str, int]]:
    return [(m[0], int(m[1])) for m in re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+)", sdp)]


async def test_a_publisher_and_listeners_share_one_port_and_hear_the_stream(gateway_factory):
    port = free_port()
    gw = await gateway_factory(webrtc={"udp_port": port, "additional_hosts": ["192.0.2.7"]})
    pub = await publish(gw, "one-port", 440)
    listeners = [Listener(gw.url, "one-port") for _ in range(6)]
    for lis in listeners:
        await lis.negotiate()
        assert candidates(lis.answer) == [("127.0.0.1", port), ("192.0.2.7", port)]
        foundations = re.findall(r"a=candidate:(\S+) ", lis.answer)
        assert len(set(foundations)) == 2 and all(len(f) <= 32 for f in foundations)
    await asyncio.gather(*(lis.connected() for lis in listeners))
    await asyncio.sleep(2.0)
    for lis in listeners:
        assert_tone(active(lis.audio()), 440, min_seconds=1.2)

    # every session's ICE runs on the shared socket: none bound a port of its own
    for session in gw.gateway.sessions.values():
        protocols = ice_connection(session)._protocols
        assert [p.transport.get_extra_info("sockname") for p in protocols] == [
            ("127.0.0.1", port)]
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/api/v1/stats") as r:
        [shared] = (await r.json())["webrtc_udp_ports"]
    assert shared["port"] == port and shared["sessions"] == 7

    for lis in listeners[:3]:  # the rest still hear it after some leave
        assert await lis.delete() == 200
    mark = [len(lis.pts) for lis in listeners[3:]]
    await asyncio.sleep(1.0)
    for lis, since in zip(listeners[3:], mark, strict=True):
        assert len(lis.pts) - since >= 40
    assert len(gw.gateway.peers.udp_ports["127.0.0.1"].router) == 4
    for client in [pub, *listeners[3:]]:
        await client.delete()


@pytest.mark.peer("chromium")
async def test_chromium_listens_over_the_shared_port(gateway_factory, tmp_path):
    """A browser listener next to an aiortc one, both fed by the fan-out on the shared
    socket: the page's analyser hears the 880 Hz tone."""
    from test_browser import CHROMIUM, chromium, text_becomes

    need_program(CHROMIUM)
    port = free_port()
    gw = await gateway_factory(webrtc={"udp_port": port})
    pub = await publish(gw, "tone-one-port", 880)
    other = await listen(gw, "tone-one-port")
    async with chromium(tmp_path) as page:
        await page.goto(f"{gw.url}/listen?stream=tone-one-port")
        await page.click("#play")
        await text_becomes(page, "#status", "playing")
        await page.wait_for_function("document.getElementById('level').value > 0.05")
        peak = await page.text_content("#peak")
        assert abs(float(peak.split("~")[1].split()[0]) - 880) < 30, peak
        [browser] = [s for s in gw.gateway.sessions.values()
                     if s.role == "listener" and s.id not in other.location]
        assert ice_connection(browser)._nominated[1].local_candidate.port == port
    assert_tone(active(other.audio()), 880, min_seconds=1.0)
    await other.delete()
    await pub.delete()


@pytest.mark.peer("chromium")
async def test_chromium_publishes_over_the_shared_port(gateway_factory, tmp_path):
    from test_browser import CHROMIUM, chromium, text_becomes, wait_until, write_tone_wav

    need_program(CHROMIUM)
    port = free_port()
    gw = await gateway_factory(webrtc={"udp_port": port})
    wav = write_tone_wav(tmp_path / "tone660.wav", 660)
    async with chromium(tmp_path, wav) as page:
        await page.goto(f"{gw.url}/publish?stream=browser-one-port")
        await page.click("#start")
        await text_becomes(page, "#status", "publishing")
        listener = await listen(gw, "browser-one-port")
        await wait_until(lambda: len(active(listener.audio())) >= 2 * 48000, 12,
                         "2 s of audible audio")
        assert_tone(active(listener.audio()), 660, min_seconds=2.0)
        [session] = [s for s in gw.gateway.sessions.values() if s.role == "publisher"]
        assert ice_connection(session)._nominated[1].local_candidate.port == port
        await listener.delete()


def free_udp_pair() -> int:
    """A free port whose next port is free too (worker 1 takes the port above)."""
    while True:
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


async def test_each_worker_has_its_own_port(tmp_path):
    http_port, udp_port = free_port(), free_udp_pair()
    env = dict(os.environ, GATEWAY_SIP__PORT=str(free_port()),
               GATEWAY_RECORDING__DIRECTORY=str(tmp_path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(http_port),
        "--ice-host", "127.0.0.1", "--webrtc-udp-port", str(udp_port), "--node-name", "box",
        "--log-format", "text", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{http_port}"
    try:
        from test_cluster_workers import _get

        for _ in range(300):
            try:
                status, body, _ = await _get(f"{url}/api/v1/cluster")
                if status == 200 and len(body["nodes"]) == 2:
                    break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        pub = Publisher(url, "tone", ToneTrack(440))
        await pub.negotiate()
        await pub.connected()
        listeners = [Listener(url, "tone") for _ in range(8)]
        for lis in listeners:
            await lis.negotiate()
        await asyncio.gather(*(lis.connected() for lis in listeners))
        await asyncio.sleep(2.0)
        ports = {}
        for client in [pub, *listeners]:
            worker = int(client.location.rsplit(".", 1)[1].removeprefix("box-w"))
            [(_, port)] = candidates(client.answer)
            ports.setdefault(worker, set()).add(port)
        assert ports == {0: {udp_port}, 1: {udp_port + 1}}, ports
        for lis in listeners:
            assert_tone(active(lis.audio()), 440, min_seconds=1.2)
        for client in [pub, *listeners]:
            await client.delete()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


# -- Docker's bridged network ----------------------------------------------------------
@pytest.mark.parametrize("setup", ["additional_hosts", "nat_1to1", "ports_per_session"])
async def test_a_port_mapped_container_is_heard_from_outside(setup, tmp_path):
    """`docker run -p 8080:8080 -p 8189:8189/udp`: a publisher and a listener on another
    machine, behind their own stateful firewall, reach the gateway only through the two
    published ports. With a port per session (the control) the listener cannot connect."""
    need_program("ip", "nft")
    from peers.machines import Agent, MachinesUnavailable
    from peers.port_mapped import ADDRESSES, PortMapped

    env = dict(os.environ, PYTHONPATH=str(ROOT), GATEWAY_RECORDING__DIRECTORY=str(tmp_path),
               GATEWAY_SIP__ENABLED="false")
    if setup == "additional_hosts":  # the container does not know its own address
        env.update(GATEWAY_WEBRTC__UDP_PORT="8189",
                   GATEWAY_WEBRTC__ADDITIONAL_HOSTS=f'["{ADDRESSES["host"]}"]')
    else:
        env.update(GATEWAY_WEBRTC__HOST_ADDRESSES=f'["{ADDRESSES["container"]}"]',
                   GATEWAY_WEBRTC__NAT_1TO1=f'{{"{ADDRESSES["container"]}": '
                                            f'"{ADDRESSES["host"]}"}}')
        if setup == "nat_1to1":
            env.update(GATEWAY_WEBRTC__UDP_PORT="8189")
    try:
        net = PortMapped(tcp=[8080], udp=[8189])
        await net.__aenter__()
    except MachinesUnavailable as exc:
        pytest.fail(str(exc))
    try:
        log = (tmp_path / "gateway.log").open("wb")
        await net.spawn("container", sys.executable, "-m", "gateway", "serve", "--host",
                        "0.0.0.0", "--port", "8080", "--insecure", "--log-format", "text",
                        env=env, stdout=log, stderr=log)
        agent = await Agent.start(net, "outside", env)
        await agent.ready()
        url = f"http://{ADDRESSES['host']}:8080"
        await agent.call("wait_http", url=f"{url}/readyz")
        if setup == "ports_per_session":
            reply = await agent.call("listen", timeout=30.0, check=False, key="lis",
                                     url=url, stream="tone")
            assert not reply["ok"] and "not connected" in reply["error"], reply
            return
        await agent.call("publish", key="pub", url=url, stream="tone", freq=440.0)
        await agent.call("listen", key="lis", url=url, stream="tone")
        await asyncio.sleep(3.0)
        saved = tmp_path / "lis.npz"
        await agent.call("save", key="lis", path=str(saved))
        heard = np.load(saved)
        # what matters here is the path through the NAT: the tone, and (nearly) every
        # frame of 3 s (a loaded CI host may make the media clock skip a few)
        assert len(heard["pts"]) >= 0.8 * 3.0 * 50, len(heard["pts"])
        assert_tone(heard["audio"][-2 * 48000:], 440.0, min_seconds=2.0)
        status = await agent.get(f"{url}/api/v1/stats")
        [shared] = status["webrtc_udp_ports"]
        assert (shared["address"], shared["port"], shared["sessions"]) == (
            ADDRESSES["container"], 8189, 2)
    finally:
        await net.close()
        tail = (tmp_path / "gateway.log").read_text(errors="replace")[-3000:]
        print(tail)


async def test_junk_on_the_shared_port_is_counted_and_the_sessions_play_on(gateway_factory,
                                                                          caplog):
    """Anyone can send to the published port: random bytes, STUN with unknown ufrags or
    broken attributes, fake DTLS. All of it is dropped and counted; the listener on the
    port keeps hearing the stream and nothing is logged as an error."""
    import logging
    import random

    port = free_port()
    gw = await gateway_factory(webrtc={"udp_port": port})
    pub = await publish(gw, "busy-port", 440)
    lis = await listen(gw, "busy-port")
    rng = random.Random(7)
    junk = [check("zzzz"), check("zzzz")[:30], DTLS, RTP, bytes(20),
            bytes.fromhex("00010008 2112a442") + bytes(12) + bytes.fromhex("00240002 0001")]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = len(lis.pts)
    sent = 0
    try:
        for _ in range(40):  # 2,000 datagrams over ~1 s, from one attacker's port
            for _ in range(50):
                data = rng.choice(junk) if rng.random() < 0.7 else rng.randbytes(
                    rng.randrange(1, 300))
                sock.sendto(data, ("127.0.0.1", port))
                sent += 1
            await asyncio.sleep(0.025)
    finally:
        sock.close()
    await asyncio.sleep(0.5)
    [shared] = gw.gateway.peers.info()
    assert shared["unclaimed_datagrams"] >= sent * 0.9, (shared, sent)  # (kernel may drop)
    assert len(lis.pts) - before >= 50  # >= 1 s of the 1.5 s went on arriving
    assert_tone(active(lis.audio()[-48000:]), 440, min_seconds=0.8)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await lis.delete()
    await pub.delete()
