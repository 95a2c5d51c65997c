"""What the parts of the SIP service (dial-in, dial-out, upstream) share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import SipConfig
    from ..core.stream import Stream
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
    #: Makes a caller the sender of a stream (StreamBusy when a live sender holds it); the
    #: gateway replaces it with one that also claims the stream cluster-wide.
    take_sender: Callable[[Stream, Any, str], Awaitable[None]]
    #: Runs ``start`` (and ``stop`` when it moves away) of a job that must run once per
    #: cluster, named the same on every node; the gateway sets ClusterNode.once when it
    #: is clustered, else the job just starts.
    run_once: Callable[[str, Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]],
                       None]
    registering: dict[int, asyncio.Task[Any]]  # registration index -> its task, here
    #: Ends every call id (".<node>" in a cluster, so any node can tell where a call's
    #: output URL must be forwarded).
    call_suffix: str

    def _named(self, call: SipCall) -> SipCall:
        call.id += self.call_suffix
        return call
    #: Admission control: None to admit a new call, else why not (the gateway's Admission).
    admit: Callable[[str], Any]
