"""Access control: API keys or signed tokens (JWT) with scopes, checked per request.

Scopes: ``admin`` (everything), ``publish:<stream pattern>``, ``listen:<stream pattern>``
(shell patterns: ``listen:*``, ``publish:studio-?``). WHIP and WHEP take
``Authorization: Bearer <token>`` (RFC 9725 §4.5); Server-Sent Event feeds and recording
downloads also take ``?token=``, because EventSource and ``<audio src>`` cannot send
headers. With no keys and no JWT secret configured, access control is off (the gateway
then refuses to listen beyond loopback unless told ``--insecure``). Tokens are compared
as SHA-256 digests in constant time and never logged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
from dataclasses import dataclass

import jwt
from aiohttp import web

from ..config import AuthConfig
from .problem import problem

log = logging.getLogger(__name__)

PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = {"/", "/publish", "/listen", "/dashboard", "/healthz", "/readyz",
                "/api/v1/openapi.json"}
#: GET endpoints any valid token may read (no stream in the path).
READ_PATHS = {"/api/v1/streams", "/api/v1/events", "/api/v1/stats", "/api/v1/sessions",
              "/api/v1/cluster"}
#: Where ``?token=`` is accepted instead of the header.
QUERY_TOKEN_SUFFIXES = ("/levels", "/events")
QUERY_TOKEN_PREFIXES = ("/api/v1/recordings/",)


class AuthError(Exception):
    """The token is missing, unknown, expired or forged (401)."""


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: tuple[str, ...]
    #: Who owns what this principal creates: ``key:<name>``, ``jwt:<sub>``, or for a signed
    #: token without ``sub``, ``token:<digest>`` (only that very token).
    identity: str

    def allows(self, action: str, stream: str | None) -> bool:
        """``action``: "publish", "listen", "read" (any valid token) or "admin"."""
        if "admin" in self.scopes or action == "read":
            return True
        if action == "admin" or stream is None:
            return False
        for scope in self.scopes:
            kind, _, pattern = scope.partition(":")
            if kind == action and fnmatch.fnmatchcase(stream, pattern):
                return True
        return False


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._keys: list[tuple[bytes, Principal]] = []
        for i, k in enumerate(config.keys):
            name = k.name or f"key{i}"
            self._keys.append((hashlib.sha256(k.key.encode()).digest(),
                               Principal(name, tuple(k.scopes), f"key:{name}")))

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def authenticate(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, principal in self._keys:  # no early exit: same time for every key
            if hmac.compare_digest(digest, known):
                found = principal
        if found is not None:
            return found
        if self.config.jwt_secret and token.count(".") == 2:
            return self._jwt(token)
        raise AuthError("unknown token")

    def _jwt(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self.config.jwt_secret,
                                algorithms=self.config.jwt_algorithms,
                                options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        scope = claims.get("scope", claims.get("scopes", ""))
        if isinstance(scope, str):
            scopes = tuple(scope.split())
        elif isinstance(scope, list) and all(isinstance(s, str) for s in scope):
            scopes = tuple(scope)
        else:  # a number, null or an object (whose keys would have read as scopes)
            raise AuthError("invalid token: scope must be a string or a list of strings")
        if "sub" in claims:
            return Principal(str(claims["sub"]), scopes, f"jwt:{claims['sub']}")
        digest = hashlib.sha256(token.encode()).hexdigest()[:32]
        return Principal("jwt", scopes, f"token:{digest}")


def required(request: web.Request) -> tuple[str, str | None] | None:
    """(action, stream) a request needs, or None for public ones."""
    path = request.path
    method = request.method
    if method == "OPTIONS" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    stream = request.match_info.get("stream")
    if path.startswith("/whip/"):
        return ("publish", stream)
    if path.startswith("/whep/"):
        return ("listen", stream)
    if path == "/metrics":
        return None if request.app[AUTH].config.public_metrics else ("admin", None)
    if method in ("GET", "HEAD"):
        if path in READ_PATHS:
            return ("read", None)
        if stream is not None and path.startswith("/api/v1/streams/"):
            return ("listen", stream)
    return ("admin", None)


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    path = request.path
    if request.method == "GET" and (path.endswith(QUERY_TOKEN_SUFFIXES)
                                    or path.startswith(QUERY_TOKEN_PREFIXES)):
        return request.query.get("token") or None
    return None


def unauthorized(detail: str, invalid: bool) -> web.Response:
    resp = problem(401, "Unauthorized", detail)
    challenge = 'Bearer realm="audio-gateway"'
    if invalid:
        challenge += ', error="invalid_token"'
    resp.headers["WWW-Authenticate"] = challenge
    return resp


def auth_middleware_factory():  # type: ignore[no-untyped-def]
    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        auth: Authenticator = request.app[AUTH]
        if not auth.enabled:
            return await handler(request)
        need = required(request)
        if need is None:
            return await handler(request)
        token = _token(request)
        if token is None:
            return unauthorized("send Authorization: Bearer <token>", invalid=False)
        try:
            principal = auth.authenticate(token)
        except AuthError as exc:
            log.info("refused %s %s from %s: %s", request.method, request.path,
                     request.remote, exc)
            return unauthorized(str(exc), invalid=True)
        action, stream = need
        if not principal.allows(action, stream):
            what = f"{action}:{stream}" if stream else action
            return problem(403, "Forbidden", f"token {principal.name!r} lacks scope {what}")
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


def owner_of(request: web.Request) -> str | None:
    """The identity that will own what this request creates (None: access control off)."""
    principal = request.get(PRINCIPAL)
    return principal.identity if principal is not None else None


def may_manage(request: web.Request, owner: str | None) -> bool:
    """Whether the caller may see the id of, and end, a session created by ``owner``: its
    creator and admins may; with access control off, everyone may."""
    if not request.app[AUTH].enabled:
        return True
    principal = request.get(PRINCIPAL)
    return principal is not None and ("admin" in principal.scopes
                                      or principal.identity == owner)


def caller_rights(request: web.Request) -> dict[str, object]:
    """What another node needs to apply may_manage to a session it holds."""
    principal = request.get(PRINCIPAL)
    return {"everyone": not request.app[AUTH].enabled,
            "admin": principal is not None and "admin" in principal.scopes,
            "identity": principal.identity if principal is not None else None}


AUTH: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
