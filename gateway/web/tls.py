"""HTTPS: the server certificate from PEM files, reloaded on SIGHUP.

Browsers grant the microphone only to secure pages, so anything beyond localhost needs
HTTPS. A renewed certificate (certbot, cert-manager) is picked up by ``reload`` without
dropping a session: connections already open keep theirs, new ones get the new one. The
files are loaded into a scratch context first, so a half-written or mismatched pair is
refused (logged) and the one in use stays.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from ..config import ConfigError, HttpConfig

log = logging.getLogger(__name__)


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ServerTls:
    """The server side of HTTPS: ``context`` for the listening site."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = _context()
        self.reloads = 0
        self._load(self.context)

    def _load(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.cert, self.key)

    def reload(self) -> bool:
        """Load the files again (SIGHUP); on any error keep serving the current pair."""
        try:
            self._load(_context())  # a bad pair fails here, not in the live context
            self._load(self.context)
        except (OSError, ssl.SSLError) as exc:
            log.error("https: keeping the current certificate; cannot load %s / %s: %s",
                      self.cert, self.key, exc)
            return False
        self.reloads += 1
        log.info("https: certificate reloaded from %s", self.cert)
        return True


def server_tls(http: HttpConfig) -> ServerTls | None:
    """The configured HTTPS certificate, or None for plain HTTP; ConfigError if unusable."""
    if http.tls_cert is None or http.tls_key is None:
        return None
    try:
        return ServerTls(Path(http.tls_cert), Path(http.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http.tls_cert / http.tls_key: cannot load {http.tls_cert} and "
                          f"{http.tls_key}: {exc}") from None
