"""Sans-IO SIP registrar (RFC 3261 §10.3): phones REGISTER to the gateway.

``Registrar.handle`` takes a REGISTER, the address it came from and the time, and returns
the response to send; nothing here reads a clock or touches a socket. Users are a fixed
table (user -> password) and every REGISTER must carry Digest credentials for the AOR it
updates. Each binding keeps both the Contact URI and the source address: a phone behind a
NAT advertises a private Contact, and is reachable only at the address its REGISTER came
from (the idea of RFC 5626 without its extensions).

Memory is bounded: bindings exist only for configured users, at most
``max_bindings_per_user`` each (the least recently refreshed are dropped first), and the
Digest nonces are stateless.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.sip.dialog import new_tag
from gateway.sip.digest import Credentials, DigestError, DigestServer, parse_credentials
from gateway.sip.message import Address, Request, Response, SipParseError, Uri, response_to

log = logging.getLogger(__name__)

#: RFC 3261 §19.1.4: these URI parameters must match when either URI has them.
_STRICT_URI_PARAMS = ("user", "ttl", "method", "maddr", "transport")
_DELTA = re.compile(r"[0-9]+")
#: RFC 3261 §20.19: delta-seconds above 2**32-1 are taken as 2**32-1.
MAX_DELTA = 2**32 - 1


def same_uri(a: Uri, b: Uri) -> bool:
    """URI equality of RFC 3261 §19.1.4, enough to find the binding a Contact refreshes.

    Scheme and host are case-insensitive, user and password are not, an omitted port
    differs from an explicit 5060, and parameters count when both URIs carry them (or,
    for transport/user/ttl/method/maddr, when either does). Escapes are not decoded.
    """
    if a.scheme.lower() != b.scheme.lower() or a.user != b.user or a.password != b.password:
        return False
    if a.host.lower() != b.host.lower() or a.port != b.port:
        return False
    for name in set(a.params) | set(b.params):
        if name in a.params and name in b.params:
            va, vb = a.params[name], b.params[name]
            if (va or "").lower() != (vb or "").lower():
                return False
        elif name in _STRICT_URI_PARAMS:
            return False
    return True


def parse_delta(text: str | None) -> int | None:
    """delta-seconds (Expires, Min-Expires, Retry-After, expires=): None if absent or bad.

    A trailing comment (``Retry-After: 7 (maintenance);duration=60``) is ignored.
    """
    if text is None:
        return None
    match = _DELTA.match(text.strip())
    if match is None:
        return None
    digits = match.group()
    return MAX_DELTA if len(digits) > 10 else min(int(digits), MAX_DELTA)


@dataclass(frozen=True)
class Binding:
    """Where an AOR can be reached: the Contact URI, and the address the REGISTER came from.

    ``call_id``/``cseq`` are those of the REGISTER that last touched the binding, kept to
    refuse out-of-order refreshes (RFC 3261 §10.3 step 7); ``registered_at`` orders
    lookups (most recent first) and picks what to drop when a user has too many.
    """

    contact: Uri
    source: tuple[str, int]
    expires_at: float
    call_id: str
    cseq: int
    registered_at: float = 0.0
    #: The transport the REGISTER came over: "UDP", or "TCP"/"TLS", whose connection from
    #: ``source`` is where requests to the phone go while it lasts (RFC 5626 §5.3).
    transport: str = "UDP"

    def expires_in(self, now: float) -> int:
        """Whole seconds left, as the ``expires`` parameter of a 200 OK lists them."""
        return max(0, int(self.expires_at - now + 0.5))


class _Abort(Exception):
    """A REGISTER that must fail as a whole: nothing it asked for is committed."""

    def __init__(
        self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(status)
        self.status = status
        self.reason = reason
        self.headers = list(headers)


class Registrar:
    """The gateway's location service for its configured users (RFC 3261 §10.3).

    ``users`` maps user name to password; the dict is read at every request, so the
    caller may update it in place. ``secret`` signs the Digest nonces (at least 16 bytes;
    any process holding it accepts them). Expiry intervals are clamped to
    ``[min_expires, max_expires]``: shorter non-zero requests get 423 (§10.3 step 7),
    longer ones are shortened.
    """

    def __init__(
        self,
        realm: str,
        users: dict[str, str],
        secret: bytes,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_bindings_per_user: int = 10,
        algorithms: tuple[str, ...] = ("MD5",),
    ) -> None:
        if not 0 < min_expires <= max_expires:
            raise ValueError(f"need 0 < min_expires <= max_expires, got {min_expires}, "
                             f"{max_expires}")
        if max_bindings_per_user < 1:
            raise ValueError(f"max_bindings_per_user {max_bindings_per_user} is not >= 1")
        self.realm = realm
        self.users = users
        self.min_expires = int(min_expires)
        self.max_expires = int(max_expires)
        # The default applies to contacts that did not ask: it must never earn them a 423.
        self.default_expires = min(max(int(default_expires), self.min_expires), self.max_expires)
        self.max_bindings_per_user = int(max_bindings_per_user)
        #: One challenge per algorithm; MD5 alone by default: some phones (baresip 1.0)
        #: fail on a second WWW-Authenticate header whatever its order.
        self.digest = DigestServer(realm, secret, algorithms=algorithms)
        self._bindings: dict[str, list[Binding]] = {}

    # -- queries ---------------------------------------------------------------------------

    @property
    def bindings_count(self) -> int:
        """Bindings held, expired ones included until ``expire`` or a lookup drops them."""
        return sum(len(b) for b in self._bindings.values())

    def stream_sources(self, now: float) -> set[tuple[str, str, int]]:
        """(transport, host, port) of the TCP/TLS connections live bindings came over:
        requests to those phones go back over them, so they must stay open."""
        return {(b.transport, *b.source) for bindings in self._bindings.values()
                for b in bindings if b.transport != "UDP" and b.expires_at > now}

    def lookup(self, user: str, now: float) -> list[Binding]:
        """The user's live bindings, most recently registered first."""
        live = self._live(user, now)
        if live:
            self._bindings[user] = live
        else:
            self._bindings.pop(user, None)
        return sorted(live, key=lambda b: b.registered_at, reverse=True)

    def expire(self, now: float) -> int:
        """Drop every expired binding; returns how many went."""
        before = self.bindings_count
        for user in list(self._bindings):
            self.lookup(user, now)
        return before - self.bindings_count

    def _live(self, user: str, now: float) -> list[Binding]:
        return [b for b in self._bindings.get(user, ()) if b.expires_at > now]

    # -- authentication --------------------------------------------------------------------

    def check_auth(self, request: Request, now: float) -> tuple[str | None, Response | None]:
        """(user, None) if the request carries valid Digest credentials for this realm,
        else (None, the 401 to send).

        Works for any challengeable method (REGISTER, INVITE, ...; never ACK or CANCEL,
        RFC 3261 §22.1). Unknown users and wrong passwords get the same fresh challenge,
        so a caller cannot learn which users exist; a right password with an expired
        nonce gets ``stale=TRUE`` so the phone retries without asking its user. Every
        refused answer is logged with its reason (never the password or the hash); a
        request without any answer yet is the normal first step and is not.
        """
        credentials, unusable = self._credentials(request)
        if credentials is None:
            if unusable:
                _log_refusal(request, None, unusable)
            return None, self._challenge(request, now, stale=False)
        result = self.digest.verify(credentials, request.method, self.users.get, now)
        if result.ok and not digest_uri_matches(credentials.uri, request.uri):
            _log_refusal(request, credentials, "uri does not match the Request-URI")
            return None, self._challenge(request, now, stale=False)
        if not result.ok:
            _log_refusal(request, credentials, result.reason)
            return None, self._challenge(request, now, stale=result.stale)
        return result.username, None

    def _credentials(self, request: Request) -> tuple[Credentials | None, str]:
        """The first readable Authorization for our realm (a phone may carry others), or
        None and why the ones present are unusable ("" when there are none)."""
        why = ""
        for name in ("Authorization", "Proxy-Authorization"):
            for value in request.headers.get_all(name):
                if (value.split(None, 1) or [""])[0].lower() != "digest":
                    why = f"{name} is not Digest"  # Basic carries the password: not logged
                    continue
                try:
                    credentials = parse_credentials(value)
                except DigestError as exc:
                    why = f"unreadable {name}: {exc}"
                    continue
                if credentials.realm == self.realm:
                    return credentials, ""
                why = f"{name} for another realm {credentials.realm[:40]!r}"
        return None, why

    def _challenge(self, request: Request, now: float, stale: bool) -> Response:
        headers = [("WWW-Authenticate", str(c)) for c in self.digest.challenges(now, stale)]
        return _reply(request, 401, headers=headers)

    # -- REGISTER --------------------------------------------------------------------------

    def handle(self, request: Request, source: tuple[str, int], now: float,
               transport: str = "UDP") -> Response:
        """The response to a REGISTER from ``source`` (host, port) over ``transport`` at
        time ``now``.

        Raises ValueError for other methods (the caller routes them), and SipParseError
        when the request has no Call-ID, since no response could be matched to it.
        """
        if request.method != "REGISTER":
            raise ValueError(f"Registrar.handle got a {request.method}, not a REGISTER")
        request.call_id  # noqa: B018 - raises SipParseError: unanswerable without it
        try:
            cseq, method = request.cseq
            aor = request.to.uri
            contacts = [Address.parse(v) for v in request.headers.get_all("Contact")]
        except SipParseError:
            return _reply(request, 400)
        if method != "REGISTER":
            return _reply(request, 400, "CSeq Method Mismatch")
        user, challenge = self.check_auth(request, now)
        if challenge is not None:
            return challenge
        if aor.user != user:
            # Third-party registration (RFC 3261 §10.2): not for the gateway's users.
            return _reply(request, 403, "Not Your AOR")
        assert user is not None
        try:
            bindings = self._updated(user, request, contacts, tuple(source), now, transport)
        except _Abort as abort:
            return _reply(request, abort.status, abort.reason, abort.headers)
        if bindings:
            self._bindings[user] = bindings
        else:
            self._bindings.pop(user, None)
        listed = sorted(bindings, key=lambda b: b.registered_at, reverse=True)
        headers = [("Contact", f"<{b.contact}>;expires={b.expires_in(now)}") for b in listed]
        return _reply(request, 200, headers=headers)

    def _updated(
        self, user: str, request: Request, contacts: list[Address],
        source: tuple[str, int], now: float, transport: str = "UDP",
    ) -> list[Binding]:
        """The user's bindings after this REGISTER, or _Abort: all or nothing (§10.3 step 8)."""
        call_id = request.call_id
        cseq = request.cseq[0]
        header_text = request.headers.get("Expires")
        header_expires = parse_delta(header_text)
        if header_text is not None and header_expires is None:
            raise _Abort(400, "Bad Expires")
        bindings = self._live(user, now)
        if any(c.star for c in contacts):
            # §10.3 step 6: "Contact: *" removes everything, only alone and with Expires: 0.
            if len(contacts) != 1 or header_expires != 0:
                raise _Abort(400, "Bad Wildcard Contact")
            for b in bindings:
                if b.call_id == call_id and cseq <= b.cseq:
                    raise _Abort(500, "Out Of Order CSeq")
            return []
        if len(contacts) > self.max_bindings_per_user:
            raise _Abort(403, "Too Many Contacts")
        touched: list[Uri] = []  # contacts this request already handled (repeats are fine)
        for address in contacts:
            expires = self._expires(address, header_expires)
            old = next((b for b in bindings if same_uri(b.contact, address.uri)), None)
            if old is not None:
                mine = any(same_uri(u, address.uri) for u in touched)
                if not mine and old.call_id == call_id and cseq <= old.cseq:
                    # §10.3 step 7: a retransmitted or reordered REGISTER must not undo a
                    # newer one from the same client.
                    raise _Abort(500, "Out Of Order CSeq")
                bindings.remove(old)
            touched.append(address.uri)
            if expires:
                bindings.append(
                    Binding(address.uri, source, now + expires, call_id, cseq,
                            registered_at=now, transport=transport)
                )
        # Bounded memory: the least recently refreshed bindings make room (a phone that
        # rebooted with a new Call-ID leaves stale ones behind). Python's sort is stable,
        # so among equals the ones this request added, appended last, survive.
        bindings.sort(key=lambda b: b.registered_at, reverse=True)
        return bindings[: self.max_bindings_per_user]

    def _expires(self, address: Address, header_expires: int | None) -> int:
        """Seconds granted to one contact: its ``expires`` param, else the Expires header,
        else the default; 0 means remove."""
        if "expires" in address.params:
            expires = parse_delta(address.params["expires"])
            if expires is None:
                raise _Abort(400, "Bad Contact Expires")
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = self.default_expires
        if 0 < expires < self.min_expires:
            raise _Abort(423, headers=[("Min-Expires", str(self.min_expires))])
        return min(expires, self.max_expires)


