"""Kamailio as a SIP load balancer in front of several gateway nodes (dispatcher module).

    async with Kamailio(tmp_path / "kamailio", [f"sip:127.0.0.1:{p}" for p in ports]) as k:
        await run_sipp("uac_listen.xml", f"127.0.0.1:{k.port}", ...)

New calls go round-robin over the destinations (``ds_select_dst``); a destination that
answers ``503`` or nothing within ``fr_timer_ms`` is skipped for the next one
(``ds_next_dst`` in a failure route); Kamailio record-routes, so ACK and BYE pass through it
(``loose_route``). Kamailio only relays signalling: RTP flows between the gateway and the
phone. Its log (``-E``, every routing decision via ``xlog``) is in ``log``.
Verified with Kamailio 5.6.3 (Debian 12 package ``kamailio``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from conftest import free_port

#: Debian's module directory (under the architecture's triplet).
MODULES = next((str(p) + "/" for p in sorted(Path("/usr/lib").glob("*/kamailio/modules"))),
               "/usr/lib/x86_64-linux-gnu/kamailio/modules/")

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
log_prefix="{{$mt $ci}} "
children=2
listen=udp:127.0.0.1:{port}
auto_aliases=no
mpath="{modules}"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "dispatcher.so"

modparam("rr", "enable_full_lr", 1)
modparam("tm", "fr_timer", {fr_timer_ms})
modparam("tm", "fr_inv_timer", 10000)
modparam("dispatcher", "list_file", "{list_file}")
modparam("dispatcher", "flags", 2)  # keep the other destinations for ds_next_dst
modparam("dispatcher", "xavp_dst", "_dsdst_")
modparam("dispatcher", "xavp_ctx", "_dsctx_")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not Here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    remove_hf("Route");
    if (is_method("INVITE")) {{
        record_route();
    }}
    if (!ds_select_dst("1", "4")) {{
        sl_send_reply("503", "No Gateway");
        exit;
    }}
    xlog("L_INFO", "dispatch $rm to $du\\n");
    t_on_failure("NEXT_NODE");
    t_relay();
    exit;
}}

failure_route[NEXT_NODE] {{
    if (t_is_canceled()) {{
        exit;
    }}
    if (t_check_status("503") || (t_branch_timeout() && !t_branch_replied())) {{
        xlog("L_INFO", "no answer or 503 from $du\\n");
        if (ds_next_dst()) {{
            xlog("L_INFO", "failover to $du\\n");
            t_on_failure("NEXT_NODE");
            t_relay();
            exit;
        }}
    }}
}}
"""


class Kamailio:
    def __init__(self, workdir: str | Path, destinations: Sequence[str],
                 fr_timer_ms: int = 1000) -> None:
        self.dir = Path(workdir)
        self.destinations = list(destinations)
        self.fr_timer_ms = fr_timer_ms
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = self.dir / "kamailio.log"

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        list_file = self.dir / "dispatcher.list"
        list_file.write_text("".join(f"1 {d}\n" for d in self.destinations))
        cfg = self.dir / "kamailio.cfg"
        cfg.write_text(CONFIG.format(port=self.port, modules=MODULES, list_file=list_file,
                                     fr_timer_ms=self.fr_timer_ms))
        return cfg

    async def start(self, timeout: float = 10.0) -> None:
        cfg = self.write_config()
        with open(self.log_path, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "kamailio", "-f", str(cfg), "-DD", "-E", "-m", "32", "-M", "4",
                "-Y", str(self.dir), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not await self._answers():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"kamailio did not come up:\n{self.log}")

    async def _answers(self) -> bool:
        """An OPTIONS with Max-Forwards 0 gets Kamailio's own 483: it is routing."""
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            port = sock.getsockname()[1]
            probe = (f"OPTIONS sip:ping@127.0.0.1:{self.port} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
                     f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:ping@127.0.0.1>\r\n"
                     f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 1 OPTIONS\r\n"
                     f"Max-Forwards: 0\r\nContent-Length: 0\r\n\r\n").encode()
            await loop.sock_sendto(sock, probe, ("127.0.0.1", self.port))
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.2)
            except (TimeoutError, OSError):
                return False
            return data.startswith(b"SIP/2.0 483")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its children too
                await self.proc.wait()

    async def __aenter__(self) -> Kamailio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
