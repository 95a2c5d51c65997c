"""The gateway registering itself to an upstream PBX or trunk, kept fresh."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .endpoint import EndpointError
from .message import Request, Response, Uri
from .parts import ServicePart
from .registration import RegistrationClient

log = logging.getLogger(__name__)

class Upstream(ServicePart):
    """Mixed into SipService: one task per configured registration."""

    def _registration_client(self, entry: dict[str, Any]) -> RegistrationClient:
        registrar = Uri.parse(entry["registrar"])
        aor = Uri.parse(entry["aor"]) if entry.get("aor") else Uri(
            "sip", registrar.host, entry["user"])
        contact = self.endpoint.contact(entry.get("contact_user", entry["user"])).uri
        return RegistrationClient(registrar, aor, contact, entry.get("username", entry["user"]),
                                  entry["password"], int(entry.get("expires", 300)))

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
            response = await self._register(client, request, 40.0)
            if response is None:
                client.on_timeout(self.endpoint.now())
            else:
                client.on_response(response, self.endpoint.now())
            log.info("sip registration to %s: %s", client.registrar, client.state)

    async def _register(self, client: RegistrationClient, request: Request,
                        timeout: float) -> Response | None:
        """Send one REGISTER of ``client`` (None: no final response in time)."""
        try:
            flow = await self.endpoint.flow_for(client.registrar)
        except EndpointError as exc:
            log.warning("sip registration to %s: %s", client.registrar, exc.strerror)
            return None
        request.headers.add("Via", str(self.endpoint.via(flow[0])), first=True)
        return await self._send_and_wait(request, flow, timeout)

