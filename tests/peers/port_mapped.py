"""A container behind Docker's bridged port mapping, and a machine outside (root only).

    async with PortMapped(tcp=[8080], udp=[8189]) as net:
        gw = await net.spawn("container", "python", "-m", "gateway", ...)
        agent = await Agent.start(net, "outside", env)

Three network namespaces, as `docker run -p 8080:8080 -p 8189:8189/udp` on a host with a
client elsewhere on its LAN:

* ``container`` 172.31.0.2/24, default route via the host (Docker's bridge network);
* ``host`` 172.31.0.1 towards the container and 10.99.0.1/24 on the LAN, forwarding, with
  nftables DNAT of the published ports to the container and masquerade of the container's
  traffic to the LAN (what Docker installs);
* ``outside`` 10.99.0.2/24, no route to the container's network, behind a firewall as a
  company's is opened for a media server: out only to the published UDP ports (any TCP),
  in only what answers its own traffic. WebRTC from it works only through the ports the
  host publishes (hole punching through ephemeral ports cannot start from either side).
"""

from __future__ import annotations

import subprocess

from .machines import Machines, _ip

ADDRESSES = {"container": "172.31.0.2", "host": "10.99.0.1", "outside": "10.99.0.2"}
HOST_BRIDGE = "172.31.0.1"


def _nft(ns: str, rules: str) -> None:
    run = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules,
                         capture_output=True, text=True, timeout=10)
    if run.returncode != 0:
        raise RuntimeError(f"nft in {ns}: {run.stderr.strip()}")


class PortMapped(Machines):
    def __init__(self, tcp: list[int], udp: list[int]) -> None:
        super().__init__(list(ADDRESSES))
        self.tcp, self.udp = tcp, udp

    def ip(self, name: str) -> str:
        """The address a machine is reached at from its own network."""
        return ADDRESSES[name]

    def _link(self, a: str, a_ip: str, b: str, b_ip: str) -> None:
        end_a, end_b = f"gw{self.tag}{a[0]}{b[0]}", f"gw{self.tag}{b[0]}{a[0]}"
        _ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
        for ns, end, address in ((self.ns(a), end_a, a_ip), (self.ns(b), end_b, b_ip)):
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "addr", "add", address, "dev", end)
            _ip("-n", ns, "link", "set", end, "up")

    def up(self) -> None:
        for name in self.names:
            self._ns_add(self.ns(name))
            _ip("-n", self.ns(name), "link", "set", "lo", "up")
        self._link("container", "172.31.0.2/24", "host", f"{HOST_BRIDGE}/24")
        self._link("host", "10.99.0.1/24", "outside", "10.99.0.2/24")
        _ip("-n", self.ns("container"), "route", "add", "default", "via", HOST_BRIDGE)
        subprocess.run(["ip", "netns", "exec", self.ns("host"), "sysctl", "-qw",
                        "net.ipv4.ip_forward=1"], check=True, timeout=10)
        lan = f"gw{self.tag}ho"
        container = ADDRESSES["container"]
        dnat = "\n".join(
            [f"iifname {lan} tcp dport {p} dnat to {container}:{p}" for p in self.tcp]
            + [f"iifname {lan} udp dport {p} dnat to {container}:{p}" for p in self.udp])
        _nft(self.ns("host"), f"""
table ip nat {{
  chain prerouting {{ type nat hook prerouting priority dstnat;
{dnat}
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat;
    ip saddr 172.31.0.0/24 oifname {lan} masquerade
  }}
}}
""")
        udp = ", ".join(str(p) for p in self.udp)
        _nft(self.ns("outside"), f"""
table inet firewall {{
  chain input {{ type filter hook input priority filter; policy drop;
    iifname lo accept
    ct state established,related accept
  }}
  chain output {{ type filter hook output priority filter; policy accept;
    oifname gw{self.tag}oh udp dport != {{ {udp} }} drop
  }}
}}
""")
