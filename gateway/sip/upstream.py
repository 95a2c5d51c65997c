"""The gateway registering itself to an upstream PBX or trunk, kept fresh."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from ..config import SipRegistration
from .endpoint import EndpointError
from .message import Request, Response, Uri
from .parts import ServicePart
from .registration import RegistrationClient

log = logging.getLogger(__name__)


def _job_name(client: RegistrationClient) -> str:
    """The same on every node with the same configuration, whatever the entry's index."""
    what = f"{client.registrar}|{client.aor}|{client.contact.user}"
    return f"sip-registration-{hashlib.sha256(what.encode()).hexdigest()[:16]}"

class Upstream(ServicePart):
    """Mixed into SipService: one task per configured registration."""

    def _start_registrations(self) -> None:
        """Keep each configured registration fresh: in a cluster, on one node only (every
        node has the same configuration, and the upstream must not see N registrations): a
        once-per-cluster job, taken over by another node when its node dies."""
        for index, entry in enumerate(self.config.registrations):
            client = self._registration_client(entry)
            self.registrations.append(client)
            start, stop = self._registration_job(index, entry)
            self.run_once(_job_name(client), start, stop)

    def _registration_job(self, index: int, entry: SipRegistration
                          ) -> tuple[Callable[[], Awaitable[None]],
                                     Callable[[], Awaitable[None]]]:
        async def start() -> None:
            # a new client (Call-ID, CSeq): one stopped mid-request would wait for it
            client = self.registrations[index] = self._registration_client(entry)
            self.registering[index] = self._spawn(self._keep_registered(client))

        async def stop() -> None:  # another node took the job over: its REGISTERs now
            task = self.registering.pop(index, None)
            if task is not None:
                task.cancel()

        return start, stop

    def _registration_client(self, entry: SipRegistration) -> RegistrationClient:
        registrar = Uri.parse(entry.registrar)
        aor = Uri.parse(entry.aor) if entry.aor else Uri("sip", registrar.host, entry.user)
        # the shared SIP port: calls from upstream may reach any worker
        contact = self.endpoint.contact(entry.contact_user or entry.user).uri
        return RegistrationClient(registrar, aor, contact, entry.username or entry.user,
                                  entry.password, entry.expires)

    async def _keep_registered(self, client: RegistrationClient) -> None:
        """Register, refresh before expiry, retry with backoff after failures."""
        loop = asyncio.get_running_loop()
        while True:
            request = client.poll(self.endpoint.now())
            if request is None:
                deadline = client.next_deadline()
                await asyncio.sleep(1.0 if deadline is None
                                    else max(0.05, deadline - loop.time()))
                continue
            try:
                response = await self._register(client, request, 40.0)
            except EndpointError as exc:  # the registrar does not resolve, no TLS set up
                client.on_timeout(self.endpoint.now(), f"cannot send: {exc.strerror}")
            else:
                if response is None:
                    client.on_timeout(self.endpoint.now())
                else:
                    client.on_response(response, self.endpoint.now())
            failed = client.state == "failed"
            log.log(logging.WARNING if failed else logging.INFO,
                    "sip registration of %s to %s: %s%s", client.aor, client.registrar,
                    client.state, f" ({client.last_error})" if failed and client.last_error
                    else "")

    async def _register(self, client: RegistrationClient, request: Request,
                        timeout: float) -> Response | None:
        """Send one REGISTER of ``client`` (None: no final response in time;
        EndpointError: it cannot be sent)."""
        flow = await self.endpoint.flow_for(client.registrar, own=True)
        request.headers.add("Via", str(self.endpoint.via(flow)), first=True)
        return await self._send_and_wait(request, flow, timeout)

