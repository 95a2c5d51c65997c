"""HTTPS (issue 17, item 2): the API, WHIP and WHEP and the pages over TLS with a
certificate from the configuration, Chromium included; a renewed certificate is picked
up on SIGHUP without a restart, and a bad one is refused while the old one serves on."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from audio_checks import active, assert_tone
from conftest import free_port, need_program
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from stepping import send_tone
from test_browser import CHROMIUM, chromium, text_becomes, wait_until, write_tone_wav

from gateway.config import ConfigError, load
from gateway.web.self_signed import make_self_signed
from gateway.web.tls import server_tls
from gateway.webrtc.client import Listener


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate (and checks the name)."""
    return ssl.create_default_context(cafile=str(cert))


def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)


def pem_der(cert: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)


def test_certificate_and_key_go_together_and_must_load(tmp_path):
    with pytest.raises(ConfigError, match="tls_cert and http.tls_key go together"):
        load(None, {"http": {"tls_cert": str(tmp_path / "cert.pem")}})
    config = load(None, {"http": {"tls_cert": str(tmp_path / "missing.pem"),
                                  "tls_key": str(tmp_path / "missing-key.pem")}})
    with pytest.raises(ConfigError, match="http.tls_cert / http.tls_key: cannot load"):
        server_tls(config.http)
    cert, _ = make_self_signed(tmp_path / "a", ["127.0.0.1"])
    _, other_key = make_self_signed(tmp_path / "b", ["127.0.0.1"])
    mismatched = load(None, {"http": {"tls_cert": str(cert), "tls_key": str(other_key)}})
    with pytest.raises(ConfigError, match="cannot load"):
        server_tls(mismatched.http)


async def test_api_and_whep_over_https(gateway_factory, tmp_path):
    cert, key = make_self_signed(tmp_path, ["127.0.0.1", "localhost"])
    gw = await gateway_factory(http={"tls_cert": str(cert), "tls_key": str(key)})
    assert gw.url.startswith("https://")
    trust = trusting(cert)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
        async with http.get(f"{gw.url}/healthz") as r:
            assert r.status == 200
    # plain HTTP on the HTTPS port gets nothing served
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{gw.port}/healthz") as r:
                await r.read()
    # a client that does not trust the certificate is refused
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(f"{gw.url}/healthz") as r:
                await r.read()
    sender = send_tone(gw, "secure", 440)
    listener = Listener(gw.url, "secure")
    listener.ssl = trust
    await listener.negotiate()
    await listener.connected()
    await wait_until(lambda: len(active(listener.audio())) >= 2 * 48000, 10, "2 s of audio")
    assert_tone(active(listener.audio()), 440, min_seconds=2.0)
    assert await listener.delete() == 200
    gw.gateway.registry.get("secure").detach(sender)


