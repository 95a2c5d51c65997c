"""Property-based fuzzing of the running SIP service, not only of its parser.

Random sequences of INVITE, re-INVITE, ACK, BYE, CANCEL and RTP, with random SDP (good,
malformed, host names, broadcast, multicast, port 0, no c=, odd codecs), go over real UDP
on loopback to a SipService. Whatever arrives:

- every request but ACK gets a final response, INVITEs above all;
- a socket that an offer names but that never sends (somebody else) receives no RTP
  unless the phone ACKed a call that named it;
- once the calls are hung up (BYE) or timed out (64*T1, T1 shortened), no call, RTP
  port, output, listener, sender slot or task is left.

Each example runs in its own event loop, so a task left over is seen exactly. The
examples are fixed (derandomized) so CI is repeatable; set GATEWAY_FUZZ_EXPLORE=1 to
draw new ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from gateway.config import SipConfig
from gateway.core.registry import StreamRegistry
from gateway.egress.rtp import RtpOutputs
from gateway.sip.message import Request, SipParseError, parse_message
from gateway.sip.service import SipService

EXAMPLES = int(os.environ.get("GATEWAY_SIP_FUZZ_EXAMPLES", "100"))  # ~6 s
T1 = 0.002  # s: Timer H/L (64*T1) in 0.128 s

# -- SDP ---------------------------------------------------------------------------------
#: Where RTP must not go (or cannot): none of these may get a 2xx to an initial INVITE.
BAD_ADDRESSES = ["phone.example.org", "localhost", "224.0.0.1", "239.255.255.250",
                 "255.255.255.255", "127.255.255.255", "0.0.0.0", "::", "::1", "ff02::1",
                 "::ffff:255.255.255.255", "999.1.1.1", ""]
HOLD = ("0.0.0.0", "::")  # fine in a re-INVITE: the old hold
RTPMAPS = ["0 PCMU/8000", "8 PCMA/8000", "9 G722/8000", "101 telephone-event/8000",
           "111 opus/48000/2", "96 L16/16000", "97 AMR/8000", "18 G729/8000", "13 CN/8000",
           "98 PCMU/notarate", "99 weird", "100 telephone-event/48000", "300 PCMU/8000"]


@dataclass
class Offer:
    """An SDP body drawn by hypothesis; the ports become real ones when it is written."""

    address: str
    port: str  # "own": the phone's RTP socket, "victim": a socket that never sends; or a number
    formats: list[str]
    rtpmaps: list[str]
    direction: str | None
    where_c: str  # "session", "media", "both", "none"
    ptime: str | None
    garbage: str  # appended verbatim
    truncate: int | None  # cut the body at this many characters

    def text(self, own: int, victim: int) -> str:
        port = {"own": str(own), "victim": str(victim)}.get(self.port, self.port)
        net = "IP6" if ":" in self.address else "IP4"
        conn = f"c=IN {net} {self.address}"
        lines = ["v=0", "o=fuzz 1 1 IN IP4 127.0.0.1", "s=-"]
        if self.where_c in ("session", "both"):
            lines.append(conn)
        lines += ["t=0 0", f"m=audio {port} RTP/AVP {' '.join(self.formats)}"]
        if self.where_c in ("media", "both"):
            lines.append(conn)
        lines += [f"a=rtpmap:{m}" for m in self.rtpmaps]
        if self.ptime is not None:
            lines.append(f"a=ptime:{self.ptime}")
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        body = "\r\n".join(lines) + "\r\n" + self.garbage
        return body[: self.truncate] if self.truncate is not None else body


GOOD = dict(
    address=st.just("127.0.0.1"),
    port=st.sampled_from(["own", "own", "victim"]),
    formats=st.lists(st.sampled_from(["0", "8", "9", "101", "111"]), min_size=1, max_size=4,
                     unique=True),
    rtpmaps=st.lists(st.sampled_from(RTPMAPS[:5]), max_size=5, unique=True),
    direction=st.sampled_from([None, "sendrecv", "sendrecv", "sendonly", "recvonly", "inactive"]),
    where_c=st.sampled_from(["session", "media", "both"]),
    ptime=st.sampled_from([None, "20", "30"]),
    garbage=st.just(""),
    truncate=st.none(),
)
WILD = dict(
    address=st.sampled_from(BAD_ADDRESSES),
    port=st.sampled_from(["0", "65535", "70000", "-1", "x", "4000/2"]),
    formats=st.lists(st.sampled_from(["0", "8", "18", "96", "97", "101", "111", "13", "127",
                                      "3", "x"]), max_size=5),
    rtpmaps=st.lists(st.sampled_from(RTPMAPS), max_size=5),
    direction=st.sampled_from(["sendrecv", "inactive", "bogus"]),
    where_c=st.sampled_from(["none"]),
    ptime=st.sampled_from(["0", "1000", "x", "-20"]),
    garbage=st.sampled_from(["m=video 9 RTP/AVP 96\r\n", "a=rtpmap:\r\n", "c=IN IP4\r\n",
                             "\x00\xff", "m=audio 5 RTP/AVP 0\r\n", "a=inactive\r\n"]),
    truncate=st.integers(0, 200),
)
good_offers = st.builds(Offer, **GOOD)
#: A good offer with one field gone wrong.
odd_offers = st.sampled_from(["address"] * 4 + ["port"] * 2 + sorted(GOOD)).flatmap(
    lambda wrong: st.builds(Offer, **{**GOOD, wrong: WILD[wrong]}))
wild_offers = st.builds(Offer, **{name: st.one_of(GOOD[name], WILD[name]) for name in GOOD})
offers = st.sampled_from([good_offers] * 5 + [odd_offers] * 3 + [wild_offers]).flatmap(
    lambda strategy: strategy)  # weighted: one_of drops repeated branches
bodies = st.sampled_from([offers] * 6 + [st.sampled_from([None, "", "garbage"])]).flatmap(
    lambda strategy: strategy)

# -- what the phone does -----------------------------------------------------------------
dialog_ix = st.integers(0, 3)
invite = st.tuples(st.just("invite"), bodies, st.booleans())  # (body, wait for the final)
step = st.one_of(
    invite,
    st.tuples(st.just("reinvite"), dialog_ix, bodies),
    st.tuples(st.just("ack"), dialog_ix),
    st.tuples(st.just("ack"), dialog_ix),
    st.tuples(st.just("bye"), dialog_ix),
    st.tuples(st.just("cancel"), dialog_ix),
    st.tuples(st.just("rtp"), dialog_ix),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.01, 0.05])),
)
steps = st.builds(lambda first, rest: [first, *rest], invite, st.lists(step, max_size=9))
scenarios = st.fixed_dictionaries({
    "steps": steps,
    "target": st.sampled_from(["room", "room", "room", "talk-room", "talk-room", "nosuch"]),
    "ring_ms": st.sampled_from([0, 0, 30]),
    "hang_up": st.booleans(),  # BYE the answered-but-never-ACKed calls too, or let 64*T1 end them
})


@dataclass
class Dialog:
    call_id: str
    tag: str
    target: str
    cseq: int = 0
    remote_tag: str | None = None  # the first 2xx's; ACK, BYE and re-INVITE use it
    other_tags: list[str] = field(default_factory=list)  # 2xx to INVITEs sent before it
    invite: bytes = b""  # the last INVITE sent (its branch and CSeq, for ACK and CANCEL)
    invite_cseq: int = 0
    gateway_rtp: int | None = None
    answered: bool = False  # some INVITE got a 2xx
    acked: bool = False
    named_victim: bool = False
    ended_by_gateway: bool = False
    finals: dict[tuple[int, str], int] = field(default_factory=dict)  # (cseq, method) -> status
    offers: dict[int, tuple[Offer, bool]] = field(default_factory=dict)  # cseq -> (offer, tagged)


class FuzzPhone:
    """A SIP socket, an RTP socket, and a socket that never sends (the victim)."""

    def __init__(self, gateway_port: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.gateway = ("127.0.0.1", gateway_port)
        self.sip, self.rtp, self.victim = _udp(), _udp(), _udp()
        self.port = self.sip.getsockname()[1]
        self.dialogs: list[Dialog] = []
        self.sent: list[tuple[Dialog, int, str]] = []  # requests that need a final
        self.victim_rtcp = _udp_next_to(self.victim)
        self.victim_packets = 0  # RTP or RTCP at the victim's port pair
        self.problems: list[str] = []
        self._tasks = [asyncio.ensure_future(self._receive()),
                       asyncio.ensure_future(self._watch_victim(self.victim))]
        if self.victim_rtcp is not None:
            self._tasks.append(asyncio.ensure_future(self._watch_victim(self.victim_rtcp)))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sock in (self.sip, self.rtp, self.victim, self.victim_rtcp):
            if sock is not None:
                sock.close()

    async def _watch_victim(self, sock: socket.socket) -> None:
        while True:
            data = await self.loop.sock_recv(sock, 4096)
            self.victim_packets += 1
            self.problems.append(f"victim port {sock.getsockname()[1]}: {data[:8].hex()}")

    async def _receive(self) -> None:
        while True:
            data = await self.loop.sock_recv(self.sip, 65536)
            try:
                message = parse_message(data)
            except SipParseError as exc:
                self.problems.append(f"the gateway sent an unparsable message: {exc}")
                continue
            dialog = next((d for d in self.dialogs if d.call_id == message.call_id), None)
            if dialog is None:
                self.problems.append(f"a message for no call of ours: {message}")
                continue
            if isinstance(message, Request):
                if message.method == "BYE":
                    dialog.ended_by_gateway = True
                await self._answer(message)
                continue
            number, method = message.cseq
            if message.status < 200:
                continue
            dialog.finals.setdefault((number, method), message.status)
            if method == "INVITE" and 200 <= message.status < 300:
                dialog.answered = True
                tag = message.to.tag
                if dialog.remote_tag is None:
                    dialog.remote_tag = tag
                elif tag != dialog.remote_tag and tag not in dialog.other_tags:
                    dialog.other_tags.append(tag)  # an INVITE sent before the first 2xx
                for line in message.body.decode().splitlines():
                    if line.startswith("m=audio"):
                        dialog.gateway_rtp = int(line.split()[1])

    async def _answer(self, request: Request) -> None:
        vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
        text = (f"SIP/2.0 200 OK\r\n{vias}From: {request.headers.get('From')}\r\n"
                f"To: {request.headers.get('To')}\r\nCall-ID: {request.call_id}\r\n"
                f"CSeq: {request.headers.get('CSeq')}\r\nContent-Length: 0\r\n\r\n")
        await self.loop.sock_sendto(self.sip, text.encode(), self.gateway)

    def _request(self, d: Dialog, method: str, body: str | None, cseq: int, branch: str,
                 in_dialog: bool, tag: str | None = None) -> bytes:
        tag = tag or d.remote_tag
        to_tag = f";tag={tag}" if in_dialog and tag else ""
        ctype = "Content-Type: application/sdp\r\n" if body is not None else ""
        payload = (body or "").encode("utf-8", "surrogateescape")
        return (
            f"{method} sip:{d.target}@127.0.0.1:{self.gateway[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
            f"From: <sip:fuzz@127.0.0.1>;tag={d.tag}\r\nTo: <sip:{d.target}@127.0.0.1>{to_tag}\r\n"
            f"Call-ID: {d.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:fuzz@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n{ctype}"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    async def send(self, d: Dialog, method: str, body: Offer | str | None = None,
                   in_dialog: bool = True, tag: str | None = None) -> None:
        text = body.text(self.rtp.getsockname()[1], self.victim.getsockname()[1]) \
            if isinstance(body, Offer) else body
        if isinstance(body, Offer) and body.port == "victim":
            d.named_victim = True
        if method in ("ACK", "CANCEL"):  # same CSeq number as the INVITE (and its branch)
            branch = _branch(d.invite)
            data = self._request(d, method, None, d.invite_cseq, branch, in_dialog)
        else:
            d.cseq += 1
            data = self._request(d, method, text, d.cseq, "z9hG4bK" + secrets.token_hex(6),
                                 in_dialog, tag)
            if method == "INVITE":
                d.invite, d.invite_cseq = data, d.cseq
                if isinstance(body, Offer):
                    d.offers[d.cseq] = (body, bool(in_dialog and (tag or d.remote_tag)))
        if method != "ACK":
            self.sent.append((d, d.cseq if method != "CANCEL" else d.invite_cseq, method))
        await self.loop.sock_sendto(self.sip, data, self.gateway)

    async def send_rtp(self, d: Dialog) -> None:
        if d.gateway_rtp is None:
            return
        for seq in range(3):
            packet = struct.pack("!BBHII", 0x80, 0, seq, 160 * seq, 0x5EED) + bytes(160)
            await self.loop.sock_sendto(self.rtp, packet, ("127.0.0.1", d.gateway_rtp))

    def unanswered(self) -> list[tuple[str, int, str]]:
        return [(d.call_id, n, m) for d, n, m in self.sent if (n, m) not in d.finals]


def _branch(invite: bytes) -> str:
    return invite.split(b";branch=", 1)[1].split(b";", 1)[0].decode()


def _udp_next_to(sock: socket.socket) -> socket.socket | None:
    """A socket on the port above ``sock``'s (where RTCP for it would go), if free."""
    try:
        return _udp(sock.getsockname()[1] + 1)
    except OSError:
        return None


