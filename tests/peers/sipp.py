"""Run SIPp scenarios against the gateway without blocking the event loop it runs in.

    result = await run_sipp(SCENARIOS / "uac_listen.xml", f"127.0.0.1:{sip_port}",
                            service="live",
                            keys={"rtp_port": str(rtp_port), "listen_ms": "3000"})
    assert result.ok, result.describe()

The gateway under test lives in the test's event loop, so sipp must run as an asyncio
subprocess: a blocking ``subprocess.run`` would freeze the server sipp is talking to.
Scenario files, their keys and what each was validated against: ``tests/peers/sipp/*.xml``.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCENARIOS = Path(__file__).parent / "sipp"

#: Same default as ``conftest.ARTIFACTS``; not imported, since importing conftest pulls in the
#: whole gateway and these helpers also run from stand-alone scripts.
ARTIFACTS = Path(
    os.environ.get("GATEWAY_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)

#: sipp's exit codes (sipp(1)); 255 also covers "-timeout reached" because we pass -timeout_error.
EXIT_CODES = {
    0: "all calls succeeded",
    1: "at least one call failed",
    97: "exit on internal command (e.g. -timeout without -timeout_error)",
    99: "normal exit without calls processed",
    253: "RTP validation failure",
    254: "connection error",
    255: "fatal error (bad scenario or option, port in use) or -timeout reached",
}

_BLOCK = re.compile(
    r"^-{20,} (?P<ts>[^\n]*)\n(?:UDP|TCP|TLS|SCTP) message "
    r"(?P<dir>sent|received)[^\n]*\n\n(?P<text>.*?)(?=^-{20,} |\Z)",
    re.M | re.S,
)


@dataclass
class SipMessage:
    """One message from sipp's -trace_msg file."""

    direction: str  # "sent" | "received"
    timestamp: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def status(self) -> int | None:
        """Response code, or None for a request."""
        m = re.match(r"SIP/2\.0 (\d{3})", self.first_line)
        return int(m.group(1)) if m else None

    @property
    def method(self) -> str:
        """Request method, or the CSeq method for a response."""
        if self.status is None:
            return self.first_line.split(" ", 1)[0]
        return (self.header("CSeq") or " ").split()[-1]

    def header(self, name: str) -> str | None:
        m = re.search(rf"^{re.escape(name)}\s*:\s*(.*?)\s*$", self.text, re.M | re.I)
        return m.group(1) if m else None


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    command: list[str]
    log_dir: Path
    seconds: float
    timed_out: bool = False  # we had to kill sipp (its own -timeout did not fire)
    messages_path: Path = field(init=False)
    errors_path: Path = field(init=False)
    logs_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.messages_path = self.log_dir / "messages.log"
        self.errors_path = self.log_dir / "errors.log"
        self.logs_path = self.log_dir / "logs.log"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def trace(self) -> str:
        """Every SIP message sent and received (-trace_msg)."""
        return self._read(self.messages_path)

    @property
    def errors(self) -> str:
        """Unexpected messages, failed regexp checks... (-trace_err); empty when all went well."""
        return self._read(self.errors_path)

    @property
    def logs(self) -> str:
        """Output of the scenario's <log> actions (-trace_logs)."""
        return self._read(self.logs_path)

    def messages(self, direction: str | None = None) -> list[SipMessage]:
        found = [
            SipMessage(m["dir"], m["ts"].strip(), m["text"].replace("\r\n", "\n").rstrip("\n"))
            for m in _BLOCK.finditer(self.trace)
        ]
        return [m for m in found if direction is None or m.direction == direction]

    def responses(self, method: str = "INVITE") -> list[SipMessage]:
        """Received responses to ``method``, in arrival order (retransmissions included)."""
        return [m for m in self.messages("received") if m.status is not None and m.method == method]

    def remote_tags(self, method: str = "INVITE") -> set[str]:
        """To tags the peer used in responses to ``method``: more than one means more than
        one dialog (sipp itself does not notice, see uac_retransmit.xml)."""
        tags = set()
        for m in self.responses(method):
            tag = re.search(r";\s*tag=([^;>\s]+)", m.header("To") or "")
            if tag and (m.status or 0) > 100:
                tags.add(tag.group(1))
        return tags

    def describe(self, last_messages: int = 8) -> str:
        """Everything worth seeing in a failed assertion, short enough to read."""
        meaning = EXIT_CODES.get(self.returncode, "?")
        lines = [
            f"sipp exit {self.returncode} ({meaning}) after {self.seconds:.1f} s"
            + (" - killed by the harness" if self.timed_out else ""),
            "command: " + " ".join(self.command),
            f"logs in {self.log_dir}",
        ]
        if self.stderr.strip():
            lines += ["stderr:", self.stderr.strip()[-2000:]]
        if self.errors.strip():
            lines += ["errors (-trace_err):", self.errors.strip()[-3000:]]
        msgs = self.messages()
        if msgs:
            lines.append(f"last {min(last_messages, len(msgs))} of {len(msgs)} SIP messages:")
            for m in msgs[-last_messages:]:
                arrow = "-->" if m.direction == "sent" else "<--"
                lines.append(f"  {m.timestamp} {arrow} {m.first_line}")
        return "\n".join(lines)


