"""Dial-out: the gateway calls a phone and plays it a stream (redirects, digest, CANCEL)."""

from __future__ import annotations

import asyncio
import logging

from ..core.stream import Stream
from ..sdp import SdpError, build_audio, choose_codec, offer_codecs, parse_audio
from . import sdes
from .call import SipCall
from .dial_in import ALLOW, SDP
from .dialog import Dialog, new_call_id, new_tag
from .digest import DigestError, answer_challenge, parse_challenge
from .endpoint import EndpointError
from .media import CallMedia
from .message import Address, Headers, Request, Response, SipParseError, Uri
from .parts import ServicePart
from .transaction import Flow

log = logging.getLogger(__name__)

TELEPHONE_EVENT_PT = 101
MAX_REDIRECTS = 5


class DialError(ValueError):
    """A dial-out request cannot be placed (bad URI, unknown user); sent back as a 400
    that names the request's ``field`` at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotRegisteredHere(DialError):
    """A dial-out to a user name without a binding at this registrar; in a cluster, the
    phone may have registered at another node (or worker), which can place the call."""

    def __init__(self, user: str) -> None:
        super().__init__("uri", f"user {user!r} is not registered here")
        self.user = user


class DialOut(ServicePart):
    """Mixed into SipService: the calling side of calls."""


    def _on_stray(self, response: Response, flow: Flow) -> None:
        """A 2xx for an INVITE we gave up on (crossed CANCEL): ACK it, then BYE."""
        try:
            number, method = response.cseq
        except SipParseError:
            return
        if method != "INVITE" or not 200 <= response.status < 300:
            return
        call = self._find_dialog(response, incoming=False)
        if call is not None:  # a retransmitted 2xx of a live call: our ACK was lost
            if call.ack is not None and call.flow is not None and number == call.ack.cseq[0]:
                self.endpoint.send_stateless(call.ack, call.flow)
            return
        self._spawn(self._ack_and_bye(response, flow, number))

    async def _ack_and_bye(self, response: Response, flow: Flow, cseq: int) -> None:
        contact = response.contact
        if contact is None:
            return
        dialog = Dialog(response.call_id, response.from_.tag or "", response.to.tag or "",
                        response.from_, response.to, contact.uri)
        self.endpoint.send_stateless(dialog.request("ACK", self.endpoint.via(flow),
                                                    cseq=cseq), flow)
        dialog.local_cseq = cseq
        bye = dialog.request("BYE", self.endpoint.via(flow))
        await self._send_and_wait(bye, flow, 5.0)

    async def dial(self, stream: Stream, uri: str, timeout_s: float | None = None) -> SipCall:
        """Place a call that plays ``stream``; returns at once, the call proceeds."""
        try:
            target = Uri.parse(uri if ":" in uri else f"sip:{uri}@{self.endpoint.advertised_host}")
        except SipParseError as exc:
            raise DialError("uri", str(exc)) from None
        if target.scheme != "sip":
            raise DialError("uri", "only sip: URIs can be dialled")
        if len(self.calls) >= self.config.max_calls:
            raise DialError("uri", "too many calls")
        flow = await self._target_flow(target)
        media = await self.ports.open(CallMedia())
        call = self._named(SipCall("out", str(target), stream, media, self.outputs))
        call.hangup_handler = self._hangup
        call.flow = flow
        media.on_digit = lambda digit: self._on_digit(call, digit)
        media.on_latch = call.latched
        self.calls[call.id] = call
        stream.outputs.add(call)
        self.stats["dial_outs"] += 1
        self._spawn(self._dial(call, target, flow, timeout_s or self.config.dial_timeout_s))
        return call

    async def _target_flow(self, target: Uri) -> Flow:
        """Where to send: a registered user's binding, else the URI's host."""
        if target.user and target.host in (self.endpoint.advertised_host, "localhost") and (
            target.port in (None, self.endpoint.port)
        ):
            bindings = self.registrar.lookup(target.user, self.endpoint.now())
            if not bindings:
                raise NotRegisteredHere(target.user)
            binding = bindings[0]
            host, port = binding.source
            if binding.transport == "UDP":
                # from the shared port, where the phone's NAT binding points; the phone's
                # packets hash to the worker that holds its binding, which is this one
                return ("UDP", host, port)
            flow = self.endpoint.stream_flow((binding.transport, host, port))
            if flow is not None:
                return flow  # the connection it registered on (RFC 5626 §5.3)
            target = binding.contact  # that connection is gone: where the phone listens
        try:
            return await self.endpoint.flow_for(target, own=True)
        except EndpointError as exc:
            raise DialError("uri", f"{exc.strerror}") from None

    async def _dial(self, call: SipCall, target: Uri, flow: Flow, timeout_s: float) -> None:
        media = call.media
        # "optional" offers plain RTP: most phones refuse an RTP/SAVP offer they cannot do
        key = call.offered_key = sdes.offer() if self.config.srtp == "required" else None
        call.local_sdp = build_audio(self.endpoint.advertised_host, media.port,
                                     offer_codecs(self.preference), TELEPHONE_EVENT_PT,
                                     session_id=call.sdp_session,
                                     profile="RTP/AVP" if key is None else "RTP/SAVP",
                                     crypto=None if key is None else key.line())
        offer = call.local_sdp.encode()
        call_id = new_call_id(self.endpoint.advertised_host)
        local = Address(Uri("sip", self.endpoint.advertised_host, call.stream.name),
                        params={"tag": new_tag()})
        cseq = 1
        auth: list[tuple[str, str]] = []
        tried_realms: set[str] = set()
        deadline = asyncio.get_running_loop().time() + timeout_s
        request_uri = target
        for _ in range(MAX_REDIRECTS + 3):
            invite = self._invite(request_uri, target, local, call_id, cseq, flow, offer, auth)
            result = await self._run_invite(call, invite, flow, deadline)
            if result is None:
                return
            if 300 <= result.status < 400:
                contact = result.contact
                if contact is None:
                    break
                request_uri = contact.uri
                flow = await self.endpoint.flow_for(request_uri, own=True)
                call.flow = flow
                cseq += 1
                continue
            if result.status in (401, 407) and call.state != "ended":
                header = "WWW-Authenticate" if result.status == 401 else "Proxy-Authenticate"
                auth = self._authorize(result, header, request_uri, tried_realms)
                if auth:
                    cseq += 1
                    continue
            break
        reason = f"{result.status} {result.reason}" if result is not None else "failed"
        await self._end(call, call.end_reason or reason, send_bye=False)

    def _invite(self, request_uri: Uri, target: Uri, local: Address, call_id: str, cseq: int,
                flow: Flow, body: bytes, auth: list[tuple[str, str]]) -> Request:
        headers = Headers()
        headers.add("Via", str(self.endpoint.via(flow)))
        headers.add("Max-Forwards", "70")
        headers.add("From", str(local))
        headers.add("To", str(Address(target)))
        headers.add("Call-ID", call_id)
        headers.add("CSeq", f"{cseq} INVITE")
        headers.add("Contact", str(self._contact(flow)))
        headers.add("Allow", ALLOW)
        for name, value in auth:
            headers.add(name, value)
        headers.add("Content-Type", SDP)
        return Request("INVITE", request_uri, headers, body)

    def _authorize(self, response: Response, header: str, uri: Uri,
                   tried: set[str]) -> list[tuple[str, str]]:
        """Authorization for a 401/407 from configured credentials; [] if none fit."""
        for value in response.headers.get_all(header) or []:
            try:
                challenge = parse_challenge(value)
            except DigestError:
                continue
            if challenge.realm in tried and not challenge.stale:
                continue
            cred = next((c for c in self.config.credentials
                         if c.realm in ("*", challenge.realm)), None)
            if cred is None:
                continue
            tried.add(challenge.realm)
            try:
                answer_ = answer_challenge(challenge, "INVITE", str(uri), cred.user,
                                           cred.password)
            except DigestError:
                continue
            name = "Authorization" if header == "WWW-Authenticate" else "Proxy-Authorization"
            return [(name, str(answer_))]
        return []

    async def _run_invite(self, call: SipCall, invite: Request, flow: Flow,
                          deadline: float) -> Response | None:
        """Send one INVITE; None when the call got connected (or ended for good)."""
        tx = self.endpoint.request(invite, flow)
        call.invite_tx = tx
        queue: asyncio.Queue[Response | None] = asyncio.Queue()
        self._responses[id(tx)] = queue
        loop = asyncio.get_running_loop()
        cancelled = provisional = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 and not cancelled and queue.empty():  # answers first
                    call.end_reason = call.end_reason or "no answer"
                    call.cancelled = True
                    self.endpoint.cancel(tx)  # sent once a provisional response comes
                    cancelled = True
                    if not provisional:  # silent so far: end now, not at Timer B (32 s);
                        await self._end(call, "no answer", send_bye=False)  # a late 2xx
                        return None  # is ACKed and hung up as a stray (SipService)
                try:
                    response = await asyncio.wait_for(queue.get(),
                                                      max(remaining, 0.0) if not cancelled
                                                      else 40.0)
                except TimeoutError:
                    if cancelled:
                        await self._end(call, "no answer", send_bye=False)
                        return None
                    continue
                if response is None:
                    call.end_reason = call.end_reason or "timeout"
                    await self._end(call, "timeout (no response)", send_bye=False)
                    return None
                call.status = response.status
                if response.status < 200:
                    provisional = True
                    if response.status in (180, 183) and call.state == "calling":
                        call.state = "ringing"
                    continue
                if response.status >= 300:
                    return response
                await self._connected(call, invite, response, flow)
                return None
        finally:
            self._responses.pop(id(tx), None)

    async def _connected(self, call: SipCall, invite: Request, response: Response,
                         flow: Flow) -> None:
        """A 2xx: ACK it; start the media, or hang up if we cancelled meanwhile."""
        try:
            dialog = Dialog.as_uac(invite, response)
        except SipParseError as exc:
            await self._end(call, f"bad 2xx: {exc}", send_bye=False)
            return
        call.dialog = dialog
        ack = call.ack = dialog.request("ACK", self.endpoint.via(flow), cseq=invite.cseq[0])
        self.endpoint.send_stateless(ack, flow)
        if call.cancelled:  # DELETE or the dial timeout crossed the 200: hang up at once
            call.state = "active"
            await self._end(call, call.end_reason, send_bye=True)
            return
        try:
            desc = parse_audio(response.body.decode("utf-8", "replace"))
            pt, spec = choose_codec(desc, self.preference)
            self._check_target(desc, initial=False)  # c=0.0.0.0: the phone answers on hold
            if call.offered_key is not None:
                call.media.srtp = sdes.accept(call.offered_key, desc.crypto)
        except SdpError as exc:
            call.state = "active"
            await self._end(call, f"unusable answer: {exc}", send_bye=True)
            return
        call.media.telephone_event = desc.telephone_event
        self._activate(call, desc.address, desc.port, spec, pt, desc.on_hold)
        log.info("sip call %s: %s answered, playing %s as %s", call.id, call.peer,
                 call.stream.name, spec.name)

