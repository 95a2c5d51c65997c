"""`gateway serve` as child processes, for cluster tests: one node, or a supervisor of
`--workers N`, configured by a TOML text; plus HTTP on a new connection per request (so
SO_REUSEPORT hands each one to any worker) and a PCMU tone sender for RTP inputs.

    gw = await GatewayProcess.start(tmp_path / "a", toml, "--workers", "2", nodes=2)
    status, body, node = await http("GET", f"{gw.url}/api/v1/cluster")
    await gw.stop()  # SIGTERM, waits, asserts a clean exit; gw.log has its output
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from conftest import free_port
from sip_phone import tone_ulaw


async def http(method: str, url: str, body: dict | None = None) -> tuple[int, Any, str]:
    """(status, JSON body or text, X-Gateway-Node) of one request on a new connection."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, json=body) as r:
            data = await r.json() if r.content_type.endswith("json") else await r.text()
            return r.status, data, r.headers.get("X-Gateway-Node", "")


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    @classmethod
    async def start(cls, directory: Path, config: str, *args: str, nodes: int = 1,
                    env: dict[str, str] | None = None) -> GatewayProcess:
        """Start ``gateway serve -c <config> <args>`` and wait until its cluster lists
        ``nodes`` nodes (0: until its HTTP API answers)."""
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / "gateway.toml"
        config_path.write_text(config)
        port = free_port()
        log_path = directory / "gateway.log"
        with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block it
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "-c", str(config_path),
                "--port", str(port), "--log-format", "text", *args,
                env={**os.environ, **(env or {})}, stdout=log, stderr=log,
                start_new_session=True)
        gw = cls(proc, f"http://127.0.0.1:{port}", log_path)
        try:
            await gw._wait_ready(nodes)
        except BaseException:
            await gw.stop(check=False)
            raise
        return gw

    async def _wait_ready(self, nodes: int) -> None:
        deadline = time.monotonic() + 30
        path = "/api/v1/cluster" if nodes else "/api/v1/streams"
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log}")
            with contextlib.suppress(aiohttp.ClientError):
                status, body, _ = await http("GET", self.url + path)
                if status == 200 and (not nodes or len(body["nodes"]) >= nodes):
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not ready with {nodes} nodes in 30 s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def workers(self) -> dict[int, int]:
        """Worker index -> pid, for `--workers N` (read from the children's environment)."""
        out = {}
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text(
        ).split():
            with contextlib.suppress(OSError):
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                for item in env:
                    if item.startswith(b"GATEWAY_WORKER_INDEX="):
                        out[int(item.split(b"=", 1)[1])] = int(child)
        return out

    async def stop(self, check: bool = True, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if check:
            assert self.proc.returncode == 0, self.log


async def send_tone(port: int, freq: float, host: str = "127.0.0.1") -> None:
    """PCMU packets of a tone to ``host:port`` every 20 ms, until cancelled."""
    payloads = tone_ulaw(freq, 1.0)  # a whole number of periods for 440 Hz: loops cleanly
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    start = loop.time()
    try:
        for i in range(1 << 30):
            header = (b"\x80\x00" + (i & 0xFFFF).to_bytes(2, "big")
                      + (160 * i & 0xFFFFFFFF).to_bytes(4, "big") + b"\x00\x00\x44\x00")
            await loop.sock_sendto(sock, header + payloads[i % len(payloads)], (host, port))
            await asyncio.sleep(max(0.0, start + 0.02 * (i + 1) - loop.time()))
    finally:
        sock.close()
