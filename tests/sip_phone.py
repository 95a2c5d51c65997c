"""A scripted SIP phone for tests: plain text SIP over a real UDP socket, plus RTP.

Requests are written out by hand (not with the gateway's own builder), so the tests
check the gateway against the wire format, not against itself. Real third-party phones
(sipp, baresip) are in tests/peers; this one reaches the corners they cannot script:
hold, codec changes, DTMF, vanishing without BYE, floods.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct

import numpy as np

from gateway.codecs.g711 import alaw_decode, ulaw_decode, ulaw_encode
from gateway.sip.message import Request, Response, parse_message


def sdp_offer(port: int, formats: str = "0 8 101", direction: str = "sendrecv",
              address: str = "127.0.0.1") -> str:
    rtpmaps = {"0": "PCMU/8000", "8": "PCMA/8000", "9": "G722/8000",
               "101": "telephone-event/8000", "111": "opus/48000/2"}
    lines = ["v=0", f"o=phone 1 {secrets.randbelow(1000) + 1} IN IP4 127.0.0.1", "s=-",
             f"c=IN IP{6 if ':' in address else 4} {address}", "t=0 0",
             f"m=audio {port} RTP/AVP {formats}"]
    lines += [f"a=rtpmap:{pt} {rtpmaps[pt]}" for pt in formats.split()]
    lines += [f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


class Phone:
    """One SIP UDP socket and one RTP socket on 127.0.0.1."""

    def __init__(self, gateway_port: int, user: str = "phone") -> None:
        self.gateway = ("127.0.0.1", gateway_port)
        self.user = user
        self.sip = _udp()
        self.rtp = _udp()
        self.port = self.sip.getsockname()[1]
        self.rtp_port = self.rtp.getsockname()[1]
        self.call_id = secrets.token_hex(8) + "@127.0.0.1"
        self.tag = secrets.token_hex(4)
        self.cseq = 0
        self.remote_tag: str | None = None
        self.target = ""  # the user part of the last request's URI (BYE on close goes there)
        self.hung_up = False  # the dialog ended: this phone sent a BYE or answered one
        self.messages: list[Request | Response] = []
        self._loop = asyncio.get_running_loop()

    # -- signalling --------------------------------------------------------------------
    def request(self, method: str, target: str, body: str = "", extra: str = "",
                in_dialog: bool = False, cseq: int | None = None, branch: str | None = None,
                via_host: str = "127.0.0.1") -> bytes:
        self.target = target
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        to_tag = f";tag={self.remote_tag}" if in_dialog and self.remote_tag else ""
        branch = branch or "z9hG4bK" + secrets.token_hex(6)
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        text = (
            f"{method} sip:{target}@127.0.0.1:{self.gateway[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via_host}:{self.port};branch={branch};rport\r\n"
            f"From: <sip:{self.user}@127.0.0.1>;tag={self.tag}\r\n"
            f"To: <sip:{target}@127.0.0.1>{to_tag}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>\r\n"
            f"Max-Forwards: 70\r\n{extra}{ctype}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
        )
        return text.encode()

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendto(self.sip, data, self.gateway)

    async def receive(self, timeout: float = 3.0) -> Request | Response:
        data = await asyncio.wait_for(self._loop.sock_recv(self.sip, 65536), timeout)
        message = parse_message(data)
        self.messages.append(message)
        return message

    async def final(self, timeout: float = 5.0, method: str | None = None) -> Response:
        """Skip provisional responses and requests up to the final one (to ``method``'s
        request, if given: a retransmitted final to an earlier INVITE is skipped too)."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, Response) and message.status >= 200 \
                    and method in (None, message.cseq[1]):
                return message

    async def invite(self, target: str, formats: str = "0 8 101",
                     direction: str = "sendrecv") -> Response:
        await self.send(self.request("INVITE", target, sdp_offer(self.rtp_port, formats,
                                                                  direction)))
        response = await self.final()
        if response.status < 300:
            self.remote_tag = response.to.tag
            await self.ack(target, response)
        return response

    async def reinvite(self, target: str, formats: str = "0 8 101",
                       direction: str = "sendrecv") -> Response:
        body = sdp_offer(self.rtp_port, formats, direction)
        await self.send(self.request("INVITE", target, body, in_dialog=True))
        response = await self.final()
        await self.ack(target, response)
        return response

    async def ack(self, target: str, response: Response) -> None:
        await self.send(self.request("ACK", target, in_dialog=True, cseq=response.cseq[0]))

    async def bye(self, target: str, timeout: float = 5.0) -> Response:
        await self.send(self.request("BYE", target, in_dialog=True))
        self.hung_up = True
        return await self.final(timeout, "BYE")

    async def expect_request(self, method: str, timeout: float) -> Request:
        """Wait for the gateway to send ``method``; answer it 200."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, Request) and message.method == method:
                await self.answer(message, 200)
                return message

    async def answer(self, request: Request, status: int, body: str = "",
                     extra: str = "") -> None:
        """Respond to the gateway's ``request`` (To gets this phone's tag, except on 100)."""
        vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
        to = request.headers.get("To") or ""
        if status > 100 and ";tag=" not in to:
            to += f";tag={self.tag}"
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        if "Contact:" not in extra:
            extra = f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>\r\n{extra}"
        text = (
            f"SIP/2.0 {status} Whatever\r\n{vias}"
            f"From: {request.headers.get('From')}\r\nTo: {to}\r\n"
            f"Call-ID: {request.call_id}\r\nCSeq: {request.headers.get('CSeq')}\r\n"
            f"{extra}{ctype}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
        )
        via = request.top_via
        if request.method == "BYE" and request.call_id == self.call_id and status < 300:
            self.hung_up = True
        await self._loop.sock_sendto(self.sip, text.encode(), ("127.0.0.1", via.port or 5060))

    async def expect(self, method: str, timeout: float = 5.0) -> Request:
        """The next request ``method`` the gateway sends (others are skipped)."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, Request) and message.method == method:
                return message

    async def sync(self) -> None:
        """A round trip (OPTIONS, its 200): the gateway reads its SIP socket in order, so
        whatever this phone sent before (an ACK) has been handled."""
        await self.send(self.request("OPTIONS", self.target or "sync",
                                     in_dialog=not self.hung_up))
        assert (await self.final(2.0, "OPTIONS")).status == 200

    # -- media -------------------------------------------------------------------------
    async def heard(self, gw, frames: int, sync: bool = True) -> list[tuple[int, int, int, bytes]]:
        """Step a stepped gateway's media clock ``frames`` ticks (after a ``sync``): the RTP
        packets this phone got meanwhile (see ``heard``)."""
        [got] = await heard(gw, [self], frames, sync)
        return got

    async def send_rtp(self, dest: tuple[str, int], payloads: list[bytes], pt: int = 0,
                       ptime: float = 0.02, ssrc: int = 0x1234, seq: int = 1,
                       timestamp: int = 0, marker_first: bool = True) -> None:
        for i, payload in enumerate(payloads):
            marker = 0x80 if marker_first and i == 0 else 0
            header = struct.pack("!BBHII", 0x80, marker | pt, (seq + i) & 0xFFFF,
                                 (timestamp + 160 * i) & 0xFFFFFFFF, ssrc)
            await self._loop.sock_sendto(self.rtp, header + payload, dest)
            await asyncio.sleep(ptime)

    async def close(self) -> None:
        """Put the phone down: a call still up is hung up (BYE, answered 200, or 481 if the
        gateway ended it unheard), as a real phone does, then the sockets close. (A phone
        that vanished would cost the gateway's shutdown its BYE timeout.)"""
        try:
            if self.remote_tag is not None and not self.hung_up and self.sip.fileno() >= 0:
                response = await self.bye(self.target, timeout=2.0)
                assert response.status in (200, 481), response
        finally:
            self.sip.close()
            self.rtp.close()


