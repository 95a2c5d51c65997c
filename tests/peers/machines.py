"""Several "machines" on one host: network namespaces joined by a bridge (root only).

    async with Machines(["a", "b", "c"]) as m:
        proc = await m.spawn("a", "nats-server", "-a", m.ip("a"), ...)

Each machine is a namespace with ``lo`` and one veth to a bridge that lives in a namespace
of its own, so nothing touches the host's interfaces; machine ``i`` (in the order given)
has address ``10.77.0.<i+1>/24``. Namespace names carry a random tag, so parallel runs do
not collide; ``close()`` kills what ``spawn`` started and deletes the namespaces, also
after a failure. Recipe: ../shared/peers.md, "Several machines on one".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class MachinesUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2); says what is missing."""


def _ip(*args: str) -> None:
    run = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {run.stderr.strip()}")


class Machines:
    def __init__(self, names: Sequence[str], subnet: str = "10.77.0") -> None:
        self.tag = secrets.token_hex(2)
        self.names = list(names)
        self.subnet = subnet
        self.bridge_ns = f"gw{self.tag}br"
        self.processes: list[asyncio.subprocess.Process] = []
        self._made: list[str] = []

    def ns(self, name: str) -> str:
        return f"gw{self.tag}{name}"

    def ip(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 1}"

    def _veth(self, name: str) -> str:
        return f"gw{self.tag}{name}"[:13]

    def up(self) -> None:
        if shutil.which("ip") is None:
            raise MachinesUnavailable("the ip command (Debian package iproute2) is missing")
        try:
            self._ns_add(self.bridge_ns)
        except RuntimeError as exc:
            raise MachinesUnavailable(
                f"cannot create a network namespace (these tests need root): {exc}") from None
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for name in self.names:
            ns, veth = self.ns(name), self._veth(name)
            self._ns_add(ns)
            _ip("link", "add", veth + "0", "type", "veth", "peer", "name", veth + "1")
            _ip("link", "set", veth + "0", "netns", ns)
            _ip("link", "set", veth + "1", "netns", self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "set", veth + "1", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.ip(name)}/24", "dev", veth + "0")
            _ip("-n", ns, "link", "set", veth + "0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _ns_add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)

    def unplug(self, name: str) -> None:
        """Pull the machine's cable (its port on the bridge goes down)."""
        _ip("-n", self.bridge_ns, "link", "set", self._veth(name) + "1", "down")

    def rx_bytes(self, name: str) -> int:
        """Bytes the machine's interface has received from the bridge."""
        path = f"/sys/class/net/{self._veth(name)}0/statistics/rx_bytes"
        run = subprocess.run(["ip", "netns", "exec", self.ns(name), "cat", path],
                             capture_output=True, text=True, timeout=10, check=True)
        return int(run.stdout)

    async def spawn(self, name: str, *argv: str, **kwargs) -> asyncio.subprocess.Process:
        """Run ``argv`` on machine ``name``; killed (with its process group) by close()."""
        kwargs.setdefault("stdin", asyncio.subprocess.DEVNULL)
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns(name), *argv, start_new_session=True, **kwargs)
        self.processes.append(proc)
        return proc

    @staticmethod
    def kill(proc: asyncio.subprocess.Process) -> None:
        """kill -9 the process and everything in its session."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        for proc in self.processes:
            if proc.returncode is None:
                self.kill(proc)
        for proc in self.processes:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
        for ns in reversed(self._made):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()

    async def __aenter__(self) -> Machines:
        try:
            self.up()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Agent:
    """Drives tests/peers/agent.py on one machine: ``await agent.call("listen", ...)``."""

    SCRIPT = Path(__file__).with_name("agent.py")

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = \
            asyncio.get_running_loop().create_future()
        self._pending[0] = self._ready
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, machines: Machines, name: str, env: dict[str, str]) -> Agent:
        proc = await machines.spawn(name, sys.executable, str(cls.SCRIPT), env=env,
                                    stdin=asyncio.subprocess.PIPE,
                                    stdout=asyncio.subprocess.PIPE)
        return cls(proc, name)

    async def ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._ready, timeout)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            reply = json.loads(line)
            future = self._pending.pop(reply.get("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError(f"agent on {self.name} exited"))

    async def call(self, op: str, timeout: float = 20.0, check: bool = True,
                   **args: Any) -> dict[str, Any]:
        """Run ``op`` on the machine; its reply (raises on failure when ``check``)."""
        assert self.proc.stdin is not None
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        self.proc.stdin.write(json.dumps({"id": self._next, "op": op, **args}).encode()
                              + b"\n")
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(future, timeout)
        if check and not reply["ok"]:
            raise RuntimeError(f"{op} on {self.name}: {reply['error']}")
        return reply

    async def get(self, url: str) -> Any:
        reply = await self.call("http", url=url)
        assert reply["status"] == 200, (url, reply)
        return reply["body"]
