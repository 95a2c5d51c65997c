"""The gateway must not be a way to send RTP at somebody else, and an INVITE it cannot
use must get a final response and leave nothing behind (ports, tasks, listeners).

A scripted phone on real loopback sockets; the "victim" is another socket the test
listens on. Timer T1 is shortened (sip.t1_ms) so Timer H (64*T1) comes in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from conftest import need_program
from peers.sipp import start_sipp
from sip_phone import Phone, sdp_offer, sdp_port
from stepping import RtpSink, until


async def start(gateway_factory, stepped: bool = False, **sip):
    """A gateway with SIP; ``stepped``: on a stepped media clock (``phone.heard(gw, n)``)."""
    return await gateway_factory(stepped=stepped, sip={"port": 0, **sip},
                                 streams={"declared": ["room", "quiet"]})


def udp_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def victim_pair() -> tuple[socket.socket, socket.socket]:
    """Sockets on an RTP port and the RTCP port above it: somebody else's, never sending."""
    for _ in range(20):
        rtp = udp_socket()
        try:
            return rtp, udp_socket(rtp.getsockname()[1] + 1)
        except OSError:
            rtp.close()
    raise RuntimeError("no free port pair")


async def count_datagrams(socks: list[socket.socket], seconds: float) -> int:
    """Datagrams (RTP, RTCP, anything) arriving on ``socks`` within ``seconds``."""
    loop = asyncio.get_running_loop()
    count = 0

    async def drain(sock: socket.socket) -> None:
        nonlocal count
        while True:
            await loop.sock_recv(sock, 4096)
            count += 1

    tasks = [asyncio.ensure_future(drain(s)) for s in socks]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    return count


async def assert_released(sip) -> None:
    """No call, no RTP port, no answering task and no RTP output left."""
    for _ in range(50):
        if not sip.calls and not sip.ports.in_use and not sip._answering:
            break
        await asyncio.sleep(0.02)
    assert sip.calls == {}
    assert sip.ports.in_use == set()
    assert sip._answering == {}
    assert not [o for o in sip.outputs.outputs.values() if o.kind == "sip"]
    for stream in sip.registry.streams.values():
        assert not [x for x in stream.outputs if getattr(x, "kind", "") == "sip"]


@pytest.mark.parametrize("address, port, warning", [
    ("phone.example.org", None, "301"),  # a hostname: no DNS lookups while answering
    ("255.255.255.255", None, "301"),  # limited broadcast
    ("127.255.255.255", None, "301"),  # the broadcast of lo's subnet, known to the kernel
    ("224.0.0.1", None, "330"),  # multicast
    ("ff02::1", None, "330"),
    ("0.0.0.0", None, "301"),  # unspecified: legacy hold, not a first offer
    ("::", None, "301"),
    ("::1", None, "301"),  # IPv6 while the gateway's RTP sockets are IPv4
    ("127.0.0.1", 0, "304"),  # port 0: the audio stream is refused
])
async def test_offers_naming_unusable_media_addresses_get_488_saying_why(
        gateway_factory, address, port, warning):
    gw = await start(gateway_factory, stepped=True)
    phone = Phone(gw.gateway.sip.port)
    body = sdp_offer(phone.rtp_port if port is None else port, address=address)
    await phone.send(phone.request("INVITE", "quiet", body))
    response = await phone.final(timeout=3.0)
    assert response.status == 488, response
    assert (response.headers.get("Warning") or "").startswith(f"{warning} "), response
    await phone.send(phone.request("ACK", "quiet", cseq=1))
    await assert_released(gw.gateway.sip)
    assert await phone.heard(gw, 15) == []
    await phone.close()


async def test_an_offer_with_a_payload_type_over_127_gets_488(gateway_factory):
    """RTP payload types are 7 bits: PCMU offered as 999 once got a 200 and then broke
    the packets of every call and output on the stream."""
    gw = await start(gateway_factory, stepped=True)
    phone = Phone(gw.gateway.sip.port)
    body = sdp_offer(phone.rtp_port, formats="0").replace("RTP/AVP 0", "RTP/AVP 999")
    body = body.replace("a=rtpmap:0 ", "a=rtpmap:999 ")
    await phone.send(phone.request("INVITE", "quiet", body))
    response = await phone.final(timeout=3.0)
    assert response.status == 488, response
    await phone.send(phone.request("ACK", "quiet", cseq=1))
    await assert_released(gw.gateway.sip)
    await phone.close()


async def test_an_unacked_invite_sends_nothing_to_the_address_it_names_and_ends_at_timer_h(
        gateway_factory, caplog):
    t1 = 0.01  # Timer H = 64*T1 = 0.64 s
    gw = await start(gateway_factory, t1_ms=int(t1 * 1000))
    sip = gw.gateway.sip
    phone = Phone(sip.port)
    victim, victim_rtcp = victim_pair()  # somebody else: the SDP names it, it never asked
    body = sdp_offer(victim.getsockname()[1])
    await phone.send(phone.request("INVITE", "quiet", body))
    ok = await phone.final()
    assert ok.status == 200
    caplog.set_level(logging.INFO, "gateway.sip.service")
    # not one packet (RTP, nor an RTCP BYE at the end) without an ACK, which never comes
    assert await count_datagrams([victim, victim_rtcp], 64 * t1 + 0.5) == 0
    await assert_released(sip)
    [ended] = [c for c in sip.ended if c.peer.startswith("sip:phone@")]
    assert "ACK" in ended.end_reason
    assert any("no ACK" in r.getMessage() and "0 packets sent" in r.getMessage()
               for r in caplog.records)
    bye = await phone.expect("BYE", timeout=2.0)  # the gateway hangs up the dialog it made
    assert bye.call_id == phone.call_id
    victim.close()
    victim_rtcp.close()
    await phone.close()


