"""The shared Opus encoder's in-band FEC follows its listeners' reported loss."""

from __future__ import annotations

import asyncio

import numpy as np
from opus_fec import recovery_snr_db, vowel
from stepping import send_tone

from gateway.codecs.opus_encoder import LibOpusEncoder
from gateway.codecs.spec import OPUS
from gateway.egress.encoders import shared_encoder

SIGNAL = vowel(12.0)


def frames(index: int) -> np.ndarray:
    start = (index * 960) % (len(SIGNAL) - 960)
    return SIGNAL[start:start + 960]


def test_libopus_encoder_adds_fec_only_when_loss_is_expected():
    clean, protected = LibOpusEncoder(64000), LibOpusEncoder(64000)
    protected.set_expected_loss(5)
    assert (clean.fec, protected.fec, protected.loss_percent) == (False, True, 5)
    signal = vowel(4.0)
    out = {}
    for name, encoder in (("clean", clean), ("protected", protected)):
        out[name] = [p for i in range(0, len(signal), 960)
                     for p in encoder.encode_packets(signal[i:i + 960])]
    assert len(out["clean"]) == len(out["protected"]) == 200
    assert recovery_snr_db(out["clean"]) < 5  # concealed: a guess
    assert recovery_snr_db(out["protected"]) > 12  # recovered from the next packet
    protected.set_expected_loss(0)
    assert not protected.fec


def test_packet_times_other_than_20_ms():
    for ptime, count in ((10, 40), (40, 10), (60, 6)):
        encoder = LibOpusEncoder(32000, ptime)
        packets = [p for i in range(20) for p in encoder.encode_packets(SIGNAL[i * 960:][:960])]
        assert len(packets) in (count, count - 1), ptime


async def test_listeners_with_loss_make_the_shared_encoder_send_fec(stepped_gateway):
    gw = stepped_gateway
    send_tone(gw, "fec", frames)
    stream = gw.gateway.registry.get("fec")
    encoder = shared_encoder(stream, OPUS, 64000)
    reader = encoder.subscribe(kind="test")

    got: list[bytes] = []

    async def collect() -> None:  # the stepped clock waits for every reader, this one too
        while True:
            got.append((await reader.read())[1].payload)

    collector = asyncio.create_task(collect())

    async def packets(count: int) -> list[bytes]:
        start = len(got)
        await gw.step(count)
        return got[start:]

    encoder.report_loss("clean-listener", 0.0)
    before = await packets(150)
    assert encoder.info().expected_loss_percent == 0
    encoder.report_loss("lossy-listener", 0.08)
    assert encoder.info().expected_loss_percent == 8
    after = await packets(150)
    assert recovery_snr_db(before) < 5
    assert recovery_snr_db(after) > 12
    encoder.forget_loss("lossy-listener")  # held for hold_s before it falls
    assert encoder.info().expected_loss_percent == 8
    collector.cancel()
    encoder.unsubscribe(reader)
