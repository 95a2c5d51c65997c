"""Sans-IO registration of the gateway to an upstream PBX or trunk (RFC 3261 §10.2).

``RegistrationClient`` decides when a REGISTER is due and what it says; the caller sends
it (adding its Via with a fresh branch, since only the transport knows its address), feeds
back responses or a transaction timeout, and sleeps until ``next_deadline()``. Nothing
here reads a clock or touches a socket, so every timing rule is tested with a fake clock.

Timing rules: the first REGISTER goes at once; a granted registration of G seconds is
refreshed at ``max(G/2, G - 30)`` but never later than ``0.9 G`` after it was sent; a
failure is retried after ``retry_min * 2**(n-1)`` seconds (n consecutive failures, capped
at ``retry_max``), or later if the registrar asked so with Retry-After.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from gateway.sip.digest import (
    Challenge,
    DigestError,
    answer_challenge,
    parse_challenge,
    pick_challenge,
)
from gateway.sip.message import Address, Headers, Request, Response, SipParseError, Uri
from gateway.sip.registrar import parse_delta, same_uri

#: Challenge header -> the header that answers it.
_ANSWER = {"WWW-Authenticate": "Authorization", "Proxy-Authenticate": "Proxy-Authorization"}


def refresh_delay(granted: float) -> float:
    """Seconds after sending a REGISTER granted ``granted`` s at which to refresh it.

    Half-way for short grants, 30 s ahead for long ones (room for a retransmitted request
    and one challenge round trip), never later than 90 % of the grant.
    """
    return min(max(granted * 0.5, granted - 30.0), granted * 0.9)


class RegistrationClient:
    """Keeps one Contact registered for one AOR at one registrar.

    All REGISTERs share one Call-ID and From tag, with CSeq rising by one each (RFC 3261
    §10.2.4), and only one is outstanding at a time. Digest challenges are answered at
    once; the last challenge is reused for refreshes (nonce count rising) so a steady
    state costs one round trip per refresh.
    """

    #: A request with neither a response nor ``on_timeout`` after this long (twice Timer F)
    #: counts as timed out, so a lost callback cannot stop refreshes for good.
    STUCK_AFTER = 64.0
    #: ``stale=TRUE`` challenges answered in a row before giving up on a confused server.
    MAX_STALE = 5
    #: Upper bound on a Retry-After we honour (one day).
    MAX_RETRY_AFTER = 86400.0

    def __init__(
        self,
        registrar: Uri,
        aor: Uri,
        contact: Uri,
        username: str,
        password: str,
        expires: int = 300,
        call_id: str | None = None,
        retry_min: float = 5.0,
        retry_max: float = 300.0,
    ) -> None:
        if expires < 1:
            raise ValueError(f"expires {expires} is not >= 1 (use unregister() to remove)")
        if call_id is not None and (not call_id or any(c.isspace() for c in call_id)):
            raise ValueError(f"call_id {call_id!r} is empty or has white space")
        if not 0 < retry_min <= retry_max:
            raise ValueError(f"need 0 < retry_min <= retry_max, got {retry_min}, {retry_max}")
        self.registrar = registrar
        self.aor = aor
        self.contact = contact
        self.username = username
        self.password = password
        self.expires = int(expires)  # what we ask for; a 423 raises it to Min-Expires
        self.call_id = call_id or secrets.token_hex(16)
        self.from_tag = secrets.token_hex(8)
        self.retry_min = float(retry_min)
        self.retry_max = float(retry_max)
        # observable state
        self.state = "unregistered"
        self.registered_until: float | None = None
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.registrations = 0
        self.failures = 0
        # internals
        self._cseq = 0
        self._due: float | None = 0.0  # the first REGISTER is due at once
        self._sent_at: float | None = None  # set while a request is outstanding
        self._sent_cseq = 0
        self._sent_expires = self.expires
        self._consecutive_failures = 0
        self._challenges: dict[str, Challenge] = {}  # challenge header -> challenge
        self._nc: dict[str, int] = {}
        self._answered: set[str] = set()  # challenge headers answered in this attempt
        self._stale = 0
        self._unregistering = False
        self._done = False

    # -- driving ---------------------------------------------------------------------------

    def poll(self, now: float) -> Request | None:
        """The REGISTER to send now, if one is due and none is outstanding."""
        if self._done:
            return None
        if self._sent_at is not None:
            if now - self._sent_at < self.STUCK_AFTER:
                return None
            self.on_timeout(now)
        if self._due is None or now < self._due:
            return None
        return self._request(now)

    def next_deadline(self) -> float | None:
        """When ``poll`` next has something to do; None once unregistered for good.

        0.0 before the first poll means "at once".
        """
        if self._done:
            return None
        if self._sent_at is not None:
            return self._sent_at + self.STUCK_AFTER
        return self._due

    def unregister(self, now: float) -> Request:
        """A REGISTER with Expires: 0 for shutdown; an outstanding request is forgotten.

        A challenge to it is answered (poll returns the retry); any other outcome ends
        the client.
        """
        self._unregistering = True
        self._answered.clear()
        self._stale = 0
        return self._request(now)

    # -- responses -------------------------------------------------------------------------

    def on_response(self, response: Response, now: float) -> None:
        """Feed a response to the outstanding REGISTER; strays and late ones are ignored."""
        if self._sent_at is None or not self._matches(response) or response.status < 200:
            return
        sent_at = self._sent_at
        self._sent_at = None
        self.last_status = response.status
        status = response.status
        if 200 <= status < 300:
            self._on_success(response, sent_at, now)
        elif status in (401, 407):
            self._on_challenge(response, now)
        elif status == 423 and not self._unregistering:
            self._on_too_brief(response, now)
        else:
            retry_after = parse_delta(response.headers.get("Retry-After"))
            self._fail(now, f"{status} {response.reason}".strip(), retry_after)

    def on_timeout(self, now: float, why: str = "no response from the registrar") -> None:
        """The outstanding REGISTER got no response (treated as a 408): its transaction
        timed out, or it could not be sent (``why``)."""
        if self._sent_at is None:
            return
        self._sent_at = None
        self.last_status = 408
        self._fail(now, why)

    def _matches(self, response: Response) -> bool:
        """False when the response is visibly for another request (an older CSeq after a
        retry, or another Call-ID); missing or unreadable headers are left to the
        transaction layer, which matched it by Via branch already."""
        call_id = response.headers.get("Call-ID")
        if call_id is not None and call_id.strip() != self.call_id:
            return False
        try:
            number, method = response.cseq
        except SipParseError:
            return True
        return number == self._sent_cseq and method == "REGISTER"

    def _on_success(self, response: Response, sent_at: float, now: float) -> None:
        if self._unregistering:
            self._finish(None)
            return
        granted = self._granted(response)
        if granted <= 0:
            self._fail(now, "the registrar granted no time to our contact")
            return
        self.state = "registered"
        self.registrations += 1
        self.registered_until = sent_at + granted
        self.last_error = None
        self._consecutive_failures = 0
        self._answered.clear()
        self._stale = 0
        self._due = max(sent_at + refresh_delay(granted), now)

    def _granted(self, response: Response) -> int:
        """Seconds granted: our Contact's expires param, else Expires, else what we asked.

        A registrar may shorten the interval, not lengthen it (RFC 3261 §10.2.1); a longer
        grant is taken as what we asked, so refreshes keep the configured pace.
        """
        return min(self._granted_by_registrar(response), self._sent_expires)

    def _granted_by_registrar(self, response: Response) -> int:
        for value in response.headers.get_all("Contact"):
            try:
                address = Address.parse(value)
            except SipParseError:
                continue
            if not address.star and same_uri(address.uri, self.contact):
                expires = parse_delta(address.params.get("expires"))
                if expires is not None:
                    return expires
        expires = parse_delta(response.headers.get("Expires"))
        return self._sent_expires if expires is None else expires

    def _on_challenge(self, response: Response, now: float) -> None:
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenges = []
        for value in response.headers.get_all(header):
            try:
                challenges.append(parse_challenge(value))
            except DigestError:
                continue
        try:
            challenge = pick_challenge(challenges)
            # Try it now, so a challenge we cannot answer fails here and not in poll().
            answer_challenge(challenge, "REGISTER", str(self.registrar), self.username,
                             self.password, cnonce="0")
        except DigestError as exc:
            self._fail(now, f"{response.status}: cannot answer the challenge: {exc}")
            return
        if challenge.stale:
            # Our password was right, only the nonce was old: retry at once, within reason.
            self._stale += 1
            if self._stale > self.MAX_STALE:
                self._fail(now, f"{response.status}: stale nonce again and again")
                return
        elif header in self._answered:
            # A fresh challenge to our answer of a fresh challenge: the password is wrong.
            self._challenges.pop(header, None)
            self._fail(now, f"{response.status}: authentication rejected "
                            f"(wrong user name or password?)")
            return
        self._answered.add(header)
        self._challenges[header] = challenge
        self._nc[header] = 0
        self._due = now

    def _on_too_brief(self, response: Response, now: float) -> None:
        minimum = parse_delta(response.headers.get("Min-Expires"))
        if minimum is None or minimum <= self._sent_expires:
            self._fail(now, "423 without a usable Min-Expires")
            return
        self.expires = minimum
        self._due = now

    def _fail(self, now: float, error: str, retry_after: int | None = None) -> None:
        """Back off exponentially, and no less than the registrar's Retry-After."""
        self.failures += 1
        self.last_error = error
        if self._unregistering:
            self._finish(error)
            return
        self._consecutive_failures += 1
        exponent = min(self._consecutive_failures - 1, 60)
        delay = min(self.retry_max, self.retry_min * 2.0**exponent)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.MAX_RETRY_AFTER))
        self.state = "failed"
        self._answered.clear()
        self._stale = 0
        self._due = now + delay

    def _finish(self, error: str | None) -> None:
        """The unregistration is over, well or not: nothing more will be sent."""
        self.state = "unregistered"
        self.registered_until = None if error is None else self.registered_until
        self._done = True
        self._due = None

    # -- requests --------------------------------------------------------------------------

    def _request(self, now: float) -> Request:
        self._cseq += 1
        expires = 0 if self._unregistering else self.expires
        headers = Headers()
        headers.add("Max-Forwards", "70")
        headers.add("To", f"<{self.aor}>")
        headers.add("From", f"<{self.aor}>;tag={self.from_tag}")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self._cseq} REGISTER")
        headers.add("Contact", f"<{self.contact}>;expires={expires}")
        headers.add("Expires", str(expires))
        for header, challenge in list(self._challenges.items()):
            self._nc[header] = self._nc.get(header, 0) + 1
            try:
                credentials = answer_challenge(challenge, "REGISTER", str(self.registrar),
                                               self.username, self.password,
                                               nc=min(self._nc[header], 0xFFFFFFFF))
            except DigestError:  # checked when received; kept only for safety
                del self._challenges[header]
                continue
            headers.add(_ANSWER[header], str(credentials))
        self._sent_at = now
        self._sent_cseq = self._cseq
        self._sent_expires = expires
        self._due = None
        if self.state != "registered" and not self._unregistering:
            self.state = "registering"
        uri = replace(self.registrar, params=dict(self.registrar.params))
        return Request("REGISTER", uri, headers)
