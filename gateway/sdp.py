"""Sans-IO SDP for plain RTP and SIP: read a peer's audio section, write an answer.

Only what an audio gateway needs (RFC 4566 / RFC 3264): the first audio section, its
address and port, codecs by payload type, telephone-event (RFC 4733), direction and
hold, ptime. Everything else in the description is ignored.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field

from .codecs.spec import PTIMES, CodecSpec, codec_by_name

STATIC = {0: "PCMU", 8: "PCMA", 9: "G722"}
MAX_SDP = 16384
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: The direction to answer with, given the offer's (RFC 3264 §6.1).
ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
#: Codecs the gateway prefers, best first, when choosing among the offered ones.
PREFERENCE = ("opus", "G722", "PCMU", "PCMA")


class SdpError(ValueError):
    """The description cannot be used; the message says why.

    ``warning`` is the SIP Warning code a 488 carries for it (RFC 3261 §20.43)."""

    def __init__(self, message: str, warning: int = 304) -> None:
        super().__init__(message)
        self.warning = warning


@dataclass
class AudioDescription:
    address: str  # where the peer wants RTP (media-level c= over session-level)
    port: int
    codecs: dict[int, CodecSpec] = field(default_factory=dict)  # in the peer's order
    telephone_event: int | None = None
    direction: str = "sendrecv"
    ptime: int | None = None
    profile: str = "RTP/AVP"  # RTP/SAVP: the peer wants SRTP
    crypto: list[str] = field(default_factory=list)  # a=crypto values (SDES keys)

    @property
    def savp(self) -> bool:
        """The peer asks for SRTP by its profile (RTP/SAVP, RTP/SAVPF)."""
        return self.profile.upper() in ("RTP/SAVP", "RTP/SAVPF")

    @property
    def secure(self) -> bool:
        """The peer asks for SRTP, or offers keys with plain RTP/AVP."""
        return self.savp or bool(self.crypto)

    @property
    def on_hold(self) -> bool:
        """The peer does not want to receive (RFC 3264 §8.4, and the old c=0.0.0.0)."""
        ip = _ip(self.address)
        return self.direction in ("sendonly", "inactive") or bool(ip and ip.is_unspecified)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as an IP (IPv4-mapped IPv6 as IPv4), None for anything else."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_audio(sdp: str) -> AudioDescription:
    """The first audio section of ``sdp``; SdpError if there is none we can use."""
    if len(sdp) > MAX_SDP:
        raise SdpError(f"SDP larger than {MAX_SDP} bytes")
    session_address = ""
    media_address = ""
    session_direction = "sendrecv"
    direction: str | None = None
    port: int | None = None
    formats: list[int] = []
    rtpmap: dict[int, tuple[str, int]] = {}
    ptime: int | None = None
    profile = "RTP/AVP"
    crypto: list[str] = []
    section = "session"
    for raw in sdp.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if section == "audio":
                break  # only the first audio section
            parts = value.split()
            if len(parts) >= 4 and parts[0] == "audio" and port is None:
                section = "audio"
                profile = parts[2]
                try:
                    port = int(parts[1].split("/")[0])
                    formats = [_payload_type(f) for f in parts[3:]]
                except ValueError:
                    raise SdpError(f"bad media line: {line!r}") from None
            else:
                section = "other"
        elif kind == "c":
            parts = value.split()
            if len(parts) < 3:
                raise SdpError(f"bad connection line: {line!r}")
            address = parts[2].split("/")[0]
            if section == "session":
                session_address = address
            elif section == "audio":
                media_address = address
        elif kind == "a" and section in ("session", "audio"):
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if section == "session":
                    session_direction = name
                else:
                    direction = name
            elif section == "audio" and name == "rtpmap":
                try:
                    pt_text, encoding = arg.split(None, 1)
                    enc_name, rate = encoding.split("/")[:2]
                    rtpmap[_payload_type(pt_text)] = (enc_name, int(rate))
                except ValueError:
                    raise SdpError(f"bad rtpmap: {line!r}") from None
            elif section == "audio" and name == "crypto":
                crypto.append(arg.strip())
            elif section == "audio" and name == "ptime":
                try:
                    ptime = int(float(arg))
                except ValueError:
                    raise SdpError(f"bad ptime: {line!r}") from None
    if port is None:
        raise SdpError("SDP has no audio section")
    if not 0 <= port < 65536:
        raise SdpError(f"audio port must be 0-65535, got {port}")
    desc = AudioDescription(
        address=media_address or session_address,
        port=port,
        direction=direction or session_direction,
        ptime=ptime,
        profile=profile,
        crypto=crypto,
    )
    if not desc.address:
        raise SdpError("SDP has no connection address (c=) for audio")
    for pt in formats:
        enc_name, rate = rtpmap.get(pt, (STATIC.get(pt, ""), 0))
        if enc_name.lower() == "telephone-event" and rate == 8000:
            desc.telephone_event = pt
            continue
        try:
            desc.codecs[pt] = codec_by_name(enc_name, rate if enc_name.lower() == "l16" else None)
        except ValueError:
            continue  # CN, codecs we do not speak
    if not desc.codecs:
        offered = ", ".join(rtpmap.get(pt, (STATIC.get(pt, str(pt)), 0))[0] for pt in formats)
        raise SdpError(f"no audio codec in common (offered: {offered or 'none'})")
    return desc


def _payload_type(text: str) -> int:
    """An RTP payload type: 7 bits (RFC 3550), else ValueError (a bad line)."""
    pt = int(text)
    if not 0 <= pt <= 127:
        raise ValueError(f"payload type {pt} is not 0-127")
    return pt


def check_target(desc: AudioDescription, initial: bool) -> bool:
    """SdpError unless RTP may go where ``desc`` says: one unicast IP address, a real port;
    True for the hold address (nowhere to send).

    No host names (answering would wait on DNS), no broadcast or multicast (one INVITE
    must not make the gateway flood a network), no port 0 (the stream is refused). The
    unspecified address (c=0.0.0.0) is the old way to hold (RFC 3264 §8.4): fine in a
    re-offer, meaningless in a call's ``initial`` offer.
    """
    ip = _ip(desc.address)
    if ip is None:
        raise SdpError(f"connection address {desc.address[:60]!r} is not an IP address "
                       "(host names are not resolved)", 301)
    if desc.port == 0:
        raise SdpError("audio port 0: the offer refuses the audio stream")
    if ip.is_unspecified:
        if initial:
            raise SdpError(f"connection address {ip} (hold) in an initial offer", 301)
        return True
    if ip.is_multicast:
        raise SdpError(f"multicast connection address {ip}: calls are unicast", 330)
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        raise SdpError(f"broadcast connection address {ip}", 301)
    return False


def choose_codec(desc: AudioDescription, preference: tuple[str, ...] = PREFERENCE):
    """(payload type, codec) of the best codec both sides have."""
    for name in preference:
        for pt, spec in desc.codecs.items():
            if spec.name.lower() == name.lower():
                return pt, spec
    raise SdpError("no audio codec in common")


def build_audio(
    address: str,
    port: int,
    codecs: list[tuple[int, CodecSpec]],
    telephone_event: int | None = None,
    direction: str = "sendrecv",
    ptime: int = 20,
    session_id: int | None = None,
    version: int = 1,
    profile: str = "RTP/AVP",
    crypto: str | None = None,
) -> str:
    """A complete description with one audio section: an answer (one codec) or an offer;
    ``crypto``: our SDES ``a=crypto`` value (with ``profile`` RTP/SAVP, or RTP/AVP when the
    offer put keys on a plain profile)."""
    net = "IP6" if ":" in address else "IP4"
    sid = session_id if session_id is not None else secrets.randbits(31)
    formats = [pt for pt, _ in codecs] + ([telephone_event] if telephone_event is not None else [])
    lines = [
        "v=0",
        f"o=gateway {sid} {version} IN {net} {address}",
        "s=audio-gateway",
        f"c=IN {net} {address}",
        "t=0 0",
        f"m=audio {port} {profile} {' '.join(map(str, formats))}",
    ]
    for pt, spec in codecs:
        lines.append(f"a=rtpmap:{pt} {spec.rtpmap}")
        if spec.fmtp and spec.name == "opus":
            lines.append(f"a=fmtp:{pt} {spec.fmtp}")
    if telephone_event is not None:
        lines += [
            f"a=rtpmap:{telephone_event} telephone-event/8000",
            f"a=fmtp:{telephone_event} 0-16",
        ]
    if crypto is not None:
        lines.append(f"a=crypto:{crypto}")
    lines += [f"a=ptime:{ptime}", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def offer_codecs(names: tuple[str, ...] = PREFERENCE) -> list[tuple[int, CodecSpec]]:
    """(payload type, codec) for an offer, in preference order, static types where they exist."""
    return [(spec.payload_type, spec) for spec in (codec_by_name(n) for n in names)]


def answer(
    offer: AudioDescription,
    address: str,
    port: int,
    preference: tuple[str, ...] = PREFERENCE,
    session_id: int | None = None,
    version: int = 1,
    crypto: str | None = None,
) -> tuple[str, int, CodecSpec]:
    """(answer SDP, payload type, codec) for an offer: best common codec, mirrored direction.

    A re-INVITE's answer passes the dialog's ``session_id`` and a bumped ``version``.
    """
    pt, spec = choose_codec(offer, preference)
    sdp = build_audio(
        address,
        port,
        [(pt, spec)],
        offer.telephone_event,
        ANSWER_DIRECTION[offer.direction],
        ptime=offer.ptime if offer.ptime in PTIMES[spec.name.lower()] else 20,
        session_id=session_id,
        version=version,
        profile=offer.profile if crypto is not None else "RTP/AVP",
        crypto=crypto,
    )
    return sdp, pt, spec
