"""Creating peer connections the way the gateway's configuration says."""

from __future__ import annotations

import errno
import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from aioice.candidate import candidate_foundation
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from ..config import IceServer
from . import aiortc_patches
from .udp_mux import SharedUdpPort

log = logging.getLogger(__name__)

_HOST_CANDIDATE = re.compile(
    r"^a=candidate:\S+ (\d+) udp (\d+) (\S+) (\d+) typ host\b[^\r\n]*", re.MULTILINE | re.I)


class SharedPortError(OSError):
    """The shared WebRTC port cannot be opened (in use, or not an address of this host)."""


@dataclass
class IceConfig:
    #: STUN/TURN servers (webrtc.ice_servers).
    ice_servers: list[IceServer] = field(default_factory=list)
    #: Addresses to gather host candidates on; empty means every interface but loopback.
    host_addresses: list[str] = field(default_factory=list)
    #: 1:1 NAT: map a gathered address to the public one written in SDP answers.
    nat_1to1: dict[str, str] = field(default_factory=dict)
    #: One UDP port for every session's media (0: a port per session).
    udp_port: int = 0
    #: Addresses announced as host candidates on the shared port besides the gathered
    #: ones (the host's address in front of a container's port mapping).
    additional_hosts: list[str] = field(default_factory=list)


class PeerFactory:
    def __init__(self, ice: IceConfig) -> None:
        self.ice = ice
        #: Host address -> its shared port, once start() opened them (webrtc.udp_port).
        self.udp_ports: dict[str, SharedUdpPort] = {}
        aiortc_patches.set_host_addresses(ice.host_addresses)
        aiortc_patches.allow_rsa_dtls_peers()

    async def start(self, worker: int | None = None) -> None:
        """Open ``udp_port`` (+ the worker's index: each worker process has its own) on
        every host candidate address; SharedPortError when one cannot be bound."""
        if not self.ice.udp_port:
            return
        port = self.ice.udp_port + (worker or 0)
        if port > 65535:
            raise SharedPortError(errno.EINVAL, f"webrtc.udp_port: worker {worker} would "
                                  f"use UDP port {port}, above 65535")
        configured = bool(self.ice.host_addresses)
        for host in aiortc_patches.host_addresses():
            shared = SharedUdpPort(host, port)
            try:
                await shared.open()
            except OSError as exc:
                if configured or exc.errno == errno.EADDRINUSE:
                    self.close()
                    raise SharedPortError(
                        exc.errno, f"webrtc.udp_port: cannot bind UDP {host}:{port}: "
                        f"{exc.strerror or exc}") from None
                log.warning("webrtc.udp_port: %s:%d not bound (%s); sessions get a port "
                            "of their own on that address", host, port, exc.strerror or exc)
                continue
            self.udp_ports[host] = shared
        if not self.udp_ports:
            raise SharedPortError(errno.EADDRNOTAVAIL,
                                  "webrtc.udp_port: no address to bind it on")

    def close(self) -> None:
        for shared in self.udp_ports.values():
            shared.close()
        self.udp_ports.clear()

    def info(self) -> list[dict[str, Any]]:
        return [shared.info() for shared in self.udp_ports.values()]

    def create(self) -> RTCPeerConnection:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.ice.ice_servers
        ]
        return RTCPeerConnection(RTCConfiguration(iceServers=servers))

    def rewrite_answer(self, sdp: str) -> str:
        """Announce the additional hosts on the shared port, and replace private
        candidate addresses by their public 1:1 NAT addresses."""
        if self.ice.additional_hosts and self.udp_ports:
            sections = []
            for section in sdp.split("\r\nm="):  # each extra once per media section,
                extend = functools.partial(self._with_additional_hosts, added=set())
                sections.append(_HOST_CANDIDATE.sub(extend, section))  # after IPv4 or IPv6
            sdp = "\r\nm=".join(sections)
        for private, public in self.ice.nat_1to1.items():
            sdp = re.sub(
                rf"(a=candidate:\S+ \d+ \S+ \d+ ){re.escape(private)}( )",
                rf"\g<1>{public}\g<2>",
                sdp,
            )
            sdp = sdp.replace(f"c=IN IP4 {private}", f"c=IN IP4 {public}")
        return sdp

    def _with_additional_hosts(self, match: re.Match[str], added: set[str]) -> str:
        component, priority, host, port = match.groups()
        shared = self.udp_ports.get(host)
        if shared is None or int(port) != shared.port:
            return match.group(0)
        lines = [match.group(0)]
        for i, extra in enumerate(self.ice.additional_hosts, 1):
            if extra not in added:
                added.add(extra)
                lines.append(f"a=candidate:{candidate_foundation('host', 'udp', extra)} "
                             f"{component} udp {int(priority) - i} {extra} {port} "
                             "typ host")
        return "\r\n".join(lines)