async def serve_tls(tmp_path: Path, cert: Path, key: Path, *args: str):  # type: ignore[no-untyped-def]
    """``gateway serve`` over HTTPS as a child process: (process, port, log file)."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[http]\nport = {port}\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                      '[sip]\nenabled = false\n')
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config), *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 30
    while True:
        try:
            await asyncio.to_thread(served_certificate, port)
            return proc, port, log
        except OSError:
            assert time.monotonic() < deadline and proc.returncode is None, log.read_text()
            await asyncio.sleep(0.1)


async def test_sighup_reloads_the_certificate_and_a_bad_one_is_refused(tmp_path):
    cert, key = make_self_signed(tmp_path / "live", ["127.0.0.1"])
    proc, port, log = await serve_tls(tmp_path, cert, key)
    try:
        assert await asyncio.to_thread(served_certificate, port) == pem_der(cert)
        # renewed: new files in place, then SIGHUP
        new_cert, new_key = make_self_signed(tmp_path / "renewed", ["127.0.0.1"])
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "certificate reloaded" in log.read_text(), 5, "the reload")
        assert await asyncio.to_thread(served_certificate, port) == pem_der(new_cert)
        # a broken pair (a key that is not the certificate's) is refused; the renewed
        # one keeps serving
        _, stray_key = make_self_signed(tmp_path / "stray", ["127.0.0.1"])
        key.write_bytes(stray_key.read_bytes())
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "keeping the current certificate" in log.read_text(), 5,
                         "the refusal")
        assert await asyncio.to_thread(served_certificate, port) == pem_der(new_cert)
        assert proc.returncode is None
    finally:
        proc.terminate()
        await proc.wait()


async def test_with_workers_sighup_reaches_every_worker(tmp_path):
    cert, key = make_self_signed(tmp_path / "live", ["127.0.0.1"])
    proc, port, log = await serve_tls(tmp_path, cert, key, "--workers", "2")
    try:
        await wait_until(lambda: log.read_text().count("started (pid") >= 2, 20, "2 workers")
        await asyncio.sleep(2)  # both workers listening
        new_cert, new_key = make_self_signed(tmp_path / "renewed", ["127.0.0.1"])
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: log.read_text().count("certificate reloaded") == 2, 10,
                         "both workers' reloads")
        # SO_REUSEPORT spreads new connections over both workers: all get the new one
        served = {await asyncio.to_thread(served_certificate, port) for _ in range(20)}
        assert served == {pem_der(new_cert)}
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.peer("chromium")
@pytest.mark.timeout(60)
async def test_chromium_publishes_over_https(gateway_factory, tmp_path):
    """The publish page and WHIP over HTTPS in a real browser that trusts the gateway's
    self-signed certificate (by its public key, as a pinned certificate would be)."""
    need_program(CHROMIUM)
    cert, key = make_self_signed(tmp_path / "tls", ["127.0.0.1"])
    gw = await gateway_factory(http={"tls_cert": str(cert), "tls_key": str(key)})
    spki = x509.load_pem_x509_certificate(cert.read_bytes()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    wav = write_tone_wav(tmp_path / "tone660.wav", 660)
    async with chromium(tmp_path, wav,
                        (f"--ignore-certificate-errors-spki-list={pin}",)) as page:
        await page.goto(f"{gw.url}/publish?stream=tls-mic")
        assert await page.evaluate("window.isSecureContext")
        await page.click("#start")
        await text_becomes(page, "#status", "publishing")
        listener = Listener(gw.url, "tls-mic")
        listener.ssl = trusting(cert)
        await listener.negotiate()
        await listener.connected()
        await wait_until(lambda: len(active(listener.audio())) >= 3 * 48000, 12,
                         "3 s of audible audio")
        assert_tone(active(listener.audio()), 660, min_seconds=3.0)
        assert await listener.delete() == 200
        await page.click("#stop")
        await text_becomes(page, "#status", "stopped")


def test_scripts_run_takes_tls_self_signed_anywhere_for_the_addresses_it_serves(tmp_path):
    """`scripts/run --port 8443 --ice-host 192.0.2.5 --tls-self-signed`: the option may
    come after the others, and the certificate covers the address browsers will use."""
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "scripts").mkdir()
    shutil.copy(root / "scripts" / "run", tmp_path / "scripts" / "run")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    fake = bin_dir / "gateway"  # prints what it would have served with
    fake.write_text('#!/bin/sh\necho "args: $*"\necho "cert: $GATEWAY_HTTP__TLS_CERT"\n')
    fake.chmod(0o755)
    out = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "run"), "--port", "8443", "--ice-host",
         "192.0.2.5", "--tls-self-signed", "--host=0.0.0.0"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": str(root)}).stdout
    assert "args: serve --port 8443 --ice-host 192.0.2.5 --host=0.0.0.0\n" in out, out
    assert f"cert: {tmp_path}/.tls/cert.pem" in out, out
    cert = x509.load_pem_x509_certificate((tmp_path / ".tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert {"192.0.2.5", "127.0.0.1"} <= addresses and "0.0.0.0" not in addresses, addresses
