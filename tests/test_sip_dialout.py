"""Dial-out through the outputs API, against a scripted phone that answers as told:
ringing, answer, redirect, digest challenge, busy, no answer, hang-up by DELETE."""

from __future__ import annotations

import asyncio

from audio_checks import assert_tone
from sip_phone import Phone, decode, sdp_offer
from stepping import send_tone
from test_rtp_output import api

from gateway.sip.digest import DigestServer, parse_credentials
from gateway.sip.message import Request


async def start(gateway_factory, stepped: bool = False, **sip):
    """A gateway with SIP; ``stepped``: on a stepped media clock (``phone.heard(gw, n)``)."""
    return await gateway_factory(stepped=stepped, sip={"port": 0, **sip},
                                 streams={"declared": ["room"]})


async def dial(gw, uri: str, **extra) -> dict:
    status, body = await api(gw, "POST", "/api/v1/streams/room/outputs",
                             {"type": "sip", "uri": uri, **extra})
    assert status == 201, body
    return body


async def state_of(gw, call_id: str) -> dict:
    status, body = await api(gw, "GET", f"/api/v1/streams/room/outputs/{call_id}")
    assert status == 200, body
    return body


async def hang_up_by_api(gw, call: dict, phone: Phone) -> Request:
    """DELETE the call's output; the phone answers the BYE it gets meanwhile (the DELETE
    returns once the BYE is answered)."""
    delete = asyncio.ensure_future(
        api(gw, "DELETE", f"/api/v1/streams/room/outputs/{call['id']}"))
    bye = await phone.expect_request("BYE", timeout=2.0)
    status, _ = await delete
    assert status == 204
    return bye


