"""SIP over TLS (RFC 3261 §26): the contexts for the TLS port and for connecting out.

The server context presents ``sip.tls_cert``; with ``tls_verify_client`` it asks phones
for a certificate signed by ``sip.tls_ca``. The client context (dial-out, upstream
registrars, requests to a phone's TLS Contact) verifies the server's certificate and
name against ``tls_ca``, or the system's CAs.
"""

from __future__ import annotations

import ssl

from ..config import ConfigError, SipConfig


def contexts(config: SipConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext]:
    """(server context or None when TLS is not configured, client context)."""
    try:
        client = ssl.create_default_context(cafile=config.tls_ca or None)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.tls_cert is None or config.tls_key is None:
            return None, client
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        server.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_verify_client:
            server.verify_mode = ssl.CERT_REQUIRED
            if config.tls_ca:
                server.load_verify_locations(config.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"sip.tls_cert / tls_key / tls_ca: cannot load: {exc}") from None
    return server, client
