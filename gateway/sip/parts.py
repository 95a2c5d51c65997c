"""What the parts of the SIP service (dial-in, dial-out, upstream) share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import SipConfig
    from .call import SipCall
    from .endpoint import SipEndpoint
    from .media import MediaPorts
    from .registrar import Registrar


class ServicePart:
    """A slice of SipService; the attributes are set by SipService.__init__."""

    config: SipConfig
    endpoint: SipEndpoint
    ports: MediaPorts
    calls: dict[str, SipCall]
    registrar: Registrar
    stats: dict[str, int]
    preference: tuple[str, ...]
    stopping: bool
