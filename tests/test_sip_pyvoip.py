"""pyVoIP 1.6, a pure-Python phone library, against the gateway: it registers with digest
auth (its digest ``uri`` carries ``;transport=UDP``, the Request-URI does not) and calls a
stream, hearing its tone. pyVoIP is blocking and threaded, so it runs off the event loop."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
from audio_checks import assert_tone
from conftest import free_port
from pyVoIP.VoIP import CallState, PhoneStatus, VoIPPhone
from test_rtp_output import api, publish_tone

USERS = {"alice": "wonderland"}


def make_phone(gw, password: str = "wonderland") -> VoIPPhone:
    rtp = free_port(socket.SOCK_DGRAM)  # pyVoIP takes a range; one port is enough for one call
    return VoIPPhone("127.0.0.1", gw.gateway.sip.port, "alice", password, myIP="127.0.0.1",
                     sipPort=free_port(socket.SOCK_DGRAM), rtpPortLow=rtp, rtpPortHigh=rtp)


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_pyvoip_registers_with_digest_and_unregisters(gateway_factory, caplog):
    gw = await gateway_factory(sip={"port": 0, "users": USERS})
    registrar = gw.gateway.sip.registrar
    phone = make_phone(gw)
    await asyncio.to_thread(phone.start)
    try:
        assert phone.get_status() == PhoneStatus.REGISTERED, caplog.text
        [binding] = registrar.lookup("alice", gw.gateway.sip.endpoint.now())
        assert binding.source == ("127.0.0.1", phone.sip.myPort)
        assert binding.contact.port == phone.sip.myPort
    finally:
        await asyncio.to_thread(phone.stop)
    assert registrar.lookup("alice", gw.gateway.sip.endpoint.now()) == []  # Expires: 0 went


async def test_pyvoip_with_a_wrong_password_is_refused_and_the_log_says_why(gateway_factory,
                                                                            caplog):
    gw = await gateway_factory(sip={"port": 0, "users": USERS})
    phone = make_phone(gw, password="looking-glass")
    caplog.set_level("INFO", logger="gateway.sip.registrar")
    await asyncio.to_thread(phone.start)
    try:
        await wait_for(lambda: "refused" in caplog.text)
        assert phone.get_status() != PhoneStatus.REGISTERED
        assert "alice" in caplog.text and "bad response" in caplog.text, caplog.text
        assert "looking-glass" not in caplog.text
        assert gw.gateway.sip.registrar.bindings_count == 0
    finally:
        await asyncio.to_thread(phone.stop)


async def test_pyvoip_calls_a_stream_and_hears_its_tone(gateway_factory):
    gw = await gateway_factory(sip={"port": 0, "users": USERS}, streams={"declared": ["room"]})
    pub = await publish_tone(gw, "room", 440)
    phone = make_phone(gw)
    await asyncio.to_thread(phone.start)
    try:
        assert phone.get_status() == PhoneStatus.REGISTERED
        call = await asyncio.to_thread(phone.call, "room")
        await wait_for(lambda: call.state == CallState.ANSWERED)
        await asyncio.sleep(2.0)  # pyVoIP buffers what arrives; read it afterwards

        def read() -> bytes:
            return b"".join(call.read_audio(160, blocking=True) for _ in range(75))

        pcm = np.frombuffer(await asyncio.to_thread(read), np.uint8).astype(np.int16)
        samples = (pcm - 128) * 256  # 8-bit unsigned -> 16-bit signed
        assert_tone(samples[1600:], 440, rate=8000, min_seconds=1.2)
        [active] = gw.gateway.sip.calls.values()
        await asyncio.to_thread(call.hangup)
        await wait_for(lambda: not gw.gateway.sip.calls)
        assert active.end_reason == "phone hung up"
        status, info = await api(gw, "GET", f"/api/v1/streams/room/outputs/{active.id}")
        assert status == 200 and info["state"] == "ended" and info["codec"] == "PCMU"
        assert info["packets"] >= 100  # > 2 s at 50 packets/s were sent, and counted
    finally:
        await asyncio.to_thread(phone.stop)
        await pub.delete()
