"""Creating peer connections the way the gateway's configuration says."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from ..config import IceServer
from . import aiortc_patches


@dataclass
class IceConfig:
    #: STUN/TURN servers (webrtc.ice_servers).
    ice_servers: list[IceServer] = field(default_factory=list)
    #: Addresses to gather host candidates on; empty means every interface but loopback.
    host_addresses: list[str] = field(default_factory=list)
    #: 1:1 NAT: map a gathered address to the public one written in SDP answers.
    nat_1to1: dict[str, str] = field(default_factory=dict)


class PeerFactory:
    def __init__(self, ice: IceConfig) -> None:
        self.ice = ice
        aiortc_patches.set_host_addresses(ice.host_addresses)
        aiortc_patches.allow_rsa_dtls_peers()

    def create(self) -> RTCPeerConnection:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.ice.ice_servers
        ]
        return RTCPeerConnection(RTCConfiguration(iceServers=servers))

    def rewrite_answer(self, sdp: str) -> str:
        """Replace private candidate addresses by their public 1:1 NAT addresses."""
        for private, public in self.ice.nat_1to1.items():
            sdp = re.sub(
                rf"(a=candidate:\S+ \d+ \S+ \d+ ){re.escape(private)}( )",
                rf"\g<1>{public}\g<2>",
                sdp,
            )
            sdp = sdp.replace(f"c=IN IP4 {private}", f"c=IN IP4 {public}")
        return sdp
