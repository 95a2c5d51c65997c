"""Sans-IO SDP: reading peers' audio sections and answering them (RFC 3264)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.spec import G722, OPUS, PCMA, PCMU
from gateway.sdp import SdpError, answer, check_target, parse_audio

BARESIP = (
    "v=0\r\no=- 123 456 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 10000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)


def test_reads_a_phone_offer():
    desc = parse_audio(BARESIP)
    assert (desc.address, desc.port) == ("127.0.0.1", 10000)
    assert desc.codecs == {0: PCMU, 8: PCMA}
    assert desc.telephone_event == 101 and desc.direction == "sendrecv" and not desc.on_hold


def test_media_level_connection_and_direction_win():
    sdp = BARESIP.replace("a=sendrecv\r\n", "c=IN IP4 127.0.0.2\r\na=sendonly\r\n")
    desc = parse_audio(sdp)
    assert desc.address == "127.0.0.2" and desc.direction == "sendonly" and desc.on_hold


def test_static_payload_types_without_rtpmap_and_wideband_preferred():
    sdp = "v=0\r\nc=IN IP6 ::1\r\nm=audio 4000 RTP/AVP 0 9 13\r\n"
    desc = parse_audio(sdp)
    assert desc.codecs == {0: PCMU, 9: G722}
    text, pt, spec = answer(desc, "::1", 5000)
    assert (pt, spec) == (9, G722)
    assert "c=IN IP6 ::1" in text and "m=audio 5000 RTP/AVP 9" in text


def test_answer_mirrors_direction_and_keeps_telephone_event():
    text, pt, spec = answer(parse_audio(BARESIP.replace("sendrecv", "sendonly")), "127.0.0.1", 6000)
    assert (pt, spec) == (0, PCMU)
    assert "a=recvonly" in text
    assert "m=audio 6000 RTP/AVP 0 101" in text and "a=rtpmap:101 telephone-event/8000" in text
    back = parse_audio(text)
    assert back.codecs == {0: PCMU} and back.telephone_event == 101


def test_opus_dynamic_payload_type_is_kept():
    sdp = BARESIP.replace("RTP/AVP 0 8 101", "RTP/AVP 96 0").replace(
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:96 opus/48000/2\r\na=rtpmap:0 PCMU/8000"
    )
    _, pt, spec = answer(parse_audio(sdp), "127.0.0.1", 6000)
    assert (pt, spec) == (96, OPUS)


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 4000 RTP/AVP 96\r\n", "no audio section"),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 3\r\n", "no audio codec in common"),
        ("v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "no connection address"),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n", "bad media line"),
        ("v=0\r\nc=IN\r\n", "bad connection line"),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 999\r\n"
         "a=rtpmap:999 PCMU/8000\r\n", "bad media line"),  # payload types are 7 bits
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP -1\r\n", "bad media line"),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n"
         "a=rtpmap:128 PCMU/8000\r\n", "bad rtpmap"),
        ("v=0\r\n" + "a=x\r\n" * 5000, "larger than"),
    ],
)
def test_unusable_descriptions_say_why(sdp, words):
    with pytest.raises(SdpError, match=words):
        parse_audio(sdp)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_raises_only_sdp_error(text):
    try:
        parse_audio(text)
    except SdpError:
        pass


def _offer(address: str, port: int = 4000) -> str:
    return f"v=0\r\nc=IN IP4 {address}\r\nm=audio {port} RTP/AVP 0\r\n"


@pytest.mark.parametrize(("address", "port", "initial", "warning", "words"), [
    ("pbx.example.org", 4000, True, 301, "not an IP address"),
    ("pbx.example.org", 4000, False, 301, "not an IP address"),
    ("255.255.255.255", 4000, False, 301, "broadcast"),
    ("::ffff:255.255.255.255", 4000, True, 301, "broadcast"),
    ("239.1.2.3", 4000, True, 330, "multicast"),
    ("ff0e::1", 4000, False, 330, "multicast"),
    ("0.0.0.0", 4000, True, 301, "initial offer"),
    ("::", 4000, True, 301, "initial offer"),
    ("192.0.2.7", 0, True, 304, "port 0"),
    ("0.0.0.0", 0, False, 304, "port 0"),
])
def test_media_targets_rtp_must_not_go_to(address, port, initial, warning, words):
    with pytest.raises(SdpError, match=words) as raised:
        check_target(parse_audio(_offer(address, port)), initial)
    assert raised.value.warning == warning


@pytest.mark.parametrize(("address", "initial", "hold"), [
    ("192.0.2.7", True, False),
    ("2001:db8::7", True, False),
    ("127.0.0.1", False, False),
    ("0.0.0.0", False, True),  # RFC 2543 hold in a re-offer
    ("0:0::0", False, True),
])
def test_unicast_targets_and_hold_in_a_reoffer_are_fine(address, initial, hold):
    desc = parse_audio(_offer(address))
    assert check_target(desc, initial) is hold
    assert desc.on_hold is hold