def digest_uri_matches(digest_uri: str, request_uri: Uri) -> bool:
    """Whether credentials computed for ``digest_uri`` serve this Request-URI.

    RFC 3261 §22.4 makes the digest ``uri`` the Request-URI but leaves the comparison to
    the server. Scheme, user, password, host and port must agree as in §19.1.4 (host
    case-insensitive; an omitted port is not 5060), so an answer computed for another
    server or another stream does not pass. URI parameters count only when both URIs
    carry them: phones decorate the digest uri (pyVoIP 1.6 answers for
    ``sip:host;transport=UDP`` while sending ``REGISTER sip:host``), and §19.1.4's rule that
    a transport on one side only makes URIs differ is about routing, which the hash
    does not protect. Deployed servers are laxer still: Kamailio's auth module does not
    compare the uri unless asked to (its docs: it "will not work with a lot of UA
    implementations"), and Asterisk's chan_sip hashes whatever uri the phone sent.
    """
    try:
        a = Uri.parse(digest_uri)
    except SipParseError:
        return False
    b = request_uri
    if a.scheme.lower() != b.scheme.lower() or a.user != b.user or a.password != b.password:
        return False
    if a.host.lower() != b.host.lower() or a.port != b.port:
        return False
    return all(
        (a.params[name] or "").lower() == (b.params[name] or "").lower()
        for name in set(a.params) & set(b.params)
    )


def _log_refusal(request: Request, credentials: Credentials | None, reason: str) -> None:
    """Say why a Digest answer was refused: the phone only sees a fresh 401."""
    try:
        via = request.top_via
        source = via.params.get("received") or via.host
    except SipParseError:
        source = "?"
    if credentials is None:
        log.info("sip digest refused: %s %s from %s: %s", request.method, request.uri,
                 source, reason)
        return
    log.info("sip digest refused: %s %s from %s, user %r, uri %r: %s", request.method,
             request.uri, source, credentials.username[:64], credentials.uri[:200], reason)


def _reply(
    request: Request, status: int, reason: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Response:
    """``response_to`` with a To tag (RFC 3261 §8.2.6.2), or without one if the To header
    is too broken to carry it: a 400 must still go out."""
    try:
        return response_to(request, status, reason, to_tag=new_tag(), headers=headers)
    except SipParseError:
        return response_to(request, status, reason, headers=headers)
