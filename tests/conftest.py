"""Shared fixtures: an in-process gateway on a free loopback port, and peer discovery."""

from __future__ import annotations

import errno
import gc
import os
import random
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))

from gateway import heap  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import load  # noqa: E402
from gateway.core.clock import MediaClock, SteppedClock  # noqa: E402
from gateway.web import server  # noqa: E402
from gateway.web.keys import GATEWAY  # noqa: E402
from gateway.web.tls import server_tls  # noqa: E402

#: CI sets this so a missing peer program fails the run instead of skipping.
REQUIRE_PEERS = os.environ.get("GATEWAY_REQUIRE_PEERS") == "1"
ARTIFACTS = Path(
    os.environ.get("GATEWAY_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The collector as ``gateway serve`` sets it (gateway/heap.py): what the imports
    built (numba, aiortc, numpy, scipy: ~200k objects) frozen, and no full collection
    at whatever moment CPython would start one, since in this process that is in the
    middle of a real-time test and pauses the in-process gateway's media clock for tens
    to hundreds of milliseconds. Full collections run between tests instead."""
    heap.settle()


_finished = 0


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """Every tenth test, a full collection between tests (what heap.Keeper's steps do in
    a served gateway; ~70 ms each here, so not after every test)."""
    global _finished
    _finished += 1
    if _finished % 10 == 0:
        gc.collect()


def need_program(*names: str) -> None:
    """Skip (or, in CI, fail) when an external peer program is not installed."""
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if missing:
        message = f"peer program(s) not installed: {', '.join(missing)}"
        if REQUIRE_PEERS:
            pytest.fail(message + " (GATEWAY_REQUIRE_PEERS=1)")
        pytest.skip(message)


#: Ports tests hand to the servers they start: below the kernel's ephemeral range (from
#: which every port-0 socket, ICE's and Chromium's among them, is given one: a port picked
#: there was once taken between the pick and the gateway's bind) and the gateway's RTP
#: range (20000-29999).
TEST_PORTS = range(10000, 20000)
_handed_out: set[int] = set()  # never the same port twice in a run


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 free for both TCP and UDP (SIP takes both), at random."""
    del kind  # both are checked
    for _ in range(200):
        port = random.choice(TEST_PORTS)
        if port in _handed_out:
            continue
        try:
            for sock_type in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, sock_type) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {TEST_PORTS}")


class RunningGateway:
    def __init__(self, app: web.Application, runner: web.AppRunner, port: int,
                 scheme: str = "http") -> None:
        self.app = app
        self.runner = runner
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.gateway = app[GATEWAY]
        self.clock = self.gateway.registry.clock

    async def step(self, frames: int = 1, **kw) -> None:
        """Advance a gateway started with ``stepped=True`` by ``frames`` ticks."""
        assert isinstance(self.clock, SteppedClock), "start the gateway with stepped=True"
        await self.clock.step(frames, **kw)


async def start_gateway(stepped: bool = False, clock: MediaClock | None = None,
                        **overrides) -> RunningGateway:
    """A gateway on a free loopback port (the caller stops it: ``gw.runner.cleanup()``);
    ``overrides`` are config sections. Also used by benchmarks."""
    for attempt in range(5):
        port = free_port()
        base = {
            "http": {"port": port},
            "webrtc": {"host_addresses": ["127.0.0.1"]},
            "sip": {"port": 0},
            # the gateway shares this process with the test's own clients, whose CPU would
            # count as its load; tests/test_overload.py checks admission on its own process
            "admission": {"enabled": False},
            "recording": {"directory": tempfile.mkdtemp(prefix="gateway-rec-")},
        }
        for section, values in overrides.items():
            base.setdefault(section, {}).update(values)
        config = load(None, base)
        app = create_app(config, SteppedClock() if stepped else clock)
        tls = server_tls(config.http)
        try:
            runner = await server.start(app, "127.0.0.1", port, tls=tls)
            break
        except OSError as exc:  # the free port became some client's meanwhile
            if exc.errno != errno.EADDRINUSE or attempt == 4:
                raise
    return RunningGateway(app, runner, port, "https" if tls else "http")


@pytest.fixture
async def gateway_factory():
    """Start gateways with config overrides; all are stopped at the end of the test.

    ``stepped=True`` gives the gateway a SteppedClock: media time moves only on
    ``gw.step(frames)``; ``clock=`` passes any other MediaClock."""
    running: list[RunningGateway] = []

    async def start(stepped: bool = False, clock: MediaClock | None = None,
                    **overrides) -> RunningGateway:
        gw = await start_gateway(stepped, clock, **overrides)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        await gw.runner.cleanup()


@pytest.fixture
async def gateway(gateway_factory) -> RunningGateway:
    return await gateway_factory()


@pytest.fixture
async def stepped_gateway(gateway_factory) -> RunningGateway:
    """A gateway whose media clock the test steps (``await gw.step(frames)``)."""
    return await gateway_factory(stepped=True)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
