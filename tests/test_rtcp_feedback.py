"""Receiver reports back to RTP senders: a scripted sender with a seeded drop, and
GStreamer's rtpbin with RTCP on port + 1 (its reports decoded by tshark)."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

import pytest
from conftest import free_port, need_program
from stepping import until
from test_rtp_input import add_input, pcmu_tone

from gateway.ingress import rtp as rtp_ingress
from gateway.rtp import rtcp
from gateway.rtp.rtcp import ReceiverReport, ntp_from_unix, ntp_middle32, parse_compound


@pytest.fixture
def fast_reports(monkeypatch):
    """Receiver reports every ~0.2 s instead of RFC 3550's 5 s."""
    monkeypatch.setattr(rtp_ingress, "REPORT_INTERVAL_S", 0.2)


def rtp(seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def sr(ssrc: int, wall: float, ts: int, packets: int) -> bytes:
    return rtcp.sender_report(ssrc=ssrc, ntp_time=wall, rtp_timestamp=ts,
                              packet_count=packets, octet_count=packets * 160, cname="tx")


async def receive_reports(sock: socket.socket, timeout: float) -> list[ReceiverReport]:
    loop = asyncio.get_running_loop()
    found = []
    end = loop.time() + timeout
    while loop.time() < end:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            await asyncio.sleep(0.02)
            continue
        found += [p for p in parse_compound(data) if isinstance(p, ReceiverReport)]
    return found


@pytest.mark.parametrize("mux", [True, False], ids=["rtcp-mux", "port+1"])
async def test_sender_with_rtcp_gets_receiver_reports_with_its_loss(gateway, fast_reports, mux):
    """Packets 65500.. (the sequence wraps) with a seeded 10 % drop, an SR first: the RRs
    that come back name our SSRC, count exactly the dropped packets, carry the extended
    highest sequence (cycles included) and echo the SR (LSR) with a plausible DLSR."""
    port = free_port(socket.SOCK_DGRAM) & ~1
    body = {"type": "rtp", "port": port, "codec": "PCMU"}
    if not mux:
        body["rtcp_port"] = True
    created = await add_input(gateway, "fb", **body)
    rtp_input = gateway.gateway.rtp_inputs[created["id"]]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # RTP, and RTCP with mux
    sock.bind(("127.0.0.1", 0))
    rtcp_sock = sock if mux else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_sock.bind(("127.0.0.1", 0)) if not mux else None
    rtcp_sock.setblocking(False)
    rtcp_dest = ("127.0.0.1", port if mux else port + 1)
    ssrc, rng = 0x5EED, random.Random(15)
    sent_wall = time.time()
    rtcp_sock.sendto(sr(ssrc, sent_wall, 0, 0), rtcp_dest)
    payloads = pcmu_tone(440, 2.0)
    dropped = 0
    for i, payload in enumerate(payloads):
        if i and rng.random() < 0.10:
            dropped += 1
            continue
        sock.sendto(rtp(65500 + i, i * 160, ssrc, payload), ("127.0.0.1", port))
        if i % 10 == 0:
            await asyncio.sleep(0.02)
    await until(lambda: rtp_input.playout.reception is not None
                and rtp_input.playout.reception.received == len(payloads) - dropped)
    reports = await receive_reports(rtcp_sock, 0.8)
    assert reports, "no receiver report came back"
    block = reports[-1].reports[0]
    assert reports[-1].ssrc == rtp_input.ssrc and block.ssrc == ssrc
    assert block.cumulative_lost == dropped > 10
    assert block.highest_seq == 65500 + len(payloads) - 1  # 65536 + wrapped sequence
    assert block.lsr == ntp_middle32(ntp_from_unix(sent_wall))
    assert 0 < block.dlsr / 65536 < time.time() - sent_wall + 0.05
    fractions = [r.reports[0].fraction_lost for r in reports if r.reports]
    assert max(fractions) > 0  # the interval(s) with the drops said so
    _, info = await api_input(gateway, created["id"])
    assert info["receiver_reports"] >= len(reports) and info["rtcp_peer"]
    assert info["rtcp_port"] == (None if mux else port + 1)
    sock.close()
    if not mux:
        rtcp_sock.close()


async def api_input(gw, input_id: str):
    from test_rtp_output import api

    return await api(gw, "GET", f"/api/v1/streams/fb/inputs/{input_id}")


async def test_sender_without_rtcp_gets_no_reports(gateway, fast_reports):
    port = free_port(socket.SOCK_DGRAM)
    created = await add_input(gateway, "quiet", type="rtp", port=port, codec="PCMU")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    for i, payload in enumerate(pcmu_tone(440, 0.5)):
        sock.sendto(rtp(i, i * 160, 7, payload), ("127.0.0.1", port))
    assert await receive_reports(sock, 0.6) == []
    assert gateway.gateway.rtp_inputs[created["id"]].playout.reports_sent == 0
    sock.close()


async def test_gstreamer_sender_gets_receiver_reports_on_its_rtcp_port(gateway, fast_reports,
                                                                      tmp_path):
    """rtpbin sends PCMU with RTCP (SR) to port + 1, 10 % of its packets dropped by an
    ``identity`` before it: tshark decodes the gateway's RRs to GStreamer's RTCP port,
    and their cumulative loss is what the gateway's own input counted."""
    need_program("gst-launch-1.0", "tshark")
    port = free_port(socket.SOCK_DGRAM) & ~1
    created = await add_input(gateway, "gst-rtcp", type="rtp", port=port, codec="PCMU",
                              rtcp_port=True)
    rtp_input = gateway.gateway.rtp_inputs[created["id"]]
    capture = tmp_path / "rtcp.pcap"
    tshark = await asyncio.create_subprocess_exec(
        "tshark", "-q", "-i", "lo", "-f", f"udp src port {port + 1}", "-w", str(capture),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    # tshark says "Capturing on 'Loopback: lo'" once it listens
    await asyncio.wait_for(tshark.stderr.readline(), 20)
    gst = await asyncio.create_subprocess_exec(
        "gst-launch-1.0", "-q", "rtpbin", "name=rb",
        "audiotestsrc", "freq=500", "is-live=true", "num-buffers=200", "samplesperbuffer=160",
        "!", "audio/x-raw,rate=8000,channels=1", "!", "mulawenc", "!", "rtppcmupay", "pt=0",
        "!", "identity", "drop-probability=0.1", "!", "rb.send_rtp_sink_0",
        "rb.send_rtp_src_0", "!", "udpsink", "host=127.0.0.1", f"port={port}",
        "rb.send_rtcp_src_0", "!", "udpsink", "host=127.0.0.1", f"port={port + 1}",
        "sync=false", "async=false",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:  # 200 packets of 20 ms: 4 s
        _, err = await asyncio.wait_for(gst.communicate(), 10)
        assert gst.returncode == 0, err.decode()
    except TimeoutError:
        # rtpbin now and then never gets past EOS (1 run in 3 here); by then it has sent
        # every packet (the last few of 200 could be dropped by identity, not 10 in a row)
        gst.kill()
        await gst.wait()
        sent = rtp_input.playout.reception
        assert sent is not None and sent.expected >= 190, "gst stopped early"
    reception = rtp_input.playout.reception
    assert reception is not None and reception.lost > 5, "identity dropped nothing?"
    await asyncio.sleep(1.0)  # a report after the last packet
    tshark.terminate()
    await tshark.wait()
    out = await asyncio.create_subprocess_exec(
        "tshark", "-r", str(capture), "-d", f"udp.port=={port + 1},rtcp", "-Y", "rtcp.pt==201",
        "-T", "fields", "-e", "udp.dstport", "-e", "rtcp.ssrc.identifier",
        "-e", "rtcp.ssrc.fraction", "-e", "rtcp.ssrc.cum_nr", "-e", "rtcp.ssrc.high_seq",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    text, err = await out.communicate()
    rows = [line.split("\t") for line in text.decode().splitlines() if line.strip()]
    assert rows, f"tshark saw no receiver report: {err.decode()}"
    source = rtp_input.rtcp_peer[1]
    assert {int(r[0]) for r in rows} == {source[1]}  # back to rtpbin's RTCP socket
    last = rows[-1]
    assert int(last[1].split(",")[0], 16) == reception.ssrc  # then the SDES chunk's (ours)
    assert int(last[3]) == reception.cumulative_lost > 5
    assert int(last[4]) == reception.extended_highest_sequence
    assert any(int(r[2]) > 0 for r in rows)