async def collect_rtp(sock: socket.socket, seconds: float) -> list[tuple[int, int, int, bytes]]:
    """RTP packets arriving on ``sock`` in the next ``seconds`` (RTCP skipped)."""
    loop = asyncio.get_running_loop()
    got: list[tuple[int, int, int, bytes]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                data = await loop.sock_recv(sock, 4096)
                if len(data) >= 12 and not 192 <= data[1] <= 223:
                    _, mpt, seq, ts = struct.unpack("!BBHI", data[:8])
                    got.append((mpt & 0x7F, seq, ts, data[12:]))
    except TimeoutError:
        pass
    return got


async def heard(gw, phones: list[Phone], frames: int,
                sync: bool = True) -> list[list[tuple[int, int, int, bytes]]]:
    """Step a stepped gateway's media clock ``frames`` ticks: the RTP packets (pt, sequence,
    timestamp, payload) each phone got meanwhile. The gateway sends a call's packet as its
    fan-out reads it, within the step, over loopback: every packet of these ticks is here.
    ``sync`` first makes sure the gateway has handled what the phones sent (their ACKs)."""
    loop = asyncio.get_running_loop()
    got: list[list[tuple[int, int, int, bytes]]] = [[] for _ in phones]

    def drain(sock: socket.socket, packets: list[tuple[int, int, int, bytes]]) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return
            if len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223:
                _, mpt, seq, ts = struct.unpack("!BBHI", data[:8])
                packets.append((mpt & 0x7F, seq, ts, data[12:]))

    for phone in phones if sync else ():
        await phone.sync()
    for phone, packets in zip(phones, got, strict=True):  # read as it comes: no overrun
        loop.add_reader(phone.rtp, drain, phone.rtp, packets)
    try:
        await gw.step(frames)
    finally:
        for phone, packets in zip(phones, got, strict=True):
            loop.remove_reader(phone.rtp)
            drain(phone.rtp, packets)
    return got


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def decode(packets: list[tuple[int, int, int, bytes]], pt: int = 0) -> np.ndarray:
    """8 kHz samples of the G.711 packets with payload type ``pt``."""
    decode_fn = ulaw_decode if pt == 0 else alaw_decode
    chunks = [decode_fn(p) for t, _, _, p in sorted(packets, key=lambda x: x[1]) if t == pt]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def tone_ulaw(freq: float, seconds: float, rate: int = 8000) -> list[bytes]:
    """20 ms PCMU payloads of a tone at half scale."""
    n = int(seconds * rate)
    samples = (0.5 * 32767 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)
    return [ulaw_encode(samples[i : i + 160]) for i in range(0, n - 159, 160)]


def sdp_port(response: Response) -> int:
    for line in response.body.decode().splitlines():
        if line.startswith("m=audio"):
            return int(line.split()[1])
    raise AssertionError("no m=audio in the answer")
