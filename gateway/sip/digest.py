"""Sans-IO Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Parsing and writing of challenge and credential header values, the client's answer to a
challenge, and a server that issues stateless nonces (a timestamp signed with HMAC, so
no table of issued nonces is kept) and checks answers. No sockets and no clock: callers
pass ``now`` in. ``qop=auth`` and the old no-qop form (RFC 2069, still spoken by some
phones) are supported; ``qop=auth-int`` is refused cleanly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from string import ascii_letters, digits

#: What we can compute, in the order a server should offer them (RFC 7616 §3.7).
ALGORITHMS = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
_CANONICAL = {name.upper(): name for name in ALGORITHMS}
_HASHES = {"MD5": "md5", "SHA-256": "sha256"}
#: Header values longer than this are refused before parsing.
MAX_HEADER = 8192

_WS = " \t\r\n"
_TCHAR = frozenset("!#$%&'*+-.^_`|~" + digits + ascii_letters)
#: Unquoted values are read leniently (some phones leave base64 nonces unquoted).
_BARE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', ","}
_NC = re.compile(r"[0-9a-fA-F]{8}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of 8 + 8 + 16 bytes, unpadded
_NONCE_MAC = 16


class DigestError(ValueError):
    """A header value or argument cannot be used; the message says why."""


# --- header syntax ----------------------------------------------------------------------


def _check_text(name: str, value: object) -> None:
    """Refuse control characters: they would break or inject into the header we write."""
    if not isinstance(value, str):
        raise DigestError(f"{name} must be a string, got {type(value).__name__}")
    if any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value):
        raise DigestError(f"{name} contains a control character")


def _check_token(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or not set(value) <= _TCHAR:
        raise DigestError(f"{name} must be a token, got {value!r}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _scan(text: str, pos: int, allowed: frozenset[str]) -> int:
    while pos < len(text) and text[pos] in allowed:
        pos += 1
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """The unescaped quoted-string starting at ``text[pos] == '"'``, and the index after it."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        c = text[pos]
        if c == "\\":
            pos += 1
            if pos == len(text):
                break
            c = text[pos]
        elif c == '"':
            return "".join(out), pos + 1
        if (ord(c) < 0x20 and c != "\t") or c == "\x7f":
            raise DigestError("control character in quoted string")
        out.append(c)
        pos += 1
    raise DigestError("unterminated quoted string")


def _parse_params(value: str) -> dict[str, str]:
    """Parameters of a ``Digest`` header value, names lower-cased (RFC 7235 §2.1 syntax)."""
    if not isinstance(value, str):
        raise DigestError(f"header value must be a string, got {type(value).__name__}")
    if len(value) > MAX_HEADER:
        raise DigestError(f"header value longer than {MAX_HEADER} characters")
    start = _skip_ws(value, 0)
    pos = _scan(value, start, _TCHAR)
    scheme = value[start:pos]
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest header: scheme {scheme or value[:20]!r}")
    if pos < len(value) and value[pos] not in _WS:
        raise DigestError("no space after the Digest scheme")
    params: dict[str, str] = {}
    expect_comma = False
    while True:
        pos = _skip_ws(value, pos)
        if pos == len(value):
            return params
        if value[pos] == ",":
            pos, expect_comma = pos + 1, False
            continue
        if expect_comma:
            raise DigestError(f"expected ',' at position {pos}")
        end = _scan(value, pos, _TCHAR)
        if end == pos:
            raise DigestError(f"expected a parameter name at position {pos}")
        name = value[pos:end].lower()
        pos = _skip_ws(value, end)
        if pos == len(value) or value[pos] != "=":
            raise DigestError(f"parameter {name!r} has no value (or a second challenge)")
        pos = _skip_ws(value, pos + 1)
        if pos < len(value) and value[pos] == '"':
            param, pos = _quoted(value, pos)
        else:
            end = _scan(value, pos, _BARE)
            if end == pos:
                raise DigestError(f"parameter {name!r} has an empty value")
            param, pos = value[pos:end], end
        if name in params:
            raise DigestError(f"parameter {name!r} given twice")
        params[name] = param
        expect_comma = True


