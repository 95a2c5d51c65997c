"""The two places where the gateway must reach into aiortc/aioice, kept in one module.

1. Host candidate addresses. aioice gathers every interface address except 127.0.0.1.
   A media server must advertise the addresses its operator names (loopback for tests,
   the container address, ...), so gathering is redirected to a configured list.
2. DTLS cipher suites. aiortc offers only ECDHE-ECDSA suites, so a peer with an RSA
   certificate (GStreamer's webrtcbin, Janus) fails with "no shared cipher" when
   aiortc is the DTLS client. ECDHE-RSA AES-GCM suites are added.
"""

from __future__ import annotations

from collections.abc import Sequence

import aioice.ice
from aiortc.rtcdtlstransport import RTCCertificate

_original_get_host_addresses = aioice.ice.get_host_addresses
_host_addresses: list[str] = []

CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
)


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _host_addresses:
        return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def set_host_addresses(addresses: Sequence[str]) -> None:
    """Gather ICE host candidates on exactly these addresses (empty: all interfaces)."""
    _host_addresses[:] = list(addresses)
    aioice.ice.get_host_addresses = _get_host_addresses


_original_create_ssl_context = RTCCertificate._create_ssl_context


def _create_ssl_context(self, srtp_profiles):  # type: ignore[no-untyped-def]
    ctx = _original_create_ssl_context(self, srtp_profiles)
    ctx.set_cipher_list(CIPHERS)
    return ctx


def allow_rsa_dtls_peers() -> None:
    """Let aiortc's DTLS handshake complete with peers whose certificate is RSA."""
    RTCCertificate._create_ssl_context = _create_ssl_context  # type: ignore[method-assign]
