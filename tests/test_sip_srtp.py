"""SRTP for SIP calls (SDES, RFC 4568): the keys in the SDP, the policy's 488s, and
packets that do not authenticate dropped (the real phone both ways is in
test_sip_baresip.py)."""

from __future__ import annotations

import base64
import os

import pytest
from sip_phone import Phone, sdp_offer

from gateway.rtp.packet import build_header
from gateway.sdp import build_audio, parse_audio
from gateway.sip import sdes


def savp_offer(port: int, crypto: list[str], profile: str = "RTP/SAVP") -> str:
    lines = sdp_offer(port, "0").replace("RTP/AVP", profile).rstrip("\r\n").split("\r\n")
    return "\r\n".join(lines + [f"a=crypto:{c}" for c in crypto]) + "\r\n"


def key_line(tag: int = 1, suite: str = "AES_CM_128_HMAC_SHA1_80") -> str:
    return f"{tag} {suite} inline:{base64.b64encode(os.urandom(30)).decode()}"


def test_crypto_lines_are_read_and_written():
    offer = parse_audio(savp_offer(4000, ["1 F8_128_HMAC_SHA1_80 inline:AAAA", key_line(2),
                                          key_line(3, "AES_CM_128_HMAC_SHA1_32")]))
    assert offer.secure and offer.profile == "RTP/SAVP" and len(offer.crypto) == 3
    offered = [c for c in map(sdes.parse_crypto, offer.crypto) if c]
    assert [(c.tag, c.suite) for c in offered] == [(2, "AES_CM_128_HMAC_SHA1_80"),
                                                   (3, "AES_CM_128_HMAC_SHA1_32")]
    ours, _ = sdes.answer(offered)
    assert ours.tag == 2 and ours.key != offered[0].key
    sdp = build_audio("127.0.0.1", 5000, list(offer.codecs.items())[:1], profile="RTP/SAVP",
                      crypto=ours.line())
    again = parse_audio(sdp)
    assert again.profile == "RTP/SAVP" and sdes.parse_crypto(again.crypto[0]) == ours
    # keys with an MKI or of the wrong length are not used
    assert sdes.parse_crypto("1 AES_CM_128_HMAC_SHA1_80 inline:"
                             + base64.b64encode(os.urandom(30)).decode() + "|2^20|1:4") is None
    assert sdes.parse_crypto("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA") is None
    with pytest.raises(sdes.SdesError):
        sdes.answer([])


def test_a_pair_protects_for_the_other_side_and_drops_forgeries():
    key_a, key_b = os.urandom(30), os.urandom(30)
    a = sdes.SrtpPair("AES_CM_128_HMAC_SHA1_80", key_a, key_b)
    b = sdes.SrtpPair("AES_CM_128_HMAC_SHA1_80", key_b, key_a)
    rtp = build_header(0, False, 7, 160, 0x1234) + bytes(range(160))
    protected = a.protect(rtp)
    assert protected != rtp and len(protected) == len(rtp) + 10  # the 80-bit tag
    assert b.unprotect(protected) == rtp
    forged = bytearray(a.protect(build_header(0, False, 8, 320, 0x1234) + bytes(160)))
    forged[20] ^= 1
    with pytest.raises(sdes.SrtpError):
        b.unprotect(bytes(forged))
    with pytest.raises(sdes.SrtpError):
        b.unprotect(protected)  # a replay


@pytest.mark.parametrize("policy, offer_kind, status", [
    ("required", "plain", 488),
    ("off", "savp", 488),
    ("optional", "plain", 200),
    ("optional", "plain-unusable-keys", 200),
    ("optional", "savp", 200),
    ("required", "savp", 200),
    ("required", "savp-unknown-suite", 488),
])
async def test_the_srtp_policy_decides_the_answer(gateway_factory, policy, offer_kind, status):
    gw = await gateway_factory(sip={"port": 0, "srtp": policy}, streams={"declared": ["room"]})
    phone = Phone(gw.gateway.sip.port)
    try:
        port = phone.rtp_port
        body = {"plain": sdp_offer(port, "0"),
                "savp": savp_offer(port, [key_line()]),
                "savp-unknown-suite": savp_offer(port, ["1 F8_128_HMAC_SHA1_80 inline:AAAA"]),
                "plain-unusable-keys": savp_offer(port, ["1 F8_128_HMAC_SHA1_80 inline:AAAA"],
                                                  "RTP/AVP"),
                }[offer_kind]
        await phone.send(phone.request("INVITE", "room", body))
        response = await phone.final()
        assert response.status == status, response
        if status == 488:
            assert (response.headers.get("Warning") or "").startswith("302 "), response
        else:
            answer = parse_audio(response.body.decode())
            secure = offer_kind == "savp"
            assert answer.secure == secure and bool(answer.crypto) == secure
            media = next(iter(gw.gateway.sip.calls.values())).media
            assert (media.srtp is not None) == secure
            phone.remote_tag = response.to.tag
            await phone.ack("room", response)
            await phone.bye("room")
    finally:
        await phone.close()


async def test_a_reinvite_rekeys_an_srtp_call_and_cannot_drop_srtp(gateway_factory):
    gw = await gateway_factory(sip={"port": 0}, streams={"declared": ["room"]})
    phone = Phone(gw.gateway.sip.port)
    try:
        await phone.send(phone.request("INVITE", "room", savp_offer(phone.rtp_port,
                                                                     [key_line()])))
        first = await phone.final()
        assert first.status == 200
        phone.remote_tag = first.to.tag
        await phone.ack("room", first)
        call = next(iter(gw.gateway.sip.calls.values()))
        old_pair = call.media.srtp
        await phone.send(phone.request("INVITE", "room", savp_offer(phone.rtp_port,
                                                                     [key_line(tag=5)]),
                                       in_dialog=True))
        second = await phone.final()
        assert second.status == 200
        await phone.ack("room", second)
        keys = [sdes.parse_crypto(parse_audio(r.body.decode()).crypto[0]) for r in (first,
                                                                                    second)]
        assert keys[1].tag == 5 and keys[1].key != keys[0].key  # new keys both ways
        assert call.media.srtp is not old_pair and call.output.srtp is call.media.srtp
        await phone.send(phone.request("INVITE", "room", sdp_offer(phone.rtp_port, "0"),
                                       in_dialog=True))
        plain = await phone.final()
        assert plain.status == 488 and call.media.srtp is not None
        await phone.ack("room", plain)
        await phone.bye("room")
    finally:
        await phone.close()
