"""Shared fixtures: an in-process gateway on a free loopback port, and peer discovery."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))

from gateway.app import create_app  # noqa: E402
from gateway.config import load  # noqa: E402
from gateway.web.keys import GATEWAY  # noqa: E402

#: CI sets this so a missing peer program fails the run instead of skipping.
REQUIRE_PEERS = os.environ.get("GATEWAY_REQUIRE_PEERS") == "1"
ARTIFACTS = Path(
    os.environ.get("GATEWAY_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


def need_program(*names: str) -> None:
    """Skip (or, in CI, fail) when an external peer program is not installed."""
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if missing:
        message = f"peer program(s) not installed: {', '.join(missing)}"
        if REQUIRE_PEERS:
            pytest.fail(message + " (GATEWAY_REQUIRE_PEERS=1)")
        pytest.skip(message)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningGateway:
    def __init__(self, app: web.Application, runner: web.AppRunner, port: int) -> None:
        self.app = app
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.gateway = app[GATEWAY]


@pytest.fixture
async def gateway_factory():
    """Start gateways with config overrides; all are stopped at the end of the test."""
    running: list[RunningGateway] = []

    async def start(**overrides) -> RunningGateway:
        port = free_port()
        base = {
            "http": {"port": port},
            "webrtc": {"host_addresses": ["127.0.0.1"]},
            "sip": {"port": 0},
            "recording": {"directory": tempfile.mkdtemp(prefix="gateway-rec-")},
        }
        for section, values in overrides.items():
            base.setdefault(section, {}).update(values)
        app = create_app(load(None, base))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        gw = RunningGateway(app, runner, port)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        await gw.runner.cleanup()


@pytest.fixture
async def gateway(gateway_factory) -> RunningGateway:
    return await gateway_factory()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