async def test_dial_out_plays_the_stream_and_delete_hangs_up_with_bye(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    send_tone(gw, "room", 440)
    phone = Phone(gw.gateway.sip.port, "alice")
    call = await dial(gw, f"sip:alice@127.0.0.1:{phone.port}")
    assert call["state"] == "calling" and call["direction"] == "out"
    invite = await phone.expect("INVITE")
    assert b"m=audio" in invite.body and b"PCMU/8000" in invite.body
    await phone.answer(invite, 180)
    await asyncio.sleep(0.2)
    assert (await state_of(gw, call["id"]))["state"] == "ringing"
    await phone.answer(invite, 200, sdp_offer(phone.rtp_port, "0 101"))
    ack = await phone.expect("ACK")
    assert ack.cseq == (invite.cseq[0], "ACK")
    # the phone did not get that ACK and sends its 200 again: the ACK goes again
    await phone.answer(invite, 200, sdp_offer(phone.rtp_port, "0 101"))
    again = await phone.expect("ACK")
    assert again.cseq == ack.cseq and again.top_via.branch == ack.top_via.branch
    packets = await phone.heard(gw, 100)
    assert len(packets) == 100
    assert_tone(decode(packets), 440, rate=8000, min_seconds=2.0)
    info = await state_of(gw, call["id"])
    assert info["state"] == "active" and info["codec"] == "PCMU" and info["packets"] == 100
    bye = await hang_up_by_api(gw, call, phone)
    assert bye.call_id == invite.call_id
    ended = await state_of(gw, call["id"])
    assert ended["state"] == "ended" and "API" in ended["end_reason"]
    assert await phone.heard(gw, 25) == []
    await phone.close()


async def test_dial_out_follows_a_redirect_and_answers_a_digest_challenge(gateway_factory):
    gw = await start(gateway_factory, stepped=True,
                     credentials=[{"realm": "pbx", "user": "gw", "password": "s3cret"}])
    send_tone(gw, "room", 440)
    front = Phone(gw.gateway.sip.port, "front")
    alice = Phone(gw.gateway.sip.port, "alice")
    call = await dial(gw, f"sip:front@127.0.0.1:{front.port}")
    first = await front.expect("INVITE")
    await front.answer(first, 302, extra=f"Contact: <sip:alice@127.0.0.1:{alice.port}>\r\n")
    await front.expect("ACK")
    second = await alice.expect("INVITE")
    assert second.uri.user == "alice" and second.call_id == first.call_id
    server = DigestServer("pbx", b"0123456789abcdef0123456789abcdef")
    now = 1000.0
    challenge = server.challenges(now)[-1]  # MD5
    await alice.answer(second, 407, extra=f"Proxy-Authenticate: {challenge}\r\n")
    await alice.expect("ACK")
    third = await alice.expect("INVITE")
    credentials = parse_credentials(third.headers.get("Proxy-Authorization") or "")
    assert server.verify(credentials, "INVITE", lambda user: "s3cret" if user == "gw" else None,
                         now + 1).ok
    assert third.cseq[0] > second.cseq[0]
    await alice.answer(third, 200, sdp_offer(alice.rtp_port, "8"))
    await alice.expect("ACK")
    packets = await alice.heard(gw, 75)
    assert len(packets) == 75
    assert_tone(decode(packets, pt=8), 440, rate=8000, min_seconds=1.5)
    info = await state_of(gw, call["id"])
    assert info["state"] == "active" and info["uri"].startswith("sip:front@")
    await hang_up_by_api(gw, call, alice)
    await front.close()
    await alice.close()


async def test_dial_out_busy_is_reported(gateway_factory):
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    call = await dial(gw, f"sip:bob@127.0.0.1:{phone.port}")
    invite = await phone.expect("INVITE")
    await phone.answer(invite, 486)
    await phone.expect("ACK")
    await asyncio.sleep(0.1)
    info = await state_of(gw, call["id"])
    assert info["state"] == "ended" and info["status"] == 486
    assert gw.gateway.sip.ports.in_use == set()
    await phone.close()


async def test_unanswered_dial_out_is_cancelled_at_its_timeout(gateway_factory):
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    call = await dial(gw, f"sip:bob@127.0.0.1:{phone.port}", timeout_s=1.0)
    invite = await phone.expect("INVITE")
    await phone.answer(invite, 180)
    cancel = await phone.expect("CANCEL", timeout=4.0)
    assert cancel.top_via.branch == invite.top_via.branch
    await phone.answer(cancel, 200)
    await phone.answer(invite, 487)
    await phone.expect("ACK")
    await asyncio.sleep(0.1)
    info = await state_of(gw, call["id"])
    assert info["state"] == "ended" and info["end_reason"] == "no answer"
    await phone.close()


async def test_a_dial_out_with_no_response_at_all_ends_at_its_timeout(gateway_factory):
    """No provisional response: no CANCEL may be sent (RFC 3261 §9.1), but the call ends
    at its timeout, not when the INVITE transaction gives up 32 s later; a 200 that
    comes after that is ACKed and hung up."""
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    call = await dial(gw, f"sip:bob@127.0.0.1:{phone.port}", timeout_s=1.0)
    invite = await phone.expect("INVITE")
    await asyncio.sleep(1.3)
    info = await state_of(gw, call["id"])
    assert info["state"] == "ended" and info["end_reason"] == "no answer", info
    assert gw.gateway.sip.calls == {} and gw.gateway.sip.ports.in_use == set()
    await phone.answer(invite, 200, sdp_offer(phone.rtp_port, "0"))  # far too late
    await phone.expect("ACK")
    bye = await phone.expect("BYE")
    await phone.answer(bye, 200)
    await phone.close()


async def test_delete_while_ringing_cancels_and_a_crossing_200_gets_ack_and_bye(gateway_factory):
    gw = await start(gateway_factory)
    phone = Phone(gw.gateway.sip.port)
    call = await dial(gw, f"sip:bob@127.0.0.1:{phone.port}")
    invite = await phone.expect("INVITE")
    await phone.answer(invite, 180)
    await asyncio.sleep(0.1)
    status, _ = await api(gw, "DELETE", f"/api/v1/streams/room/outputs/{call['id']}")
    assert status == 204
    cancel = await phone.expect("CANCEL")
    await phone.answer(cancel, 200)
    # The phone answered just before it saw the CANCEL: the 200 crosses it.
    await phone.answer(invite, 200, sdp_offer(phone.rtp_port, "0"))
    await phone.expect("ACK")
    bye = await phone.expect("BYE")
    await phone.answer(bye, 200)
    assert gw.gateway.sip.calls == {}


async def test_dial_out_bad_requests(gateway_factory):
    gw = await start(gateway_factory)
    cases = [
        ({"type": "sip"}, "uri"),
        ({"type": "sip", "uri": "mailto:x@y"}, "uri"),
        ({"type": "sip", "uri": "sip:x@no-such-host.invalid"}, "uri"),
        ({"type": "sip", "uri": "nobody"}, "uri"),  # not a registered user
        ({"type": "sip", "uri": "sip:a@127.0.0.1", "timeout_s": 0}, "timeout_s"),
        ({"type": "sip", "uri": "sip:a@127.0.0.1", "codec": "PCMU"}, "codec"),
    ]
    for body, field in cases:
        status, problem = await api(gw, "POST", "/api/v1/streams/room/outputs", body)
        assert status == 400, (body, problem)
        assert problem["errors"][0]["field"] == field, (body, problem)
    assert gw.gateway.sip.calls == {}


async def test_an_answer_naming_a_host_name_is_hung_up_and_releases_the_call(gateway_factory):
    gw = await start(gateway_factory, stepped=True)
    phone = Phone(gw.gateway.sip.port, "alice")
    call = await dial(gw, f"sip:alice@127.0.0.1:{phone.port}")
    invite = await phone.expect("INVITE")
    await phone.answer(invite, 200, sdp_offer(phone.rtp_port, address="phone.example.org"))
    await phone.expect("ACK")
    bye = await phone.expect("BYE")
    await phone.answer(bye, 200)
    ended = await state_of(gw, call["id"])
    assert ended["state"] == "ended" and "not an IP address" in ended["end_reason"], ended
    assert gw.gateway.sip.calls == {} and gw.gateway.sip.ports.in_use == set()
    assert await phone.heard(gw, 15) == []
    await phone.close()


async def test_a_refused_upstream_registration_says_which_and_why(gateway_factory, caplog):
    """Two registrations to one registrar, one refused: the API and the log tell them
    apart by their address of record, and say why the refused one failed."""
    registrar = Phone(0)  # stands for the PBX: answers as told
    uri = f"sip:127.0.0.1:{registrar.port}"
    gw = await start(gateway_factory, registrations=[
        {"registrar": uri, "user": "good", "password": "right"},
        {"registrar": uri, "user": "bad", "password": "wrong"}])
    for _ in range(2):
        register = await registrar.expect("REGISTER")
        await registrar.answer(register, 200 if "good@" in register.headers.get("To") else 403)
    for _ in range(100):
        status, sip = await api(gw, "GET", "/api/v1/sip")
        states = {r["aor"]: r for r in sip["registrations"]}
        if {r["state"] for r in states.values()} == {"registered", "failed"}:
            break
        await asyncio.sleep(0.02)
    good, bad = states["sip:good@127.0.0.1"], states["sip:bad@127.0.0.1"]
    assert (good["state"], good["last_error"]) == ("registered", None), good
    assert bad["state"] == "failed" and "403" in bad["last_error"], bad
    [warning] = [r.getMessage() for r in caplog.records if "registration of sip:bad@" in
                 r.getMessage()]
    assert "failed" in warning and "403" in warning, warning
    await registrar.close()


async def test_a_registration_that_cannot_be_sent_says_why(gateway_factory):
    """A registrar whose name cannot be resolved: the API says so, not "no response"."""
    gw = await start(gateway_factory, registrations=[
        {"registrar": "sip:a..b", "user": "gw", "password": "pw"}])
    for _ in range(100):
        _, sip = await api(gw, "GET", "/api/v1/sip")
        [registration] = sip["registrations"]
        if registration["state"] == "failed":
            break
        await asyncio.sleep(0.02)
    assert registration["last_error"].startswith("cannot send: cannot resolve 'a..b'"), \
        registration