async def run_sipp(
    scenario: str | Path,
    target: str | None,
    *,
    local_port: int | None = None,
    keys: Mapping[str, str | int | float] | None = None,
    service: str = "room",
    calls: int = 1,
    rate: float | None = None,
    timeout: float = 30,
    extra: Sequence[str] = (),
    log_dir: Path | None = None,
    local_ip: str = "127.0.0.1",
) -> SippResult:
    """Run one sipp scenario to completion and return what happened.

    ``scenario``: a path, or a file name in SCENARIOS (``"uac_listen.xml"``).
    ``target``: ``host:port`` the UAC scenarios send to; None for UAS scenarios.
    ``keys``: ``-key name value`` pairs, read as ``[name]`` in the scenario.
    ``timeout``: sipp's own -timeout (it then exits 255); the process is killed 5 s later.
    ``extra``: more sipp options, e.g. ``["-recv_timeout", "5000"]``.
    ``local_port``: sipp's SIP port; by default a free one, picked again if another process
    binds it between the pick and sipp's start.
    """
    kwargs = dict(keys=keys, service=service, calls=calls, rate=rate, timeout=timeout,
                  extra=extra, log_dir=log_dir, local_ip=local_ip)
    if local_port is not None:
        return await _run_sipp_once(scenario, target, local_port=local_port, **kwargs)
    for _ in range(4):
        result = await _run_sipp_once(scenario, target, local_port=_free_udp_port(), **kwargs)
        if "Unable to bind main socket" not in result.stderr:
            break
    return result


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _run_sipp_once(
    scenario: str | Path,
    target: str | None,
    *,
    local_port: int,
    keys: Mapping[str, str | int | float] | None,
    service: str,
    calls: int,
    rate: float | None,
    timeout: float,
    extra: Sequence[str],
    log_dir: Path | None,
    local_ip: str,
) -> SippResult:
    path = Path(scenario)
    if not path.is_absolute() and not path.exists():
        path = SCENARIOS / path
    if not path.exists():
        raise FileNotFoundError(path)
    if log_dir is None:
        log_dir = ARTIFACTS / "sipp" / f"{path.stem}-{local_port}-{time.strftime('%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)

    # -nostdin: no terminal here; -timeout_error: a hang is a failure, not exit 97.
    cmd = ["sipp", "-nostdin", "-m", str(calls), "-i", local_ip, "-p", str(local_port)]
    cmd += ["-s", service, "-sf", str(path)]
    if rate is not None:
        cmd += ["-r", f"{rate:g}"]
    for name, value in (keys or {}).items():
        cmd += ["-key", name, str(value)]
    cmd += ["-timeout", f"{timeout:g}s", "-timeout_error"]
    cmd += ["-trace_msg", "-message_file", str(log_dir / "messages.log")]
    cmd += ["-trace_err", "-error_file", str(log_dir / "errors.log")]
    cmd += ["-trace_logs", "-log_file", str(log_dir / "logs.log")]
    cmd += list(extra)
    if target:
        cmd.append(target)

    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=log_dir,  # sipp drops other trace files into its working directory
    )
    timed_out = False
    try:
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
        except TimeoutError:
            timed_out = True
            proc.kill()
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # cancelled: do not leave sipp running
            proc.kill()
            await proc.wait()
    (log_dir / "stdout.txt").write_bytes(out)
    (log_dir / "stderr.txt").write_bytes(err)
    return SippResult(
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        command=cmd,
        log_dir=log_dir,
        seconds=time.monotonic() - started,
        timed_out=timed_out,
    )


def start_sipp(
    scenario: str | Path, target: str | None, **kwargs: object
) -> asyncio.Task[SippResult]:
    """run_sipp as a background task: for UAS scenarios (the registrar) that must be up
    before the gateway acts, or several UACs at once. Await the task for the result."""
    return asyncio.ensure_future(run_sipp(scenario, target, **kwargs))  # type: ignore[arg-type]