async def test_the_ack_starts_the_media(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    phone = Phone(gw.gateway.sip.port)
    await phone.send(phone.request("INVITE", "quiet", sdp_offer(phone.rtp_port)))
    ok = await phone.final()
    assert ok.status == 200
    assert await phone.heard(gw, 20) == []
    phone.remote_tag = ok.to.tag
    await phone.ack("quiet", ok)
    assert len(await phone.heard(gw, 25)) == 25  # from the first tick after the ACK
    await phone.close()


async def test_before_the_ack_media_goes_only_where_the_phones_rtp_comes_from(gateway_factory):
    gw = await start(gateway_factory, stepped=True, t1_ms=2000)  # the ACK is late, not missing
    phone = Phone(gw.gateway.sip.port)
    victim = RtpSink(udp_socket())
    await phone.send(phone.request("INVITE", "quiet", sdp_offer(victim.port)))
    ok = await phone.final()
    assert ok.status == 200
    [call] = gw.gateway.sip.calls.values()
    assert await phone.heard(gw, 10) == []
    rtp = bytes([0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7]) + bytes(160)
    await asyncio.get_running_loop().sock_sendto(phone.rtp, rtp, ("127.0.0.1", sdp_port(ok)))
    await until(lambda: call.media.packets == 1)
    heard = await phone.heard(gw, 25)  # latched: the phone's own RTP address
    assert len(heard) == 25
    assert victim.drain() == [] and victim.rtcp == []
    phone.remote_tag = ok.to.tag  # hang up the still unacknowledged call
    victim.close()
    await phone.close()


async def test_reinvite_with_unspecified_address_is_hold_and_unusable_reoffers_change_nothing(
        gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    phone = Phone(gw.gateway.sip.port)
    assert (await phone.invite("quiet")).status == 200
    assert len(await phone.heard(gw, 20)) == 20
    held = sdp_offer(phone.rtp_port, address="0.0.0.0")  # RFC 2543 hold
    await phone.send(phone.request("INVITE", "quiet", held, in_dialog=True))
    response = await phone.final()
    assert response.status == 200
    await phone.ack("quiet", response)
    assert await phone.heard(gw, 20) == []
    [call] = gw.gateway.sip.calls.values()
    assert call.on_hold
    for bad in ("phone.example.org", "224.0.0.1", "255.255.255.255"):
        await phone.send(phone.request("INVITE", "quiet", sdp_offer(phone.rtp_port, address=bad),
                                       in_dialog=True))
        refused = await phone.final()
        assert refused.status == 488 and refused.headers.get("Warning"), refused
        await phone.ack("quiet", refused)
    assert (await phone.reinvite("quiet")).status == 200  # resume
    assert len(await phone.heard(gw, 25)) == 25
    assert list(gw.gateway.sip.calls.values()) == [call]
    await phone.close()


@pytest.mark.parametrize("where", [
    "gateway.sip.call.SipCall.start_sending",  # before the call is listed
    "gateway.core.outputs.OutputRegistry.add",  # after it is listed, before its 200
])
async def test_any_failure_while_answering_gets_a_final_response_and_releases_the_call(
        gateway_factory, monkeypatch, where):
    gw = await start(gateway_factory)
    sip = gw.gateway.sip

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated fault after the ports were opened")

    monkeypatch.setattr(where, broken)
    phone = Phone(sip.port)
    await phone.send(phone.request("INVITE", "quiet", sdp_offer(phone.rtp_port)))
    response = await phone.final(timeout=3.0)
    assert response.status == 500
    await assert_released(sip)
    monkeypatch.undo()
    working = Phone(sip.port)
    assert (await working.invite("quiet")).status == 200  # the service still works
    await phone.close()
    await working.close()


async def test_cancel_while_the_gateway_rings_releases_the_ports(gateway_factory):
    gw = await start(gateway_factory, ring_ms=2000)
    sip = gw.gateway.sip
    phone = Phone(sip.port)
    invite = phone.request("INVITE", "quiet", sdp_offer(phone.rtp_port), branch="z9hG4bKring1")
    await phone.send(invite)
    ringing = await phone.receive()
    while not (hasattr(ringing, "status") and ringing.status == 180):
        ringing = await phone.receive()
    assert sip.ports.in_use
    await phone.send(phone.request("CANCEL", "quiet", cseq=1, branch="z9hG4bKring1"))
    statuses = set()
    while 487 not in statuses:
        message = await phone.receive()
        statuses.add(getattr(message, "status", None))
    assert 200 in statuses  # the CANCEL's own 200
    await assert_released(sip)
    await phone.close()


async def test_sipp_invite_that_never_acks_sends_no_media_and_is_torn_down(gateway_factory):
    need_program("sipp")
    gw = await start(gateway_factory, t1_ms=10)
    sip = gw.gateway.sip
    victim, victim_rtcp = victim_pair()
    sipp = start_sipp("uac_no_ack.xml", f"127.0.0.1:{sip.port}", service="quiet",
                      keys={"rtp_port": victim.getsockname()[1]}, timeout=15)
    arrived = await count_datagrams([victim, victim_rtcp], 64 * 0.01 + 1.0)
    result = await sipp
    assert result.ok, result.describe()
    assert arrived == 0
    await assert_released(sip)
    assert result.messages("received")[-1].first_line.startswith("BYE")
    victim.close()
    victim_rtcp.close()
