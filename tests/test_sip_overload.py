"""SIP overload (issue 14): new INVITEs above sip.max_setup_rate, or while admission control
refuses, get 503 + Retry-After at once, before any transaction; calls already admitted and
requests in their dialogs are served as usual.

The sans-IO parts (the gate, the transaction layer) run on a stepped clock; the endpoint's
batched UDP reading and the service on real sockets; and sipp offers 4x a lowered rate."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import time
from datetime import datetime
from pathlib import Path

import pytest
from audio_checks import assert_tone
from conftest import need_program
from loop_turns import LoopTurns
from peers.sipp import run_sipp
from sip_phone import Phone, decode, sdp_offer
from stepping import send_tone, until
from test_cpu_budget import Refusing
from test_metrics import scrape, value

from gateway.core.headroom import Admission, AdmissionConfig, Refusal
from gateway.sip.message import Headers, Request, Response, Uri
from gateway.sip.overload import ADMISSION, SETUP_RATE, TRANSACTIONS, SetupGate, Verdict
from gateway.sip.transaction import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    State,
    Timers,
    TransactionLayer,
)
from gateway.sip.udp import BATCH, SLICE, BatchedUdp

ROOT = Path(__file__).resolve().parent.parent
CALL_OR_503 = ROOT / "bench" / "sipp" / "uac_call_or_503.xml"
FLOW = ("UDP", "192.0.2.7", 5060)


def invite(n: int, method: str = "INVITE", to_tag: str | None = None,
           branch: str | None = None) -> Request:
    to = "<sip:room@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
    headers = Headers([
        ("Via", f"SIP/2.0/UDP 192.0.2.7:5060;branch={branch or f'z9hG4bKcall{n}'};rport"),
        ("Via", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKproxy"),
        ("From", f"<sip:phone@192.0.2.7>;tag=from{n}"),
        ("To", to),
        ("Call-ID", f"call-{n}@192.0.2.7"),
        ("CSeq", f"{2 if to_tag else 1} {method}"),
        ("Max-Forwards", "70"),
    ])
    return Request(method, Uri.parse("sip:room@192.0.2.1"), headers)


def ack_of(request: Request) -> Request:
    """§17.1.1.3: the ACK of a non-2xx final: the INVITE's branch, the response's To tag."""
    ack = invite(0, "ACK", branch=request.top_via.branch)
    for name in ("From", "Call-ID"):
        ack.headers.set(name, request.headers.get(name) or "")
    ack.headers.set("CSeq", f"{request.cseq[0]} ACK")
    ack.headers.set("To", (request.headers.get("To") or "") + ";tag=ours")
    return ack


def sent(layer: TransactionLayer) -> list[Response]:
    return [m for m, _ in layer.take_outgoing() if isinstance(m, Response)]


# -- the gate on a stepped clock -------------------------------------------------------
def test_gate_admits_the_rate_and_refuses_the_excess():
    gate = SetupGate(10)
    assert gate.burst == 2  # a tenth of a second's worth, at least two
    admitted = refused = 0
    for i in range(120):  # 40 INVITEs a second for 3 s
        verdict = gate.check(i * 0.025)
        if verdict is None:
            admitted += 1
        else:
            assert verdict == Verdict(SETUP_RATE, 1)
            gate.refuse(("k", i), verdict, i * 0.025)
            refused += 1
    assert admitted == 31 and refused == 89  # 2 (the bucket) + 10/s over 2.975 s
    assert gate.refused == {ADMISSION: 0, SETUP_RATE: 89, TRANSACTIONS: 0}


def test_gate_bursts_a_tenth_of_a_second_and_never_mints_tokens_backwards():
    gate = SetupGate(120)
    assert gate.burst == 12
    assert [gate.check(5.0) is None for _ in range(13)] == [True] * 12 + [False]
    assert gate.check(4.0) is not None  # the clock stepped back: nothing refilled
    assert gate.check(5.0 + 1 / 120) is None  # refilled one


def test_gate_asks_admission_control_first_and_spends_no_token_on_its_refusals():
    gate = SetupGate(1)
    busy: list[int | None] = [5]
    gate.admission = lambda: busy[0]
    assert gate.check(0.0) == Verdict(ADMISSION, 5)
    busy[0] = None
    assert [gate.check(0.0) for _ in range(3)] == [None, None, Verdict(SETUP_RATE, 1)]


def test_the_setup_rate_counts_invites_as_they_arrive_not_as_their_handling_is_paced():
    """Twenty INVITEs read at once whose handling the CPU budget spreads over 200 ms: the
    bucket (12 at 120/s) judges them at their arrival, so the burst's excess is refused
    however slowly it is handled (judged at handling time, all 20 would pass)."""
    layer = TransactionLayer(gate=SetupGate(120))
    admitted = 0
    for i in range(20):
        events = layer.receive(invite(100 + i), FLOW, 1.0 + i * 0.01, arrived=1.0)
        admitted += bool(events)
        layer.take_outgoing()
    assert admitted == 12 and layer.gate.refused[SETUP_RATE] == 8


def test_gate_says_whether_it_would_refuse_without_spending_anything():
    """The UDP reader asks before an INVITE waits for the CPU budget: with the INVITEs
    already waiting counted as claims on the bucket, and admission control's episode."""
    gate = SetupGate(120)
    assert not gate.refusing(5.0, claims=11) and gate.refusing(5.0, claims=12)
    assert [gate.check(5.0) is None for _ in range(12)] == [True] * 12  # nothing was spent
    assert gate.refusing(5.0) and not gate.refusing(5.0 + 1 / 120)
    gate.busy = lambda: True
    assert gate.refusing(9.0)
    assert not SetupGate(0).refusing(0.0, claims=100)


