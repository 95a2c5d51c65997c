"""A stream's steady work leaves nothing in reference cycles: gateway/heap.py's steps then
only freeze (a collection walks every live object made since the last freeze: ~20 ms at
500 listeners), and garbage that only the collector can free would wait for a thaw."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest
from sip_phone import Phone
from stepping import send_tone
from test_rtp_output import add_output


@pytest.mark.parametrize("codec", ["opus", "PCMU", "G722"])
async def test_a_stream_with_an_rtp_output_makes_no_garbage_per_tick(stepped_gateway, codec):
    gw = stepped_gateway
    send_tone(gw, "tone", 440)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        await add_output(gw, "tone", host="127.0.0.1", port=sink.getsockname()[1],
                         codec=codec)
        await gw.step(50)  # the encoder, the output and the analysers are warm
        gc.collect()
        gc.disable()
        try:
            await gw.step(250)
            found = gc.collect()
        finally:
            gc.enable()
        received = 0
        while True:
            try:
                sink.recv(2048)
                received += 1
            except BlockingIOError:
                break
    assert received >= 250  # the packets went out: the ticks did their work
    assert found == 0


async def test_sip_calls_that_come_and_go_leave_nothing_for_the_collector(gateway_factory):
    """A call's encoder and RTP fan-out tasks, once cancelled, held their owners through
    their tracebacks while the owners held them: ~40 objects in cycles per call
    (gateway/core/tasks.py)."""
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    port = gw.gateway.sip.port

    async def call() -> None:
        phone = Phone(port)
        try:
            assert (await phone.invite("room")).status == 200
            await asyncio.sleep(0.06)  # a few packets each way
            assert (await phone.bye("room")).status == 200
        finally:
            phone.sip.close()
            phone.rtp.close()

    await call()  # first-call set-up (codecs, sockets) out of the way
    await asyncio.sleep(0.2)
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            await call()
        await asyncio.sleep(0.3)  # the calls' tasks end after their cancellation
        found = gc.collect()
    finally:
        gc.enable()
    assert not gw.gateway.sip.calls
    assert found == 0