def _udp(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def until(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


async def run_scenario(scenario: dict) -> None:
    registry = StreamRegistry(declared=("room",), allow_dynamic=True)
    registry.start()
    outputs = RtpOutputs()
    config = SipConfig(port=0, transports=["udp"], t1_ms=int(T1 * 1000), rate_limit_per_s=0,
                       ring_ms=scenario["ring_ms"], codecs=["PCMU", "PCMA", "G722", "opus"],
                       routes=[{"match": "talk-(.+)", "listen": r"\1",
                                "publish": r"phone-\1"}])
    service = SipService(config, registry, outputs)
    errors = _Errors()
    logging.getLogger("gateway").addHandler(errors)
    await service.start()
    phone = FuzzPhone(service.port)
    try:
        await play(phone, scenario)
        await check_released(service, registry, outputs, phone, scenario)
        assert errors.records == [], "the gateway logged errors"  # a fault answered 500
    finally:
        logging.getLogger("gateway").removeHandler(errors)
        phone.close()
        await service.stop()
        outputs.close()
        await registry.stop()


class _Errors(logging.Handler):
    """Collects what the gateway logs at ERROR: a fault while handling SIP is a bug, even
    when the INVITE still got its final response (500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


async def play(phone: FuzzPhone, scenario: dict) -> None:
    for step in scenario["steps"]:
        kind = step[0]
        if kind == "invite":
            d = Dialog(secrets.token_hex(8), secrets.token_hex(4), scenario["target"])
            phone.dialogs.append(d)
            await phone.send(d, "INVITE", step[1], in_dialog=False)
            if step[2]:
                await until(lambda d=d: (d.invite_cseq, "INVITE") in d.finals, 2.0)
        elif kind == "sleep":
            await asyncio.sleep(step[1])
        elif phone.dialogs:
            d = phone.dialogs[step[1] % len(phone.dialogs)]
            if kind == "reinvite":
                await phone.send(d, "INVITE", step[2])
            elif kind == "ack":
                d.acked = True
                await phone.send(d, "ACK")
            elif kind == "bye":
                await phone.send(d, "BYE")
            elif kind == "cancel":
                await phone.send(d, "CANCEL", in_dialog=False)
            elif kind == "rtp":
                await phone.send_rtp(d)


async def check_released(service: SipService, registry: StreamRegistry, outputs: RtpOutputs,
                         phone: FuzzPhone, scenario: dict) -> None:
    ring = scenario["ring_ms"] / 1000
    assert await until(lambda: not phone.unanswered(), 2.0 + ring), (
        f"requests without a final response: {phone.unanswered()}")
    for d in phone.dialogs:  # hang up what is up; 64*T1 ends the never-ACKed ones
        if d.answered and not d.ended_by_gateway and (d.acked or scenario["hang_up"]):
            await phone.send(d, "BYE")
        if scenario["hang_up"]:
            for tag in d.other_tags:
                await phone.send(d, "BYE", tag=tag)
    assert await until(lambda: not service.calls and not service._answering,
                       64 * T1 + 2.0), f"calls left: {[c.info() for c in service.calls.values()]}"
    assert await until(lambda: not phone.unanswered(), 1.0), phone.unanswered()
    # BYEs the gateway sent: answered, their tasks end
    assert await until(lambda: len(service._tasks) == 1, 1.0), service._tasks  # _watch_media
    assert service.ports.in_use == set()
    assert outputs.outputs == {} and outputs._fanouts == {}
    for stream in registry.streams.values():
        assert not stream.outputs, stream.name
        assert stream.source is None, stream.name
    mine = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    mine -= set(phone._tasks) | set(service._tasks) | {registry._task}
    assert await until(lambda: all(t.done() for t in mine), 1.0), mine
    if not any(d.acked and d.named_victim for d in phone.dialogs):
        assert phone.victim_packets == 0, phone.problems  # no RTP where no ACK came from
    assert [p for p in phone.problems if not p.startswith("victim")] == []
    faults = [(d.call_id, k, v) for d in phone.dialogs for k, v in d.finals.items() if v == 500]
    assert faults == []
    for d in phone.dialogs:  # no 2xx to an offer that names a bad address
        for cseq, (offer, reinvite) in d.offers.items():
            status = d.finals.get((cseq, "INVITE"), 0)
            if offer.where_c != "none" and offer.address in BAD_ADDRESSES and 200 <= status < 300:
                assert reinvite and offer.address in HOLD, (offer, status)
    for d in phone.dialogs:  # what was covered: pytest --hypothesis-show-statistics
        for (number, method), status in d.finals.items():
            event(f"{'re-' if method == 'INVITE' and number > 1 else ''}{method} {status}")
        if d.answered and not d.acked:
            event("answered, never ACKed")


@pytest.mark.timeout(900)  # passing: ~20 s; a failure's shrinking takes minutes
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          derandomize=os.environ.get("GATEWAY_FUZZ_EXPLORE") != "1",
          phases=[Phase.explicit, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios)
def test_sip_service_answers_every_invite_and_releases_everything(scenario):
    try:
        asyncio.run(run_scenario(scenario))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nscenario: {scenario}") from None
