"""Headless baresip as a real SIP phone in tests, driven from asyncio.

    async with Baresip(tmp_path / "phone", rtp_ports=(p, p + 19),
                       audio_source=write_tone_wav(wav, 440, 30)) as phone:
        call = await phone.dial(f"sip:live@127.0.0.1:{gateway_sip_port}", seconds=4)
    assert call.established, call.describe()
    samples, rate = read_wav(phone.recorded()[0])

Each instance gets a fresh config directory and is controlled through baresip's ``ctrl_tcp``
module (netstring JSON over TCP on 127.0.0.1): commands go in, call and registration events
come back, time-stamped, so tests can wait for "call established" or "registered" instead of
sleeping, and can measure dial-to-media time. The process runs under asyncio because the
gateway under test lives in the same event loop.

Measured with baresip 1.0.0 (Debian 12) calling another baresip on 127.0.0.1, from the dial
command: CALL_RINGING 3-4 ms, CALL_ESTABLISHED 5-8 ms, CALL_RTPESTAB (first RTP in) 6-10 ms.
The callee's ``dump-*-dec.wav`` is the received audio from its first packet on (no leading
silence), so it says nothing about latency: use the events for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from audio_checks import write_wav
from conftest import free_port

MODULES = Path("/usr/lib/baresip/modules")
_STATUS_LINE = re.compile(r"^\[\d+:\d\d:\d\d\] audio=")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REGISTERED = re.compile(
    r"\{\d+/\w+/v[46]\} 200 "
)  # "alice@host: {0/UDP/v4} 200 OK () [1 binding]"


def write_tone_wav(
    path: str | Path, freq: float, seconds: float, rate: int = 8000, amplitude: float = 0.5
) -> Path:
    """A mono 16-bit sine WAV, so tests need not call sox. baresip's aufile source hangs up
    at the end of the file: make it longer than the call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    return write_wav(path, (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2"),
                     rate)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (int16, first channel) and rate. Tolerates a header that was never finalized
    (baresip killed mid-call): then the data after the 44-byte header is taken as is."""
    path = Path(path)
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        frames = w.readframes(w.getnframes())
    if not frames and path.stat().st_size > 44:
        frames = path.read_bytes()[44:]
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit samples, expected 16")
    data = np.frombuffer(frames[: len(frames) // 2 * 2], "<i2")
    return data[::channels].copy(), rate


def wav_seconds(path: str | Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def free_sip_port() -> int:
    """A port p where baresip can bind all it binds: UDP p, TCP p and TCP p+1 (its SIP/TLS
    transport, which baresip 1.0 cannot turn off). Still racy, hence the retry in start()."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket() as t, socket.socket() as tls:
                    t.bind(("127.0.0.1", port))
                    tls.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no port p with UDP p, TCP p and TCP p+1 free")


class _PortTaken(Exception):
    """baresip exited because a port it was told to bind was taken."""


@dataclass
class Event:
    """One ctrl_tcp event (``type`` e.g. CALL_ESTABLISHED, REGISTER_OK), with arrival time."""

    t: float  # time.monotonic()
    type: str
    data: dict

    @property
    def param(self) -> str:
        return str(self.data.get("param", ""))


@dataclass
class CallResult:
    """What happened to one outgoing call; times are seconds after the dial command."""

    uri: str
    established: bool
    close_reason: str  # "Connection reset by user" (we hung up), "...by peer" (BYE), "404 ..."
    closed_by_peer: bool
    ringing_after: float | None = None
    established_after: float | None = None
    media_after: float | None = None  # first RTP received (CALL_RTPESTAB)
    closed_after: float | None = None
    events: list[Event] = field(default_factory=list)
    log_tail: str = ""

    def describe(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        return (
            f"call to {self.uri}: established={self.established} ringing={fmt(self.ringing_after)}"
            f" established={fmt(self.established_after)} media={fmt(self.media_after)}"
            f" closed={fmt(self.closed_after)} ({self.close_reason!r})\n"
            f"events: {[e.type for e in self.events]}\nbaresip log tail:\n{self.log_tail}"
        )


class Baresip:
    """One headless baresip process with its own config directory under ``workdir``. Use it
    as ``async with`` so a failed assertion does not leave the process running. dial() ends
    the process (one call per instance, which also keeps the recordings apart)."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        sip_port: int | None = None,
        rtp_ports: tuple[int, int],
        audio_source: str | Path,
        user: str = "caller",
        answer: bool = False,
        registrar: str | None = None,
        auth_user: str | None = None,
        auth_pass: str | None = None,
        regint: int = 3600,
        codecs: Sequence[str] = ("PCMU/8000/1", "PCMA/8000/1"),
        account_params: Sequence[str] = (),
        extra_config: Sequence[str] = (),
        sip_trace: bool = False,
    ) -> None:
        """``answer``: auto-answer incoming calls (a callee).
        ``registrar``: ``host:port`` to REGISTER to (the AOR becomes user@registrar, which is
        also where the REGISTER goes); without it the account never registers (regint=0).
        ``sip_trace``: baresip -s, every SIP message in the log."""
        self.dir = Path(workdir)
        self._own_sip_port = sip_port is None
        self.sip_port = free_sip_port() if sip_port is None else sip_port
        self.rtp_ports = rtp_ports
        self.audio_source = Path(audio_source)
        self.user = user
        self.answer = answer
        self.registrar = registrar
        self.auth_user = auth_user
        self.auth_pass = auth_pass
        self.regint = regint
        self.codecs = list(codecs)
        self.account_params = list(account_params)
        self.extra_config = list(extra_config)
        self.sip_trace = sip_trace
        self.ctrl_port = free_port()
        self.rec_dir = self.dir / "rec"
        self.lines: list[tuple[float, str]] = []  # (monotonic time, stdout line)
        self.events: list[Event] = []
        self.started_at: float | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self._ctrl_task: asyncio.Task | None = None
        self._ctrl_closed = False
        self._writer: asyncio.StreamWriter | None = None
        self._responses: dict[str, asyncio.Future[dict]] = {}
        self._changed = asyncio.Condition()
        self._token = 0

    # -- configuration ----------------------------------------------------------------------

    @property
    def aor(self) -> str:
        host = self.registrar or "127.0.0.1"
        return f"sip:{self.user}@{host}"

    def account_line(self) -> str:
        params = [f"audio_codecs={','.join(self.codecs)}"]
        if self.answer:
            params.append("answermode=auto")
        if self.registrar:
            params.append(f"regint={self.regint}")
        else:
            params.append("regint=0")
        if self.auth_pass is not None:
            params.append(f"auth_user={self.auth_user or self.user}")
            params.append(f"auth_pass={self.auth_pass}")
        params += self.account_params
        return f"<{self.aor}>;" + ";".join(params)

    def write_config(self) -> None:
        """config, accounts, contacts and an empty uuid, as in ../shared/peers.md, except the
        audio player: ALSA's "null" device does not pace, so each baresip burnt ~90% of a core
        during a call; aubridge (a paced in-process device) costs ~1.5%."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rec_dir.mkdir(exist_ok=True)
        lo, hi = self.rtp_ports
        config = [
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "net_interface 127.0.0.1",  # else the SDP advertises the other interface
            "audio_player aubridge,sink",
            "audio_alert aubridge,sink",
            f"audio_source aufile,{self.audio_source}",
            "ausrc_srate 8000",
            "ausrc_channels 1",
            f"rtp_ports {lo}-{hi}",
            f"module_path {MODULES}",
            "module g711.so",
            "module sndfile.so",  # dump-*-dec.wav (received) and dump-*-enc.wav (sent)
            "module aufile.so",
            "module aubridge.so",
            "module_tmp uuid.so",
            "module_tmp account.so",
            "module_app menu.so",  # the /dial, /hangup... commands
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"snd_path {self.rec_dir}",
            *self.extra_config,
        ]
        (self.dir / "config").write_text("\n".join(config) + "\n")
        (self.dir / "accounts").write_text(self.account_line() + "\n")
        (self.dir / "contacts").write_text("")
        (self.dir / "uuid").write_text("")

    # -- process ----------------------------------------------------------------------------

    async def start(self, *, seconds: float | None = None, commands: Iterable[str] = ()) -> None:
        """Start baresip and connect to its control socket. ``seconds``: baresip -t, it quits
        (hanging up with BYE) after that long, a safety net for a test that stops early.
        ``commands``: baresip -e, run at start-up before we are connected (no events).
        Ports the harness picked itself are picked again if another process took one of
        them between the pick and baresip's bind (seen once in CI)."""
        if self.proc is not None:
            raise RuntimeError("already started")
        for attempt in range(5):
            try:
                await self._start_once(seconds, commands)
                return
            except _PortTaken:
                if attempt == 4:
                    raise RuntimeError(f"baresip could not bind its ports:\n{self.log}") from None
                self.proc = None
                self.lines.clear()
                self._tasks.clear()
                self.ctrl_port = free_port()
                if self._own_sip_port:
                    self.sip_port = free_sip_port()

    async def _start_once(self, seconds: float | None, commands: Iterable[str]) -> None:
        self.write_config()
        cmd = ["baresip", "-f", str(self.dir)]
        if self.sip_trace:
            cmd.append("-s")
        for c in commands:
            cmd += ["-e", c]
        if seconds is not None:
            cmd += ["-t", str(max(1, round(seconds)))]
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.dir,
        )
        self._tasks.append(asyncio.create_task(self._read_stdout()))
        deadline = time.monotonic() + 10
        while True:
            try:
                reader, self._writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
                break
            except OSError:
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    await self.stop()
                    if "Address already in use" in self.log:
                        raise _PortTaken from None
                    message = f"baresip control socket never came up:\n{self.log}"
                    raise RuntimeError(message) from None
                await asyncio.sleep(0.02)
        self._ctrl_task = asyncio.create_task(self._read_ctrl(reader))
        self._tasks.append(self._ctrl_task)

    async def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        pending = b""
        while chunk := await self.proc.stdout.read(4096):
            pending += chunk
            *done, pending = re.split(rb"[\r\n]", pending)
            now = time.monotonic()
            for raw in done:
                line = raw.decode(errors="replace").rstrip()
                if line and not _STATUS_LINE.match(line):
                    self.lines.append((now, line))
        if pending.strip():
            self.lines.append((time.monotonic(), pending.decode(errors="replace")))

    async def _read_ctrl(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size = await reader.readuntil(b":")
                payload = await reader.readexactly(int(size[:-1]))
                await reader.readexactly(1)  # the netstring's trailing ","
                message = json.loads(payload)
                if message.get("event"):
                    async with self._changed:
                        self.events.append(
                            Event(time.monotonic(), message.get("type", ""), message)
                        )
                        self._changed.notify_all()
                elif message.get("response"):
                    future = self._responses.pop(str(message.get("token")), None)
                    if future and not future.done():
                        future.set_result(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            async with self._changed:
                self._ctrl_closed = True
                self._changed.notify_all()

    async def command(self, command: str, params: str | None = None, timeout: float = 5) -> dict:
        """A menu command without its slash (``dial``, ``hangup``, ``quit``, ``reginfo``...);
        returns baresip's response (``ok``, ``data``)."""
        if self._writer is None:
            raise RuntimeError("not started")
        self._token += 1
        token = str(self._token)
        future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._responses[token] = future
        body: dict[str, str] = {"command": command, "token": token}
        if params is not None:
            body["params"] = params
        data = json.dumps(body).encode()
        self._writer.write(b"%d:%s," % (len(data), data))
        await self._writer.drain()
        return await asyncio.wait_for(future, timeout)

    async def wait_event(
        self, *types: str, timeout: float = 10, after: float | None = None
    ) -> Event:
        """The first event of one of ``types`` that arrived after ``after`` (monotonic time;
        default: any time since start). Raises TimeoutError with the log."""
        since = self.started_at if after is None else after

        def match() -> Event | None:
            return next((e for e in self.events if e.type in types and e.t >= since), None)

        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    while (found := match()) is None:
                        if self._ctrl_task is None or self._ctrl_closed:
                            break  # not started, or baresip has exited: nothing more will come
                        await self._changed.wait()
        except TimeoutError:
            found = None
        if found is None:
            raise TimeoutError(f"no {'/'.join(types)} event within {timeout} s:\n{self.log}")
        return found

    async def stop(self, timeout: float = 3) -> int | None:
        """Quit cleanly (calls get a BYE, WAV headers get written). A registered account
        un-REGISTERs first and baresip waits up to 32 s (timer F) if the registrar is gone:
        after ``timeout`` a second SIGTERM makes baresip exit at once (its signal handler)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None and self._writer is not None:
            with contextlib.suppress(Exception):
                await self.command("quit", timeout=2)
        for signal_it in (None, self.proc.terminate, self.proc.terminate, self.proc.kill):
            if self.proc.returncode is not None:
                break
            if signal_it is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal_it()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout if signal_it is None else 1)
        await self.proc.wait()
        if self._writer is not None:
            self._writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.proc.returncode

    async def __aenter__(self) -> Baresip:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what tests use ---------------------------------------------------------------------

    async def register(self, timeout: float = 10) -> Event:
        """Start (if needed) and wait until the registrar answered 200, digest challenges
        included. baresip registers within milliseconds of starting, usually before the control
        socket is connected, so the first REGISTER_OK event is often missed: the account's
        state is polled with ``reginfo`` too. The Event's time is when baresip logged the 200."""
        if not self.registrar:
            raise ValueError("no registrar configured")
        if self.proc is None:
            await self.start()
        assert self.started_at is not None
        deadline = time.monotonic() + timeout
        while True:
            event = self._find("REGISTER_OK", self.started_at) or self._find(
                "REGISTER_FAIL", self.started_at
            )
            info = _ANSI.sub("", (await self.command("reginfo"))["data"])
            if event is None and re.search(r"\sOK\s", info):
                logged = next((t for t, line in self.lines if _REGISTERED.search(line)), None)
                event = Event(logged or time.monotonic(), "REGISTER_OK", {"param": info.strip()})
            if event is None and re.search(r"\sERR\s", info):
                event = Event(time.monotonic(), "REGISTER_FAIL", {"param": info.strip()})
            if event is not None:
                if event.type != "REGISTER_OK":
                    raise AssertionError(f"registration failed: {event.param}\n{self.log}")
                return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"not registered within {timeout} s:\n{info}\n{self.log}")
            with contextlib.suppress(TimeoutError):
                await self.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=0.2)

    async def dial(self, uri: str, seconds: float, *, answer_timeout: float = 10) -> CallResult:
        """Call ``uri``, stay ``seconds`` after it is answered, hang up (BYE), quit baresip.
        Returns early if the call fails or the peer hangs up. Starts baresip if needed."""
        if wav_seconds(self.audio_source) < seconds + 1:
            raise ValueError(f"{self.audio_source} is shorter than the call: baresip would hang up")
        if self.proc is None:
            await self.start(seconds=seconds + answer_timeout + 10)
        dialled = time.monotonic()
        try:
            await self.command("dial", uri)
            answer = await self.wait_event(
                "CALL_ESTABLISHED", "CALL_CLOSED", timeout=answer_timeout, after=dialled
            )
            if answer.type == "CALL_ESTABLISHED":
                with contextlib.suppress(TimeoutError):
                    await self.wait_event("CALL_CLOSED", timeout=seconds, after=dialled)
        except TimeoutError:
            pass  # not answered: the hangup below CANCELs it
        finally:
            if self.proc.returncode is None and not self._find("CALL_CLOSED", dialled):
                with contextlib.suppress(Exception):
                    await self.command("hangup")
                    await self.wait_event("CALL_CLOSED", timeout=5, after=dialled)
            await self.stop()
        return self.call_result(uri, dialled)

    async def serve(self, seconds: float) -> Baresip:
        """Auto-answer incoming calls for up to ``seconds`` (then baresip quits, hanging up).
        Returns self: ``await phone.wait_event("CALL_ESTABLISHED")`` or
        ``await phone.stop()``."""
        self.answer = True
        await self.start(seconds=seconds)
        return self

    async def register_and_dial(
        self, uri: str, seconds: float, *, register_timeout: float = 10
    ) -> CallResult:
        """REGISTER first (waiting for the 200, challenges included), then dial."""
        if self.proc is None:
            await self.start(seconds=register_timeout + seconds + 20)
        try:
            await self.register(timeout=register_timeout)
        except BaseException:
            await self.stop()
            raise
        return await self.dial(uri, seconds)

    def _find(self, type_: str, after: float) -> Event | None:
        return next((e for e in self.events if e.type == type_ and e.t >= after), None)

    def call_result(self, uri: str, dialled: float) -> CallResult:
        def after(type_: str) -> float | None:
            e = self._find(type_, dialled)
            return None if e is None else e.t - dialled

        closed = self._find("CALL_CLOSED", dialled)
        reason = closed.param if closed else ""
        return CallResult(
            uri=uri,
            established=self._find("CALL_ESTABLISHED", dialled) is not None,
            close_reason=reason,
            closed_by_peer="by peer" in reason,
            ringing_after=after("CALL_RINGING"),
            established_after=after("CALL_ESTABLISHED"),
            media_after=after("CALL_RTPESTAB"),
            closed_after=after("CALL_CLOSED"),
            events=[e for e in self.events if e.t >= dialled],
            log_tail="\n".join(line for _, line in self.lines[-25:]),
        )

    def recorded(self) -> list[Path]:
        """Received audio, one WAV per call (sndfile's dump-<date-time>-dec.wav). Two calls
        that start in the same second on one instance share a name: use one per call."""
        return sorted(self.rec_dir.glob("dump-*-dec.wav"))

    @property
    def log(self) -> str:
        """baresip's output (status lines dropped), with seconds since start."""
        t0 = self.started_at or 0
        return "\n".join(f"{t - t0:7.3f} {line}" for t, line in self.lines)
