"""The cluster's NATS is not an open door: the embedded server listens on loopback only,
and a gateway that NATS refuses does not start half-way, it exits saying why."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp
from conftest import free_port

from gateway.cluster.server import find_binary


async def _serve(*args: str, **env: str) -> asyncio.subprocess.Process:
    environ = dict(os.environ, GATEWAY_SIP__PORT=str(free_port(socket.SOCK_DGRAM)),
                   GATEWAY_RECORDING__DIRECTORY=tempfile.mkdtemp(prefix="gateway-rec-"), **env)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--log-format", "text", *args, env=environ,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def _cluster_nodes(url: str, count: int, proc: asyncio.subprocess.Process) -> dict:
    """GET /api/v1/cluster once ``count`` nodes are in it."""
    for _ in range(300):
        assert proc.returncode is None, "the gateway exited"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/api/v1/cluster") as r:
                    if r.status == 200 and len(body := await r.json()) and \
                            len(body["nodes"]) == count:
                        return body
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"not {count} nodes in the cluster")


async def _stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    return err.decode()


async def test_a_gateway_nats_refuses_exits_saying_why(tmp_path):
    port = free_port()
    nats = await asyncio.create_subprocess_exec(
        find_binary(), "-a", "127.0.0.1", "-p", str(port), "--user", "gw", "--pass", "s3cret",
        "-js", "-sd", str(tmp_path), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        url = f"nats://127.0.0.1:{port}"
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        refused = await _serve("--port", str(free_port()), "--nats-url", url, "--node-name",
                               "x", GATEWAY_CLUSTER__USER='"gw"',
                               GATEWAY_CLUSTER__PASSWORD='"wrong"')
        _, err = await asyncio.wait_for(refused.communicate(), 30)
        last = err.decode().strip().splitlines()[-1]
        assert refused.returncode == 2, err.decode()[-2000:]
        assert last.startswith("error: ") and f"NATS at {url} refused this node's " \
            "credentials" in last and "Authorization Violation" in last, last

        http_port = free_port()
        accepted = await _serve("--port", str(http_port), "--nats-url", url, "--node-name",
                                "x", GATEWAY_CLUSTER__USER='"gw"',
                                GATEWAY_CLUSTER__PASSWORD='"s3cret"')
        body = await _cluster_nodes(f"http://127.0.0.1:{http_port}", 1, accepted)
        assert body["node"] == "x" and body["connected"], body
        await _stop(accepted)
    finally:
        nats.terminate()
        await nats.wait()


def _listening(pid: int) -> list[tuple[str, str]]:
    """(protocol, local address) of every socket process ``pid`` listens on (TCP) or
    has bound (UDP), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in inodes and (proto.startswith("udp") or state == "0A"):
                address, _, port = local.partition(":")
                if len(address) == 8:
                    address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                found.append((proto, f"{address}:{int(port, 16)}"))
    return found


def _children(pid: int) -> dict[int, str]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out[int(stat.parent.name)] = comm
    return out


async def test_the_embedded_nats_server_listens_on_loopback_only():
    port = free_port()
    proc = await _serve("--workers", "2", "--port", str(port), "--node-name", "box")
    try:
        await _cluster_nodes(f"http://127.0.0.1:{port}", 2, proc)
        [nats] = [pid for pid, comm in _children(proc.pid).items() if comm == "nats-server"]
        sockets = _listening(nats)
        assert sockets and all(addr.startswith("127.0.0.1:") for _, addr in sockets), sockets
    finally:
        await _stop(proc)
