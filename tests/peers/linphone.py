"""Headless linphone (Debian's linphone-cli, ``linphonec`` 5.1) as a real SIP phone in tests.

    phone = Linphone(tmp_path / "linphone", play=write_tone_wav(wav, 660, 20, rate=48000))
    call = await phone.call(f"sip:room@127.0.0.1:{gateway_sip_port}", seconds=4)
    assert call.connected, call.describe()
    samples, rate = read_wav(call.recording)

linphonec reads commands on stdin (``soundcard use files``, ``play``, ``record``, ``call``,
``terminate``, ``quit``) and prints call state changes on stdout. What it needs to run
headless on 127.0.0.1, found by trying:

* ``HOME`` must hold ``.local/share/linphone``, or it never opens a SIP socket ("No
  listening point").
* ``[sip] use_ipv6=0`` with ``ipv6_migration_done=1`` (without the second, its first start
  switches IPv6 back on and advertises the host's IPv6 address), and ``[sip]``/``[rtp]
  bind_address=127.0.0.1``, or its SDP names another interface's address.
* ``sip_tcp_port=0``/``sip_tls_port=0`` so only the chosen UDP port is bound.

It offers Opus first, and sends STUN Binding requests to the RTP and RTCP ports it is
given (RFC 7983 keepalives) before and between its RTP.

Over TLS (``tls_ca``: the CA file it verifies the gateway with; dial
``sip:...@localhost:<tls port>;transport=tls``): its TLS library (mbedTLS in belle-sip)
matches the certificate's DNS names only, not an IP address entry, so the certificate
must name ``localhost``. ``srtp=True`` makes it offer SDES SRTP and refuse a call
without it (``media_encryption_mandatory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port


@dataclass
class LinphoneCall:
    """What happened to one outgoing call."""

    uri: str
    connected: bool
    ended: bool
    recording: Path
    stdout: str
    log: str

    def describe(self) -> str:
        return (f"linphone call to {self.uri}: connected={self.connected} ended={self.ended}\n"
                f"stdout:\n{self.stdout}\nlog tail:\n{self.log[-3000:]}")


def free_rtp_port() -> int:
    """An even UDP port whose odd neighbour (RTCP) is free too."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM) & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free RTP port pair")


class Linphone:
    """One linphonec process per call, with its own HOME and rc file under ``workdir``."""

    def __init__(self, workdir: str | Path, play: Path | None = None,
                 tls_ca: Path | None = None, srtp: bool = False) -> None:
        self.workdir = Path(workdir)
        self.play = play
        self.sip_port = free_port(socket.SOCK_DGRAM)
        tls = (f"sip_tls_port={free_port()}\nroot_ca={tls_ca}\n"
               "verify_server_certs=1\nverify_server_cn=1\n") if tls_ca else "sip_tls_port=0\n"
        srtp_lines = "media_encryption=srtp\nmedia_encryption_mandatory=1\n" if srtp else ""
        self.rtp_port = free_rtp_port()
        home = self.workdir / "home"
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(home)}
        self.rc = self.workdir / "linphonerc"
        self.rc.write_text(
            "[sip]\n"
            f"sip_port={self.sip_port}\nsip_tcp_port=0\n{tls}{srtp_lines}"
            "use_ipv6=0\nipv6_migration_done=1\nbind_address=127.0.0.1\n"
            f"contact=sip:linphone@127.0.0.1:{self.sip_port}\n\n"
            "[rtp]\n"
            f"audio_rtp_port={self.rtp_port}\nbind_address=127.0.0.1\n"
        )
        self.logfile = self.workdir / "linphone.log"
        self.recording = self.workdir / "received.wav"

    async def call(self, uri: str, seconds: float, timeout: float = 10.0) -> LinphoneCall:
        """Dial ``uri``, stay ``seconds`` after it connects, hang up and quit."""
        proc = await asyncio.create_subprocess_exec(
            "linphonec", "-c", str(self.rc), "-d", "6", "-l", str(self.logfile),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.workdir,
        )
        assert proc.stdin is not None and proc.stdout is not None
        out: list[str] = []

        async def read() -> None:
            async for line in proc.stdout:  # type: ignore[union-attr]
                out.append(line.decode(errors="replace"))

        reader = asyncio.create_task(read())

        async def say(command: str) -> None:
            proc.stdin.write(command.encode() + b"\n")  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]

        async def seen(text: str, within: float) -> bool:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                if any(text in line for line in out):
                    return True
                await asyncio.sleep(0.05)
            return False

        connected = ended = False
        try:
            await say("soundcard use files")
            if self.play is not None:
                await say(f"play {self.play}")
            await say(f"record {self.recording}")
            await say(f"call {uri}")
            connected = await seen(" connected.", timeout)
            if connected:
                await asyncio.sleep(seconds)
            await say("terminate")
            ended = await seen(" ended (", 5.0)
            await say("quit")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10.0)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            reader.cancel()
        log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        return LinphoneCall(uri, connected, ended, self.recording, "".join(out), log)
