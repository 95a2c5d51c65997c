"""`gateway serve --workers N`: N gateway processes on one machine, acting as one gateway.

The supervisor (this module) starts an embedded nats-server on loopback (unless
``[cluster] nats_url`` names one), then N workers: each is a full gateway node (its own
event loop, its own core), joined to the others through NATS, on the same HTTP and SIP
ports (SO_REUSEPORT: the kernel spreads connections and callers over them). A worker that
dies is restarted; SIGTERM and SIGINT are passed on and the supervisor waits for every
worker's graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time

from .server import EmbeddedNats, NatsServerError, die_with_parent

log = logging.getLogger(__name__)

#: Environment variable that makes `gateway serve` a worker (its index).
WORKER_ENV = "GATEWAY_WORKER_INDEX"
#: The node names of all the workers of one supervisor, comma-separated: siblings.
SIBLINGS_ENV = "GATEWAY_WORKER_NODES"
#: A worker that exits sooner than this after starting, twice in a row, stops everything.
FAST_FAIL_S = 5.0


def worker_count(requested: int) -> int:
    """``0`` (auto): one worker per core the process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Supervisor:
    def __init__(self, argv: list[str], workers: int, nats_url: list[str], node_name: str,
                 shutdown_timeout: float) -> None:
        self.argv = argv  # `gateway serve` arguments, passed on to every worker
        self.workers = workers
        self.nats_url = list(nats_url)
        self.node_name = node_name
        self.shutdown_timeout = shutdown_timeout
        self.embedded: EmbeddedNats | None = None
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        self.exit_code = 0

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env[WORKER_ENV] = str(index)
        env["GATEWAY_CLUSTER__NATS_URL"] = json.dumps(self.nats_url)
        env["GATEWAY_CLUSTER__NODE_NAME"] = f"{self.node_name}-w{index}"
        env["GATEWAY_CLUSTER__WORKERS"] = "1"
        env[SIBLINGS_ENV] = ",".join(f"{self.node_name}-w{i}" for i in range(self.workers))
        return env

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", *self.argv, env=self._env(index),
            start_new_session=True, preexec_fn=die_with_parent)
        self.processes[index] = process
        log.info("worker %d started (pid %d)", index, process.pid)
        return process

    def _forward(self, sig: int) -> None:
        """SIGHUP (reload the HTTPS certificate) goes to every worker."""
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(sig)

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; restart it when it dies, unless it cannot start at all."""
        fast_failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            process = await self._spawn(index)
            code = await process.wait()
            if self.stopping.is_set():
                return
            quick = time.monotonic() - started < FAST_FAIL_S
            fast_failures = fast_failures + 1 if quick else 0
            log.error("worker %d exited with %s%s", index, code,
                      "" if fast_failures < 2 else "; it cannot start: stopping")
            if code == 2 or fast_failures >= 2:  # 2: configuration refused
                self.exit_code = code or 1
                self.stopping.set()
                return
            await asyncio.sleep(1.0)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        if not self.nats_url:
            self.embedded = EmbeddedNats()
            try:
                await self.embedded.start()
            except NatsServerError as exc:
                log.error("%s", exc)
                return 2
            self.nats_url = [self.embedded.url]
        log.info("%d workers, NATS at %s", self.workers, ", ".join(self.nats_url))
        keepers = [asyncio.create_task(self._keep(i)) for i in range(self.workers)]
        await self.stopping.wait()
        await self._stop_workers()
        for keeper in keepers:
            keeper.cancel()
        if self.embedded is not None:
            await self.embedded.stop()
        return self.exit_code

    async def _stop_workers(self) -> None:
        live = [p for p in self.processes.values() if p.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)),
                                   self.shutdown_timeout + 5.0)
        except TimeoutError:
            for process in live:
                if process.returncode is None:
                    log.error("worker pid %d did not stop: killed", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