def _algorithm(name: str) -> str:
    """The canonical spelling of a known algorithm (values are matched case-insensitively)."""
    return _CANONICAL.get(name.upper(), name) if isinstance(name, str) else name


# --- values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate``/``Proxy-Authenticate`` Digest challenge.

    ``qop`` holds the offered options; empty means the RFC 2069 form without qop.
    """

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    def __post_init__(self) -> None:
        _check_text("realm", self.realm)
        _check_text("nonce", self.nonce)
        if self.opaque is not None:
            _check_text("opaque", self.opaque)
        object.__setattr__(self, "algorithm", _algorithm(self.algorithm))
        _check_token("algorithm", self.algorithm)
        if isinstance(self.qop, str):
            raise DigestError("qop must be a tuple of options, not a string")
        qop = tuple(self.qop)
        for option in qop:
            _check_token("qop option", option)
        object.__setattr__(self, "qop", tuple(o.lower() for o in qop))
        object.__setattr__(self, "stale", bool(self.stale))

    def to_header(self) -> str:
        """The header value, ``Digest realm="...", ...``."""
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=TRUE")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f'qop="{",".join(self.qop)}"')
        return "Digest " + ", ".join(parts)

    __str__ = to_header


@dataclass(frozen=True)
class Credentials:
    """An ``Authorization``/``Proxy-Authorization`` Digest answer.

    ``nc`` is kept as the 8 hex digits sent, because the response hashes that exact text.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None

    def __post_init__(self) -> None:
        for name in ("username", "realm", "nonce", "uri", "response"):
            _check_text(name, getattr(self, name))
        for name in ("cnonce", "opaque"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name))
        object.__setattr__(self, "algorithm", _algorithm(self.algorithm))
        _check_token("algorithm", self.algorithm)
        if self.qop is not None:
            _check_token("qop", self.qop)
            object.__setattr__(self, "qop", self.qop.lower())
            if self.cnonce is None or self.nc is None:
                raise DigestError("cnonce and nc are required with qop")
        if self.nc is not None and not (isinstance(self.nc, str) and _NC.fullmatch(self.nc)):
            raise DigestError(f"nc must be 8 hex digits, got {self.nc!r}")
        if self.algorithm.upper().endswith("-SESS") and self.cnonce is None:
            raise DigestError(f"{self.algorithm} needs a cnonce")

    def to_header(self) -> str:
        """The header value, ``Digest username="...", ...``."""
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        return "Digest " + ", ".join(parts)

    __str__ = to_header


def parse_challenge(value: str) -> Challenge:
    """A ``WWW-Authenticate``/``Proxy-Authenticate`` value; unknown parameters are ignored."""
    params = _parse_params(value)
    for name in ("realm", "nonce"):
        if name not in params:
            raise DigestError(f"challenge has no {name}")
    qop = tuple(o.strip() for o in params["qop"].split(",") if o.strip()) if "qop" in params else ()
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def parse_credentials(value: str) -> Credentials:
    """An ``Authorization``/``Proxy-Authorization`` value; unknown parameters are ignored."""
    params = _parse_params(value)
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in params:
            raise DigestError(f"credentials have no {name}")
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm", "MD5"),
        cnonce=params.get("cnonce"),
        nc=params.get("nc"),
        qop=params.get("qop"),
        opaque=params.get("opaque"),
    )


# --- computing responses ----------------------------------------------------------------


def _split_algorithm(algorithm: str) -> tuple[str, bool]:
    """(hashlib name, is -sess) for a supported algorithm."""
    canonical = _algorithm(algorithm)
    if canonical not in ALGORITHMS:
        raise DigestError(f"unsupported algorithm {algorithm!r}")
    return _HASHES[canonical.partition("-sess")[0]], canonical.endswith("-sess")