def test_rate_zero_turns_the_rate_limit_off():
    gate = SetupGate(0)
    assert all(gate.check(0.0) is None for _ in range(10000))


def test_an_episode_ends_one_second_after_the_last_refusal():
    gate = SetupGate(10)
    assert not gate.overloaded and gate.episode_deadline() is None
    for t in (0.0, 0.5, 1.2):
        gate.refuse(("k", t), Verdict(SETUP_RATE, 1), t)
    assert gate.episodes == 1 and gate.overloaded
    assert gate.episode_deadline() == pytest.approx(2.2)
    assert gate.end_episode(2.1) is None
    assert gate.end_episode(2.2) == (pytest.approx(1.2), 3)
    assert gate.end_episode(3.0) is None and not gate.overloaded  # reported once
    gate.refuse(("k", 9), Verdict(ADMISSION, 5), 9.0)
    assert gate.episodes == 2 and gate.episode_reason == ADMISSION


def test_refusals_are_remembered_for_64_t1_and_memory_is_bounded():
    gate = SetupGate(10, remember_s=32.0, max_remembered=100)
    gate.refuse(("a",), Verdict(SETUP_RATE, 1), 0.0)
    assert gate.refused_before(("a",), 31.9) == Verdict(SETUP_RATE, 1)
    assert gate.refused_before(("a",), 32.0) is None
    for i in range(1000):
        gate.refuse(("b", i), Verdict(SETUP_RATE, 1), 40.0 + i * 0.001)
    assert len(gate) == 100
    assert gate.refused_before(("b", 999), 41.0) is not None
    assert gate.refused_before(("b", 0), 41.0) is None  # forgotten: the oldest go first
    gate.refuse(("c",), Verdict(SETUP_RATE, 1), 100.0)
    assert len(gate) == 1  # expired ones are dropped as new ones come


# -- the transaction layer with a gate ---------------------------------------------------
def test_a_refused_invite_gets_a_correct_503_and_no_transaction():
    layer = TransactionLayer(gate=SetupGate(1))
    assert isinstance(layer.receive(invite(1), FLOW, 0.0)[0], RequestReceived)
    assert layer.gate.check(0.0) is None  # the bucket's second token
    [trying] = sent(layer)
    assert trying.status == 100
    request = invite(2)
    assert layer.receive(request, FLOW, 0.0) == []
    [busy] = sent(layer)
    assert (busy.status, busy.reason) == (503, "Service Unavailable")
    assert busy.headers.get("Retry-After") == "1"
    assert busy.headers.get_all("Via") == request.headers.get_all("Via")
    for name in ("From", "Call-ID", "CSeq"):
        assert busy.headers.get(name) == request.headers.get(name)
    assert busy.to.tag and busy.to.uri == request.to.uri
    assert layer.transactions == 1  # the admitted INVITE's only
    assert layer.gate.refused[SETUP_RATE] == 1


