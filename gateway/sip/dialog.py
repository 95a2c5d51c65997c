"""Sans-IO SIP dialogs (RFC 3261 §12): the state two user agents share for one call.

A dialog is made from an INVITE and its 2xx, on either side. It builds the requests
sent inside the call (BYE, re-INVITE, ACK for a 2xx) with the right tags, CSeq, Route
set and target, and checks the ones that come in (CSeq order).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from .message import MAGIC_COOKIE, Address, Headers, Request, Response, SipParseError, Uri, Via


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(10)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local: Address  # our From (UAC) or To (UAS), with our tag
    remote: Address  # the peer's, with its tag
    remote_target: Uri  # the peer's Contact: where in-dialog requests go
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str) -> Dialog:
        """Our side of a dialog made by an incoming INVITE that we answer 2xx (§12.1.1)."""
        contact = invite.contact
        if contact is None or contact.star:
            raise SipParseError("INVITE without a usable Contact")
        to = invite.to  # shared with the request: copied with our tag
        local = Address(to.uri, to.display, {**to.params, "tag": local_tag})
        remote = invite.from_
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote.tag or "",
            local=local,
            remote=remote,
            remote_target=contact.uri,
            route_set=invite.headers.get_all("Record-Route"),
            local_cseq=secrets.randbelow(1 << 16) + 1,
            remote_cseq=invite.cseq[0],
        )

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog:
        """Our side of a dialog made by our INVITE and its 2xx (§12.1.2)."""
        contact = response.contact
        if contact is None or contact.star:
            raise SipParseError("2xx without a usable Contact")
        local = invite.from_
        remote = response.to
        return cls(
            call_id=invite.call_id,
            local_tag=local.tag or "",
            remote_tag=remote.tag or "",
            local=local,
            remote=remote,
            remote_target=contact.uri,
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_cseq=invite.cseq[0],
        )

    def accept_request(self, request: Request) -> bool:
        """False for an out-of-order request (lower CSeq): answer it 500 (§12.2.2)."""
        number, method = request.cseq
        if method == "ACK" or method == "CANCEL":
            return True
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def refresh_target(self, message: Request | Response) -> None:
        """A re-INVITE or its 2xx may move the peer (§12.2): follow its new Contact."""
        contact = message.contact
        if contact is not None and not contact.star:
            self.remote_target = contact.uri

    def request(
        self,
        method: str,
        via: Via,
        contact: Address | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra: Iterable[tuple[str, str]] = (),
        cseq: int | None = None,
    ) -> Request:
        """A new in-dialog request (§12.2.1.1). ACK passes the INVITE's ``cseq``."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        uri, routes = self._target()
        headers = Headers()
        headers.add("Via", str(via))
        headers.add("Max-Forwards", "70")
        for route in routes:
            headers.add("Route", route)
        headers.add("From", str(self.local))
        headers.add("To", str(self.remote))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        if contact is not None:
            headers.add("Contact", str(contact))
        for name, value in extra:
            headers.add(name, value)
        if content_type and body:
            headers.add("Content-Type", content_type)
        return Request(method, uri, headers, body)

    def _target(self) -> tuple[Uri, list[str]]:
        """Request-URI and Route headers: loose routing, or strict routing (§12.2.1.1)."""
        if not self.route_set:
            return self.remote_target, []
        first = Address.parse(self.route_set[0])
        if "lr" in first.uri.params:
            return self.remote_target, list(self.route_set)
        return first.uri, [*self.route_set[1:], f"<{self.remote_target}>"]