def _hex(hash_name: str, text: str) -> str:
    return hashlib.new(hash_name, text.encode()).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), what a server may store instead of the password.

    For ``-sess`` algorithms this is the base hash; the session part is added per nonce.
    """
    return _hex(_split_algorithm(algorithm)[0], f"{username}:{realm}:{password}")


def compute_response(
    credentials: Credentials,
    method: str,
    password: str | None = None,
    *,
    ha1_hex: str | None = None,
) -> str:
    """The ``response`` value ``credentials`` should carry for ``method`` (RFC 7616 §3.4.1)."""
    hash_name, sess = _split_algorithm(credentials.algorithm)
    c = credentials

    def h(text: str) -> str:
        return _hex(hash_name, text)

    if ha1_hex is None:
        if password is None:
            raise DigestError("need a password or an HA1")
        ha1_hex = ha1(c.algorithm, c.username, c.realm, password)
    a1 = h(f"{ha1_hex.lower()}:{c.nonce}:{c.cnonce}") if sess else ha1_hex.lower()
    ha2 = h(f"{method}:{c.uri}")
    if c.qop is None:
        return h(f"{a1}:{c.nonce}:{ha2}")
    if c.qop != "auth":
        raise DigestError(f"unsupported qop {c.qop!r}")
    return h(f"{a1}:{c.nonce}:{c.nc}:{c.cnonce}:{c.qop}:{ha2}")


# --- client -----------------------------------------------------------------------------


def _usable(challenge: Challenge) -> bool:
    if _algorithm(challenge.algorithm) not in ALGORITHMS:
        return False
    if challenge.qop:
        return "auth" in challenge.qop
    return not challenge.algorithm.endswith("-sess")


def pick_challenge(challenges: Iterable[Challenge]) -> Challenge:
    """The first challenge we can answer: servers list them best first (RFC 7616 §3.7)."""
    seen = []
    for challenge in challenges:
        if _usable(challenge):
            return challenge
        seen.append(f"{challenge.algorithm}/{','.join(challenge.qop) or 'no qop'}")
    raise DigestError(f"no challenge we can answer (offered: {'; '.join(seen) or 'none'})")


def answer_challenge(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str | None = None,
    nc: int = 1,
) -> Credentials:
    """Credentials answering ``challenge``: qop=auth if offered, else the RFC 2069 form."""
    _split_algorithm(challenge.algorithm)
    if challenge.qop and "auth" not in challenge.qop:
        raise DigestError(f"no supported qop in {challenge.qop} (auth-int is not supported)")
    qop = "auth" if challenge.qop else None
    if qop is None and challenge.algorithm.endswith("-sess"):
        raise DigestError(f"{challenge.algorithm} without qop has no cnonce to hash")
    if not isinstance(nc, int) or not 1 <= nc <= 0xFFFFFFFF:
        raise DigestError(f"nc must be 1..2**32-1, got {nc!r}")
    if qop is not None and cnonce is None:
        cnonce = secrets.token_hex(16)
    draft = Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response="",
        algorithm=challenge.algorithm,
        cnonce=cnonce if qop else None,
        nc=f"{nc:08x}" if qop else None,
        qop=qop,
        opaque=challenge.opaque,
    )
    return replace(draft, response=compute_response(draft, method, password))


# --- server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    """Outcome of :meth:`DigestServer.verify`; truthy when the request is authenticated.

    ``reason`` is one of: "wrong realm", "unsupported algorithm", "unsupported qop",
    "qop required", "foreign nonce", "uri mismatch", "unknown user", "bad response",
    "stale nonce", "replayed nonce count" (empty when ok). With ``stale`` the client knows
    the password but must retry with a fresh nonce: re-challenge with ``stale=True``.
    """

    ok: bool
    reason: str = ""
    stale: bool = False
    username: str | None = None

    def __bool__(self) -> bool:
        return self.ok


class DigestServer:
    """Issues challenges and checks credentials for one realm.

    Nonces are ``base64url(timestamp + salt + HMAC(secret, realm, timestamp, salt))``, so any
    process with the same ``secret`` can check them and nothing is stored per nonce. Nonce
    counts are remembered for at most ``replay_window`` nonces (least recently used dropped;
    0 turns replay detection off), each as a 64-wide sliding window like IPsec's.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        nonce_lifetime: float = 300.0,
        *,
        allow_rfc2069: bool = True,
        replay_window: int = 1024,
    ) -> None:
        _check_text("realm", realm)
        if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
            raise DigestError("secret must be at least 16 bytes")
        self.algorithms = tuple(_algorithm(a) for a in algorithms)
        if not self.algorithms:
            raise DigestError("need at least one algorithm")
        for name in self.algorithms:
            _split_algorithm(name)
        if not nonce_lifetime > 0:
            raise DigestError("nonce_lifetime must be positive")
        self.realm = realm
        self.nonce_lifetime = float(nonce_lifetime)
        self.allow_rfc2069 = allow_rfc2069
        self.replay_window = max(0, int(replay_window))
        self._secret = bytes(secret)
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def _mac(self, body: bytes) -> bytes:
        msg = b"sip-digest-nonce\0" + self.realm.encode() + b"\0" + body
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:_NONCE_MAC]

    def make_nonce(self, now: float) -> str:
        """A fresh nonce carrying ``now``, signed so only this server accepts it."""
        body = struct.pack(">d", float(now)) + secrets.token_bytes(8)
        return base64.urlsafe_b64encode(body + self._mac(body)).decode().rstrip("=")

    def _nonce_time(self, nonce: str) -> float | None:
        """When the nonce was issued, or None if we did not issue it."""
        if not _NONCE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "=")
        body, mac = raw[:-_NONCE_MAC], raw[-_NONCE_MAC:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        return struct.unpack(">d", body[:8])[0]

    def challenges(self, now: float, stale: bool = False) -> list[Challenge]:
        """One challenge per algorithm, preferred first, sharing one nonce (RFC 7616 §3.7)."""
        nonce = self.make_nonce(now)
        return [
            Challenge(self.realm, nonce, algorithm=a, qop=("auth",), stale=stale)
            for a in self.algorithms
        ]

    def verify(
        self,
        credentials: Credentials,
        method: str,
        password_lookup: Callable[[str], str | None] | None,
        now: float,
        *,
        uri: str | None = None,
        ha1_lookup: Callable[[str, str], str | None] | None = None,
    ) -> AuthResult:
        """Check ``credentials`` sent with a ``method`` request.

        ``password_lookup(username)`` gives the password, or None for an unknown user.
        Alternatively ``ha1_lookup(username, base_algorithm)`` gives the stored
        :func:`ha1` hex ("MD5" or "SHA-256"). With ``uri``, the credentials must be for
        that Request-URI.
        """
        c = credentials
        user = c.username

        def fail(reason: str, stale: bool = False) -> AuthResult:
            return AuthResult(False, reason, stale, user)

        if c.realm != self.realm:
            return fail("wrong realm")
        if c.algorithm not in self.algorithms:
            return fail("unsupported algorithm")
        if c.qop is None and not self.allow_rfc2069:
            return fail("qop required")
        if c.qop not in (None, "auth"):
            return fail("unsupported qop")
        issued = self._nonce_time(c.nonce)
        if issued is None:
            return fail("foreign nonce")
        if uri is not None and c.uri != uri:
            return fail("uri mismatch")
        if ha1_lookup is not None:
            stored = ha1_lookup(user, c.algorithm.partition("-sess")[0])
            if stored is None:
                return fail("unknown user")
            expected = compute_response(c, method, ha1_hex=stored)
        else:
            password = password_lookup(user) if password_lookup is not None else None
            if password is None:
                return fail("unknown user")
            expected = compute_response(c, method, password)
        if not hmac.compare_digest(expected.encode(), c.response.lower().encode()):
            return fail("bad response")
        if not 0.0 <= now - issued <= self.nonce_lifetime:
            return fail("stale nonce", stale=True)
        if c.nc is not None and not self._fresh_count(c.nonce, int(c.nc, 16)):
            return fail("replayed nonce count", stale=True)
        return AuthResult(True, "", False, user)

    def _fresh_count(self, nonce: str, nc: int) -> bool:
        """Record ``nc`` for ``nonce``; False if it was seen before (or is too old to tell)."""
        if self.replay_window == 0:
            return True
        highest, bits = self._seen.pop(nonce, (0, 0))
        fresh = True
        if nc > highest:
            bits = ((bits << (nc - highest)) | 1) & (2**64 - 1) if nc - highest < 64 else 1
            highest = nc
        elif highest - nc >= 64 or bits >> (highest - nc) & 1:
            fresh = False
        else:
            bits |= 1 << (highest - nc)
        self._seen[nonce] = (highest, bits)
        while len(self._seen) > self.replay_window:
            self._seen.popitem(last=False)
        return fresh
