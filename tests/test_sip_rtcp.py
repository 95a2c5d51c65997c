"""RTCP with a SIP phone (scripted, on a stepped clock): the gateway's sender reports to
the phone carry a report block about the phone's RTP, and the phone's receiver reports
reach the call's API entry and turn on in-band FEC in the Opus encoder it hears."""

from __future__ import annotations

import asyncio
import random
import socket

import numpy as np
from opus_fec import recovery_snr_db, vowel
from sip_phone import Phone, sdp_port, tone_ulaw
from stepping import send_tone
from test_rtp_output import api

from gateway.rtp import rtcp
from gateway.rtp.rtcp import ReportBlock, SenderReport, parse_compound

SIGNAL = vowel(12.0)


def frames(index: int) -> np.ndarray:
    start = (index * 960) % (len(SIGNAL) - 960)
    return SIGNAL[start:start + 960]


def drain_rtcp(sock: socket.socket) -> list:
    found = []
    while True:
        try:
            found += parse_compound(sock.recv(2048))
        except BlockingIOError:
            return found


async def test_sip_phone_and_gateway_exchange_reports(gateway_factory):
    gw = await gateway_factory(stepped=True, sip={"port": 0}, streams={"declared": ["room"]})
    send_tone(gw, "room", frames)
    phone = Phone(gw.gateway.sip.port)
    rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_sock.bind(("127.0.0.1", 0))
    rtcp_sock.setblocking(False)
    response = await phone.invite("room", formats="111")
    assert response.status == 200 and b"opus/48000" in response.body
    port = sdp_port(response)
    [call] = gw.gateway.sip.calls.values()
    first = await phone.heard(gw, 20)
    assert first and call.output is not None

    # the phone's RTP (its SSRC 0x1234), 8 of 60 packets dropped, and an RTCP SR first
    rtcp_sock.sendto(rtcp.sender_report(ssrc=0x1234, ntp_time=1.7e9, rtp_timestamp=0,
                                        packet_count=0, octet_count=0), ("127.0.0.1", port + 1))
    rng = random.Random(9)
    dropped = set(rng.sample(range(1, 59), 8))
    payloads = [p for i, p in enumerate(tone_ulaw(440, 1.2)) if i not in dropped]
    seqs = [i for i in range(60) if i not in dropped]
    for seq, payload in zip(seqs, payloads, strict=True):
        await phone.send_rtp(("127.0.0.1", port), [payload], pt=0, ptime=0, seq=100 + seq,
                             timestamp=160 * seq, marker_first=False)
    await phone.heard(gw, 260)  # an SR every 5 s (250 packets)
    reports = [p for p in drain_rtcp(rtcp_sock) if isinstance(p, SenderReport)]
    assert reports, "no sender report reached the phone's RTCP address"
    [block] = reports[-1].reports
    assert reports[-1].ssrc == call.output.ssrc
    assert block.ssrc == 0x1234 and block.cumulative_lost == len(dropped)
    assert block.highest_seq == 159 and block.lsr != 0

    # the phone says it lost 10 % of what it heard: FEC goes on in its encoder
    before = await phone.heard(gw, 100)
    rr = rtcp.receiver_report(ssrc=0x1234, reports=[ReportBlock(
        call.output.ssrc, fraction_lost=26, cumulative_lost=12, highest_seq=1000, jitter=480)])
    rtcp_sock.sendto(rr, ("127.0.0.1", port + 1))
    await phone.sync()
    _, outputs = await api(gw, "GET", "/api/v1/streams/room/outputs")
    [info] = [o for o in outputs["outputs"] if o["type"] == "sip"]
    assert info["reception"]["packets_lost"] == 12
    assert info["reception"]["fraction_lost"] == round(26 / 256, 4)
    assert info["reception"]["jitter_ms"] == 10.0  # 480 at 48 kHz
    _, stream = await api(gw, "GET", "/api/v1/streams/room")
    assert stream["encoders"][0]["expected_loss_percent"] == 10
    after = await phone.heard(gw, 100)
    assert recovery_snr_db([p[3] for p in before]) < 5
    assert recovery_snr_db([p[3] for p in after]) > 12
    rtcp_sock.close()
    await phone.close()


async def test_baresip_receiver_reports_reach_the_calls_reception(gateway_factory, tmp_path):
    """A real phone: baresip's RTCP reports about the stream it hears show up in the call's
    API entry (no loss on loopback), and it gets the gateway's SRs about its own RTP."""
    from conftest import need_program
    from test_rtp_output import publish_tone
    from test_sip_baresip import phone

    need_program("baresip")
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    pub = await publish_tone(gw, "room", 440)
    seen = []
    async with phone(tmp_path, "reporter", 1000) as bs:
        dial = asyncio.create_task(bs.dial(f"sip:room@127.0.0.1:{gw.gateway.sip.port}",
                                           seconds=9))
        while not dial.done():
            for call in list(gw.gateway.sip.calls.values()):
                info = call.info()
                if info.reception is not None:
                    seen.append((info.reception, call.media.reception.reports))
            await asyncio.sleep(0.2)
        result = await dial
    assert result.established, result.describe()
    assert seen, "baresip sent no receiver report about the stream"
    reception, blocks_sent = seen[-1]
    assert reception.reports >= 1 and reception.packets_lost == 0
    assert reception.fraction_lost == 0
    if reception.reports >= 2:  # the first may come before any SR of ours reached baresip
        assert reception.rtt_ms is not None, seen
    assert blocks_sent >= 1  # our SRs carried a block about baresip's RTP
    await pub.delete()
