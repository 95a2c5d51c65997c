"""SRTP for SIP calls with keys in the SDP (SDES, RFC 4568), sans-IO but for libsrtp.

An offer's ``a=crypto:<tag> <suite> inline:<base64 key and salt>`` lines name the keys
the phone sends with; the answer picks the first suite we support and gives our own key
under the same tag. Keys travel in the SDP, so they are only as secret as the signalling:
use SIP over TLS with SRTP (``sip.srtp`` in docs/sip.md). libsrtp (pylibsrtp, which
aiortc already uses) protects and unprotects the packets.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass

from pylibsrtp import Error as SrtpLibError
from pylibsrtp import Policy, Session

from ..sdp import SdpError

#: The SDES suites we answer (RFC 4568 §6.2), best first.
SUITES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_BYTES = 30  # 128-bit master key + 112-bit master salt


class SdesError(SdpError):
    """An offer's crypto lines cannot be used (a 488 for the call)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, warning=302)


class SrtpError(ValueError):
    """A packet failed authentication or replay checks (dropped and counted)."""


@dataclass(frozen=True)
class Crypto:
    tag: int
    suite: str
    key: bytes

    def line(self) -> str:
        """The ``a=crypto:`` value."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def parse_crypto(value: str) -> Crypto | None:
    """One ``a=crypto:`` value; None for suites or key parameters we do not support
    (lifetimes and MKIs included: the first inline key without them is used)."""
    parts = value.split()
    if len(parts) < 3 or parts[1] not in SUITES or not parts[0].isdigit():
        return None
    for param in parts[2].split(";"):
        if not param.startswith("inline:"):
            continue
        fields = param[len("inline:"):].split("|")
        if len(fields) > 2 or (len(fields) == 2 and ":" in fields[1]):
            continue  # an MKI: not supported
        try:
            key = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return Crypto(int(parts[0]), parts[1], key)
    return None


def _protected(protect: Callable[[bytes], bytes], packet: bytes) -> bytes:
    try:
        return protect(packet)
    except (SrtpLibError, ValueError):  # ValueError: longer than libsrtp takes
        return b""


def _unprotected(unprotect: Callable[[bytes], bytes], packet: bytes) -> bytes:
    try:
        return unprotect(packet)
    except (SrtpLibError, ValueError) as exc:
        raise SrtpError(str(exc)) from None


class SrtpPair:
    """Our sending session (our key) and the phone's (its key), one suite. Nothing here
    raises into the media path: a packet that cannot be protected is b"" (not sent, the
    output counts an error), one that does not unprotect is an SrtpError (dropped and
    counted by the call's media)."""

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes) -> None:
        profile = SUITES[suite]
        self.suite = suite
        self._tx = Session(Policy(key=local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=profile))
        self._rx = Session(Policy(key=remote_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                  srtp_profile=profile))

    def protect(self, rtp: bytes) -> bytes:
        return _protected(self._tx.protect, rtp)

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        return _protected(self._tx.protect_rtcp, rtcp)

    def unprotect(self, srtp: bytes) -> bytes:
        return _unprotected(self._rx.unprotect, srtp)

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        return _unprotected(self._rx.unprotect_rtcp, srtcp)


def answer(offered: list[Crypto]) -> tuple[Crypto, SrtpPair]:
    """Our crypto line for the first offered suite we support, and the sessions."""
    if not offered:
        raise SdesError("no usable a=crypto line (SDES AES_CM_128_HMAC_SHA1_80/_32)")
    theirs = offered[0]
    ours = Crypto(theirs.tag, theirs.suite, os.urandom(KEY_BYTES))
    return ours, SrtpPair(theirs.suite, ours.key, theirs.key)


def offer(suite: str = "AES_CM_128_HMAC_SHA1_80") -> Crypto:
    """Our key for an offer (dial-out with ``sip.srtp = "required"``)."""
    return Crypto(1, suite, os.urandom(KEY_BYTES))


def accept(mine: Crypto, answered: list[str]) -> SrtpPair:
    """The sessions from our offered key and the answer's a=crypto values (same tag and
    suite, RFC 4568 §5.1.3); SdesError if the answer has none."""
    for value in answered:
        theirs = parse_crypto(value)
        if theirs is not None and (theirs.tag, theirs.suite) == (mine.tag, mine.suite):
            return SrtpPair(mine.suite, mine.key, theirs.key)
    raise SdesError("the answer has no a=crypto line for our offer: SRTP required")
