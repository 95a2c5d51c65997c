"""SIP over TLS (issue 17, item 3, signalling): a phone dials in over TLS and hears the
stream; the gateway's own requests in that call (its BYE) go back over the phone's
connection; a dial-out to a TLS phone verifies its certificate, and one it cannot verify
gets nothing; plain TCP on the TLS port is refused."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from pathlib import Path

import pytest
from audio_checks import assert_tone
from sip_phone import _udp, collect_rtp, decode, sdp_offer
from stepping import send_tone
from test_rtp_output import api

from gateway.config import ConfigError, load
from gateway.sip.message import Request, Response, StreamFramer, parse_message
from gateway.web.self_signed import make_self_signed


class TlsPhone:
    """A scripted phone whose SIP goes over one TLS connection it opened to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.port = writer.get_extra_info("sockname")[1]
        self.framer = StreamFramer(65536)
        self.pending: list[bytes] = []
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)
        self.rtp = _udp()
        self.remote_tag = ""

    @classmethod
    async def connect(cls, port: int, trust: ssl.SSLContext) -> TlsPhone:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
        return cls(reader, writer)

    def request(self, method: str, target: str, cseq: int, body: str = "") -> bytes:
        to_tag = f";tag={self.remote_tag}" if self.remote_tag else ""
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} sip:{target}@127.0.0.1;transport=tls SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)}"
                f";rport\r\nFrom: <sip:phone@127.0.0.1>;tag={self.tag}\r\n"
                f"To: <sip:{target}@127.0.0.1>{to_tag}\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {cseq} {method}\r\n"
                f"Contact: <sip:phone@127.0.0.1:{self.port};transport=tls>\r\n"
                f"Max-Forwards: 70\r\n{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
                ).encode()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, timeout: float = 5.0) -> Request | Response:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            assert data, "the gateway closed the connection"
            self.pending += self.framer.feed(data)
        return parse_message(self.pending.pop(0))

    async def final(self) -> Response:
        while True:
            message = await self.receive()
            if isinstance(message, Response) and message.status >= 200:
                return message

    def close(self) -> None:
        self.writer.close()
        self.rtp.close()


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    return make_self_signed(tmp_path / "gw", ["127.0.0.1"])


def test_tls_certificate_and_key_go_together_and_must_load(tmp_path, certificate):
    with pytest.raises(ConfigError, match="sip.tls_cert and sip.tls_key go together"):
        load(None, {"sip": {"tls_cert": str(certificate[0])}})


async def test_a_phone_dials_in_over_tls_hears_the_stream_and_gets_the_bye_back(
        gateway_factory, certificate):
    cert, key = certificate
    gw = await gateway_factory(sip={"port": 0, "tls_port": 0, "tls_cert": str(cert),
                                    "tls_key": str(key)}, streams={"declared": ["room"]})
    sip = gw.gateway.sip
    assert sip.info().tls_port == sip.endpoint.tls_port > 0
    sender = send_tone(gw, "room", 440)
    phone = await TlsPhone.connect(sip.endpoint.tls_port,
                                   ssl.create_default_context(cafile=str(cert)))
    try:
        offer = sdp_offer(phone.rtp.getsockname()[1], "0")
        await phone.send(phone.request("INVITE", "room", 1, offer))
        ok = await phone.final()
        assert ok.status == 200, ok
        assert ok.top_via.transport == "TLS"
        contact = ok.contact
        assert contact is not None and contact.uri.params.get("transport") == "tls"
        assert contact.uri.port == sip.endpoint.tls_port
        phone.remote_tag = ok.to.tag or ""
        await phone.send(phone.request("ACK", "room", 1))
        packets = await collect_rtp(phone.rtp, 2.0)
        assert_tone(decode(packets)[1600:], 440, rate=8000, min_seconds=1.0)
        # the gateway ends the call (shutting down): its BYE comes over this connection
        stopping = asyncio.create_task(sip.stop())
        bye = await phone.receive()
        assert isinstance(bye, Request) and bye.method == "BYE", bye
        assert bye.top_via.transport == "TLS"
        await phone.send(
            f"SIP/2.0 200 OK\r\nVia: {bye.headers.get('Via')}\r\n"
            f"From: {bye.headers.get('From')}\r\nTo: {bye.headers.get('To')}\r\n"
            f"Call-ID: {bye.call_id}\r\nCSeq: {bye.headers.get('CSeq')}\r\n"
            "Content-Length: 0\r\n\r\n".encode())
        await asyncio.wait_for(stopping, 10)
        assert sip.calls == {}
    finally:
        phone.close()
        gw.gateway.registry.get("room").detach(sender)


