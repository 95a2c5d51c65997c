"""Configuration loading and the command line, run as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys

import aiohttp
import pytest
from conftest import free_port

from gateway.config import ConfigError, load
from gateway.webrtc.peer import IceConfig, PeerFactory


def test_defaults_work_out_of_the_box():
    cfg = load()
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8080)
    assert cfg.webrtc.ice_servers == []


def test_file_then_overrides(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[http]\nport = 9000\n[webrtc]\nhost_addresses = ["10.0.0.5"]\n')
    cfg = load(path, {"http": {"port": 9100}})
    assert cfg.http.port == 9100
    assert cfg.webrtc.host_addresses == ["10.0.0.5"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[http]\nprot = 1\n", "'http.prot'"),
        ("[htp]\nport = 1\n", "'htp'"),
        ('[http]\nport = "80"\n', "'http.port' must be int"),
        ("[http]\nport = 70000\n", "http.port"),
        ("[webrtc]\nopus_bitrate = 1\n", "webrtc.opus_bitrate"),
        ("[http\n", "not valid TOML"),
        ('[webrtc]\nice_servers = [{url = "stun:x"}]\n', "'webrtc.ice_servers[0].urls'"),
        ('[sip]\ncodecs = ["GSM"]\n', "'sip.codecs'"),
        ('[sip]\nroutes = [{match = "a", listen = "b", pubish = "c"}]\n', "'sip.routes[0].pubish'"),
        ('[sip]\nroutes = [{match = "(", listen = "b"}]\n', "'sip.routes[0].match'"),
        ('[sip]\nregistrations = [{registrar = "sip:x", user = "u"}]\n',
         "'sip.registrations[0].password'"),
        ("[sip]\nrtp_port_min = 30000\nrtp_port_max = 20000\n", "sip.rtp_port_min"),
        ('[sip]\ntransports = ["sctp"]\n', "'sip.transports'"),
        ("[sip]\nt1_ms = 0\n", "'sip.t1_ms' must be 1-4000"),
        ("[recording]\nio_threads = 0\n", "'recording.io_threads' must be 1-64"),
        # entries that are the API's requests are checked like them, before start
        ('[rtp]\noutputs = [{stream = "x", host = "h", port = 5004, codec = "GSM"}]\n',
         "'rtp.outputs[0].codec': unknown codec 'GSM'"),
        ('[rtp]\ninputs = [{stream = "x", port = 5006, payload_type = 128}]\n',
         "'rtp.inputs[0].payload_type' must be 0-127"),
        ('[recording]\nauto = ["a", {stream = "b", format = "mp3"}]\n',
         "'recording.auto[1].format' must be 'wav' or 'opus'"),
        ("[sip]\ndial_timeout_s = 0.5\n", "'sip.dial_timeout_s' must be 1-600"),
        # TOML has nan and inf; nan passes every bound and crashed the start, or turned
        # a limit off (a header timeout of nan never fired)
        # passed the check, then stopped the start with a traceback
        ('log_level = "verbose"\n', "'log_level' must be one of debug, info, warning, error"),
        ('[streams]\ndeclared = ["ok", "bad name"]\n',
         "'streams.declared[1]': invalid stream name 'bad name'"),
        ("[http]\nheader_timeout_s = nan\n", "'http.header_timeout_s': input should be a finite"),
        ("[recording]\nmax_total_mb = inf\n", "'recording.max_total_mb': input should be a fin"),
        ("[processing]\nsilence_after_s = -nan\n", "'processing.silence_after_s': input should"),
        ('[http]\nport = 0\n[sip]\nroutes = [{match = "a"}]\n',
         "'http.port' must be 1-65535; configuration key 'sip.routes[0]' needs 'listen'"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load(path)


def test_toml_tables_in_the_process_environment(monkeypatch):
    """The variables are read once, the documented way: pydantic-settings read them again
    from os.environ, as JSON only, and refused TOML tables with an error naming no key."""
    monkeypatch.setenv("GATEWAY_SIP__ROUTES", '[{match = "a", publish = "x"}]')
    monkeypatch.setenv("GATEWAY_SIP__USERS", '{alice = "secret-password"}')
    cfg = load(None, None, dict(os.environ))
    assert [(r.match, r.publish) for r in cfg.sip.routes] == [("a", "x")]
    assert dict(cfg.sip.users) == {"alice": "secret-password"}
    monkeypatch.setenv("GATEWAY_STREAMS__DECLARED", "a,b")
    with pytest.raises(ConfigError, match=re.escape("'streams.declared' must be list")):
        load(None, None, dict(os.environ))


def test_environment_overrides_the_file_and_the_command_line_overrides_both(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('log_level = "warning"\n[http]\nport = 9000\nhost = "127.0.0.2"\n'
                    '[sip]\nport = 5070\n')
    environ = {"GATEWAY_HTTP__PORT": "9100", "GATEWAY_LOG_LEVEL": "debug",
               "GATEWAY_SIP__ALLOW_FROM": '["10.0.0.0/8"]',
               "GATEWAY_AUTH__KEYS": '[{name = "ops", key = "0123456789abcdef0123", '
                                     'scopes = ["admin"]}]',
               "GATEWAY_URL": "http://elsewhere", "PATH": "/bin"}
    cfg = load(path, {"http": {"port": 9200}}, environ)
    assert (cfg.http.port, cfg.http.host, cfg.sip.port) == (9200, "127.0.0.2", 5070)
    assert cfg.log_level == "debug" and cfg.sip.allow_from == ["10.0.0.0/8"]
    assert [(k.name, k.scopes) for k in cfg.auth.keys] == [("ops", ["admin"])]
    # a quoted TOML string means the string inside, as in the file
    assert load(None, None, {"GATEWAY_LOG_LEVEL": "WARN"}).log_level == "WARN"  # logging's
    quoted = load(None, None, {"GATEWAY_SIP__ADVERTISED_HOST": '"gw.example.org"',
                               "GATEWAY_LOG_LEVEL": "'debug'"})
    assert (quoted.sip.advertised_host, quoted.log_level) == ("gw.example.org", "debug")
    with pytest.raises(ConfigError, match=re.escape("unknown configuration key 'http.prot'")):
        load(path, None, {"GATEWAY_HTTP__PROT": "1"})
    with pytest.raises(ConfigError, match=re.escape("'sip.port' must be int, got str")):
        load(path, None, {"GATEWAY_SIP__PORT": "fifty"})


def gateway_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=30
    )


def test_config_check_command(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[streams]\nring_frame = 5\n")
    run = gateway_cli("config", "check", str(bad))
    assert run.returncode == 2 and "streams.ring_frame" in run.stderr
    good = tmp_path / "good.toml"
    good.write_text("[streams]\nring_frames = 100\n")
    run = gateway_cli("config", "check", str(good))
    assert run.returncode == 0, run.stderr


def test_serve_help_documents_flags():
    run = gateway_cli("serve", "--help")
    for flag in ("--host", "--port", "--config", "--ice-host"):
        assert flag in run.stdout


async def test_serve_starts_and_answers(tmp_path):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--port",
        str(port),
        "--ice-host",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        body = None
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/v1/streams") as r:
                        body = await r.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert body == {"streams": []}
        # the embedded defaults answer SIP on 5060 too (README: scripts/run)
        loop = asyncio.get_running_loop()
        sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sip.bind(("127.0.0.1", 0))
        sip.setblocking(False)
        local = sip.getsockname()[1]
        options = (
            f"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};"
            "branch=z9hG4bKcli\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n"
            "Call-ID: cli\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        await loop.sock_sendto(sip, options.encode(), ("127.0.0.1", 5060))
        reply = await asyncio.wait_for(loop.sock_recv(sip, 4096), 5)
        sip.close()
        assert reply.startswith(b"SIP/2.0 200")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def test_nat_1to1_rewrites_candidates_in_answers():
    factory = PeerFactory(
        IceConfig(host_addresses=["127.0.0.1"], nat_1to1={"10.0.0.5": "203.0.113.7"})
    )
    sdp = (
        "c=IN IP4 10.0.0.5\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host\r\n"
        "a=candidate:2 1 udp 2130706431 10.0.0.50 40001 typ host\r\n"
    )
    out = factory.rewrite_answer(sdp)
    assert "203.0.113.7 40000 typ host" in out
    assert "10.0.0.50 40001" in out  # a different address is left alone
    assert "c=IN IP4 203.0.113.7" in out