def test_retransmissions_of_a_refused_invite_get_the_same_503_and_its_ack_is_absorbed():
    layer = TransactionLayer(Timers(t1=0.5), gate=SetupGate(1, remember_s=32.0))
    layer.receive(invite(1), FLOW, 0.0)
    assert layer.gate.check(0.0) is None  # the bucket's second token
    layer.take_outgoing()
    layer.receive(invite(2), FLOW, 0.0)
    [busy] = sent(layer)
    layer.receive(invite(2), FLOW, 0.5)  # our 503 was lost: the phone's Timer A fired
    assert bytes(sent(layer)[0]) == bytes(busy)
    # 2 s later a token is free, but this INVITE was refused: the same answer again
    assert layer.receive(invite(2), FLOW, 2.0) == []
    [again] = sent(layer)
    assert again.status == 503 and bytes(again) == bytes(busy)
    assert layer.gate.retransmissions == 2 and layer.gate.refused[SETUP_RATE] == 1
    assert layer.retransmissions_sent == 2
    assert layer.receive(ack_of(invite(2)), FLOW, 2.1) == []  # not reported to the TU
    assert sent(layer) == [] and layer.gate.acks_absorbed == 1
    assert layer.transactions == 1
    # a fresh INVITE (new branch) once a token is free is admitted
    assert isinstance(layer.receive(invite(3), FLOW, 2.2)[0], RequestReceived)


def test_an_admitted_invites_retransmission_still_reaches_its_transaction():
    layer = TransactionLayer(gate=SetupGate(1))
    [event] = layer.receive(invite(1), FLOW, 0.0)
    layer.receive(invite(2), FLOW, 0.0)
    layer.receive(invite(3), FLOW, 0.0)  # the bucket is empty now
    layer.take_outgoing()
    assert layer.receive(invite(1), FLOW, 0.1) == []  # absorbed by its transaction
    [trying] = sent(layer)
    assert trying.status == 100 and event.tx.state == State.PROCEEDING


def test_in_dialog_requests_pass_the_gate_and_the_transaction_cap():
    """With the table full (and then admission control refusing): re-INVITE, BYE, CANCEL,
    ACK still work; a new INVITE gets 503."""
    gate = SetupGate(1000)
    layer = TransactionLayer(max_transactions=4, gate=gate)
    [ringing] = layer.receive(invite(1), FLOW, 0.0)
    for n in (10, 11, 12):  # the table is full
        layer.receive(invite(n), FLOW, 0.0)
    assert layer.receive(invite(2), FLOW, 0.0) == []
    assert gate.refused == {ADMISSION: 0, SETUP_RATE: 0, TRANSACTIONS: 1}
    [re_invite] = layer.receive(invite(3, to_tag="t3"), FLOW, 0.0)
    assert isinstance(re_invite, RequestReceived)
    [bye] = layer.receive(invite(4, "BYE", to_tag="t4"), FLOW, 0.0)
    assert isinstance(bye, RequestReceived)
    cancel = invite(1, "CANCEL")
    [cancelled] = layer.receive(cancel, FLOW, 0.0)
    assert isinstance(cancelled, CancelReceived) and cancelled.tx is ringing.tx
    ack = invite(3, "ACK", to_tag="t3", branch="z9hG4bKack3")
    assert isinstance(layer.receive(ack, FLOW, 0.0)[0], AckReceived)
    layer.take_outgoing()
    gate.admission = lambda: 5  # admission control refusing too: in-dialog requests pass
    assert isinstance(layer.receive(invite(5, to_tag="t5"), FLOW, 0.0)[0], RequestReceived)
    layer.take_outgoing()
    assert layer.receive(invite(6), FLOW, 0.0) == []
    [busy] = sent(layer)
    assert busy.headers.get("Retry-After") == "5" and gate.refused[ADMISSION] == 1


def test_admission_refusals_at_datagram_read_are_counted_as_sip():
    now = [0.0]
    cpu = [0.0]
    adm = Admission(AdmissionConfig(cpu_limit=0.5, retry_after_s=7), cpu_seconds=lambda: cpu[0],
                    cores=lambda: 1.0, now=lambda: now[0])
    assert adm.refuse_while_refusing("sip") is None
    for _ in range(5):  # a busy process: 90 % of the core
        now[0] += 0.25
        cpu[0] += 0.225
        adm.sample()
    assert adm.admit("webrtc_listen") is not None and adm.refusing
    refusal = adm.refuse_while_refusing("sip")
    assert refusal is not None and refusal.retry_after_s == 7
    assert adm.refused["webrtc_listen"] == 1 and adm.refused["sip"] == 1