async def test_plain_tcp_on_the_tls_port_gets_nothing(gateway_factory, certificate):
    cert, key = certificate
    gw = await gateway_factory(sip={"port": 0, "tls_port": 0, "tls_cert": str(cert),
                                    "tls_key": str(key)})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.sip.endpoint.tls_port)
    writer.write(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n\r\n")
    data = await asyncio.wait_for(reader.read(65536), 5)
    assert not data.startswith(b"SIP/2.0")  # the TLS handshake failed: no SIP answer
    writer.close()
    assert gw.gateway.sip.endpoint.counters.received == 0


async def tls_callee(cert: Path, key: Path, answer: bool = True):  # type: ignore[no-untyped-def]
    """A phone listening for SIP over TLS; returns (server, port, queue of requests)."""
    got: asyncio.Queue[Request] = asyncio.Queue()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    rtp = _udp()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = StreamFramer(65536)
        while data := await reader.read(65536):
            for raw in framer.feed(data):
                message = parse_message(raw)
                if not isinstance(message, Request):
                    continue
                await got.put(message)
                if message.method == "INVITE" and answer:
                    body = sdp_offer(rtp.getsockname()[1], "0")
                    writer.write(
                        f"SIP/2.0 200 OK\r\nVia: {message.headers.get('Via')}\r\n"
                        f"From: {message.headers.get('From')}\r\n"
                        f"To: {message.headers.get('To')};tag=callee1\r\n"
                        f"Call-ID: {message.call_id}\r\nCSeq: {message.headers.get('CSeq')}\r\n"
                        f"Contact: <sip:callee@127.0.0.1:{port};transport=tls>\r\n"
                        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n"
                        f"\r\n{body}".encode())

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    return server, port, got, rtp


async def test_dial_out_over_tls_verifies_the_phone(gateway_factory, tmp_path, certificate):
    cert, key = certificate
    phone_cert, phone_key = make_self_signed(tmp_path / "phone", ["127.0.0.1"])
    server, port, got, rtp = await tls_callee(phone_cert, phone_key)
    uri = f"sip:callee@127.0.0.1:{port};transport=tls"
    try:
        # trusted: the INVITE arrives over TLS, the call is up, the phone hears the tone
        gw = await gateway_factory(sip={"port": 0, "tls_port": 0, "tls_cert": str(cert),
                                        "tls_key": str(key), "tls_ca": str(phone_cert)},
                                   streams={"declared": ["room"]})
        sender = send_tone(gw, "room", 440)
        status, call = await api(gw, "POST", "/api/v1/streams/room/outputs",
                                 {"type": "sip", "uri": uri})
        assert status == 201, call
        invite = await asyncio.wait_for(got.get(), 10)
        assert invite.method == "INVITE" and invite.top_via.transport == "TLS"
        ack = await asyncio.wait_for(got.get(), 10)
        assert ack.method == "ACK"
        packets = await collect_rtp(rtp, 2.0)
        assert_tone(decode(packets)[1600:], 440, rate=8000, min_seconds=1.0)
        gw.gateway.registry.get("room").detach(sender)

        # not trusted (the gateway trusts only its own certificate): nothing is sent
        other = await gateway_factory(sip={"port": 0, "tls_port": 0, "tls_cert": str(cert),
                                           "tls_key": str(key), "tls_ca": str(cert)},
                                      streams={"declared": ["room"]})
        status, call = await api(other, "POST", "/api/v1/streams/room/outputs",
                                 {"type": "sip", "uri": uri})
        assert status == 201, call
        await asyncio.sleep(1.5)
        assert got.empty()
        assert other.gateway.sip.endpoint.counters.send_errors >= 1
    finally:
        server.close()
        rtp.close()