# -- the endpoint's UDP socket ---------------------------------------------------------
async def test_udp_reads_up_to_64_datagrams_per_wake_up_and_hands_them_on_in_order():
    handled: list[bytes] = []
    udp = await BatchedUdp.open("127.0.0.1", 0, False, lambda data, *_: handled.append(data))
    loop = asyncio.get_running_loop()
    loop.remove_reader(udp._sock.fileno())  # the test wakes it itself
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for i in range(100):
            client.sendto(b"%d" % i, udp.sockname)
        await asyncio.sleep(0.05)
        udp._read_ready()
        assert len(handled) == BATCH  # one wake-up reads 64 at most
        udp._read_ready()
        udp._read_ready()
    assert handled == [b"%d" % i for i in range(100)]
    loop.add_reader(udp._sock.fileno(), udp._read_ready)
    udp.close()


async def test_invites_the_gate_refuses_are_answered_as_they_are_read_not_paced():
    """While the CPU budget holds request handling back, an INVITE the gate would refuse
    (its bucket empty, counting the INVITEs already waiting) is handled at once: its 503
    must come before the phone retransmits. Other requests keep waiting, in order."""
    handled: list[bytes] = []
    budget = Refusing()
    refusing_from = [2]  # the bucket holds two INVITEs
    udp = await BatchedUdp.open(
        "127.0.0.1", 0, False, lambda data, *_: handled.append(data), budget,
        urgent=lambda _now, waiting: waiting >= refusing_from[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for data in (b"OPTIONS 1", b"INVITE 1", b"INVITE 2", b"INVITE 3", b"OPTIONS 2"):
            client.sendto(data, udp.sockname)
        await until(lambda: udp.backlog == 4)
        assert handled == [b"INVITE 3"] and udp.invites_waiting == 2
        budget.open = True
        await until(lambda: len(handled) == 5)
    assert udp.invites_waiting == 0
    udp.close()
    assert handled == [b"INVITE 3", b"OPTIONS 1", b"INVITE 1", b"INVITE 2", b"OPTIONS 2"]


async def test_a_slow_batch_is_handled_over_several_turns_and_timers_run_between():
    """A flood whose handling outlasts the turn's budget: the rest waits a turn, so the
    media clock's timer runs between slices."""
    loop = LoopTurns()
    handled: list[tuple[bytes, int]] = []

    def slow(data: bytes, *_: object) -> None:  # ~0.6 ms a slice: two spend a turn's budget
        end = time.perf_counter() + 0.0006 / SLICE
        while time.perf_counter() < end:
            pass
        handled.append((data, loop.turn))

    udp = await BatchedUdp.open("127.0.0.1", 0, False, slow)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for i in range(64):
            client.sendto(b"%d" % i, udp.sockname)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if len(handled) == 64:
                break
    loop.stop()
    udp.close()
    assert [d for d, _ in handled] == [b"%d" % i for i in range(64)]
    turns = sorted({t for _, t in handled})
    assert len(turns) >= 64 // SLICE // 2  # at most two slices (one budget) a turn
    loop.assert_timer_ran_between(turns)


async def test_a_cancel_read_in_the_same_batch_as_its_invite_ends_it_with_487(
        gateway_factory):
    """The INVITE's answering task has not run when the CANCEL is handled; cancelling a
    task that never started skips its code, so the INVITE must still get its 487."""
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    sip = gw.gateway.sip
    phone = Phone(sip.port)
    branch = "z9hG4bKsamebatch"
    invite_bytes = phone.request("INVITE", "room", sdp_offer(phone.rtp_port), branch=branch)
    cancel_bytes = phone.request("CANCEL", "room", cseq=1, branch=branch)
    phone.sip.sendto(invite_bytes, phone.gateway)  # both queued before the loop wakes
    phone.sip.sendto(cancel_bytes, phone.gateway)
    finals = {}
    while len(finals) < 2:
        response = await phone.final(timeout=3.0)
        finals[response.cseq[1]] = response.status
    assert finals == {"INVITE": 487, "CANCEL": 200}
    await asyncio.sleep(0.05)
    assert sip.calls == {} and sip.ports.in_use == set()
    phone.sip.close()
    phone.rtp.close()


async def test_while_admission_control_refuses_new_invites_get_503_at_once(gateway_factory):
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    sip = gw.gateway.sip
    assert sip.refuse_early == gw.gateway.admission.refuse_while_refusing  # wired
    asked: list[str] = []

    def refusing(kind: str) -> Refusal:
        asked.append(kind)
        return Refusal("busy", 7)

    sip.refuse_early = refusing
    phone = Phone(sip.port)
    response = await phone.invite("room")
    assert (response.status, response.headers.get("Retry-After")) == (503, "7")
    assert [m.status for m in phone.messages] == [503]  # no 100 Trying: no transaction
    assert asked == ["sip"] and sip.endpoint.layer.transactions == 0
    assert sip.info().invites_refused[ADMISSION] == 1 and sip.info().overloaded
    sip.refuse_early = gw.gateway.admission.refuse_while_refusing  # admitting again
    phone.call_id += "-2"
    response = await phone.invite("room")
    assert response.status == 200
    await phone.close()


# -- sipp at 4x the allowed rate ------------------------------------------------------
async def collect_by_ssrc(sock: socket.socket, stop: asyncio.Event) -> dict[int, list]:
    """RTP packets per SSRC until ``stop`` (every call's SDP names this one port)."""
    loop = asyncio.get_running_loop()
    calls: dict[int, list] = {}
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.2)
        except TimeoutError:
            continue
        if len(data) < 12:
            continue
        if 192 <= data[1] <= 223:
            continue  # RTCP
        _, pt, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
        calls.setdefault(ssrc, []).append((pt & 0x7F, seq, ts, data[12:]))
    return calls


async def test_sipp_at_four_times_the_setup_rate_admitted_calls_complete_the_rest_get_503(
        gateway_factory, caplog):
    need_program("sipp")
    caplog.set_level(logging.INFO, logger="gateway.sip.endpoint")
    gw = await gateway_factory(
        sip={"port": 0, "max_setup_rate": 10, "rate_limit_per_s": 1000,
             "rate_limit_burst": 1000},
        streams={"declared": ["room"]})
    sip = gw.gateway.sip
    tone = send_tone(gw, "room", 440)
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    media.setblocking(False)
    media.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    stop = asyncio.Event()
    collector = asyncio.create_task(collect_by_ssrc(media, stop))
    offered = 160  # 4 s at 40 calls/s
    result = await run_sipp(CALL_OR_503, f"127.0.0.1:{sip.port}", calls=offered, rate=40,
                            keys={"rtp_port": media.getsockname()[1], "hold_ms": 1000},
                            timeout=40, extra=["-l", "200"])
    await asyncio.sleep(0.3)
    stop.set()
    by_ssrc = await collector
    media.close()
    gw.gateway.registry.get("room").detach(tone)
    assert result.ok, result.describe()  # every call ended as the scenario expects: 0 failed

    invites = result.responses("INVITE")
    ok = [m for m in invites if m.status == 200]
    busy = [m for m in invites if m.status == 503]
    admitted = {m.header("Call-ID") for m in ok}
    refused = {m.header("Call-ID") for m in busy}
    assert len(admitted) + len(refused) == offered and not admitted & refused
    # 10/s over the ~4 s the offers took, plus the bucket of 2 (~42 in all)
    sent_at = [datetime.strptime(m.timestamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
               for m in result.messages("sent") if m.first_line.startswith("INVITE ")]
    expected = 2 + 10 * (max(sent_at) - min(sent_at))
    assert 0.7 * expected <= len(admitted) <= expected + 2, (len(admitted), expected)
    assert all(re.fullmatch(r"\d+", m.header("Retry-After") or "") for m in busy)
    assert sip.endpoint.gate.refused[SETUP_RATE] == len(refused)
    assert sip.stats["calls_total"] == len(admitted)

    byes = [m for m in result.responses("BYE")]
    assert sorted(m.header("Call-ID") for m in byes if m.status == 200) == sorted(admitted)
    assert result.errors.strip() == "", result.errors

    # every admitted call heard the stream for its second; the refused got nothing
    assert len(by_ssrc) == len(admitted)
    for packets in by_ssrc.values():
        # 1 s of 20 ms packets from the ACK on; at least half of them on a loaded machine,
        # and the tone in what follows the first 10 (0.2 s)
        assert len(packets) >= 25, len(packets)
        assert_tone(decode(packets)[1600:], 440, rate=8000, min_seconds=0.3)

    await asyncio.sleep(1.2)  # the episode ends 1 s after the last refusal
    assert caplog.text.count("sip overloaded") == 1, caplog.text  # once per episode
    assert "sip overload over" in caplog.text
    assert sip.calls == {}
    info = sip.info()
    assert info.invites_refused[SETUP_RATE] == len(refused) and info.overload_episodes == 1
    samples = await scrape(gw)
    assert value(samples, "gateway_sip_invites_refused_total", reason=SETUP_RATE) == len(refused)
    assert value(samples, "gateway_sip_overload_episodes_total") == 1
    assert value(samples, "gateway_sip_overloaded") == 0
