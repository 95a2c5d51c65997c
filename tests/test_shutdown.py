"""SIGTERM with a SIP call, a WebRTC session and a recording live: the phone gets BYE,
the recording is finalized and valid, and the process exits 0 within the limit."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import soundfile
from conftest import free_port
from sip_phone import Phone
from test_recording_crash import start_gateway

from gateway.webrtc.client import Publisher, ToneTrack


async def test_sigterm_hangs_up_finalizes_and_exits_0(tmp_path):
    port, sip_port = free_port(), free_port(socket.SOCK_DGRAM)
    recordings = tmp_path / "rec"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[http]\nport = {port}\nshutdown_timeout_s = 5.0\n'
        f'[sip]\nport = {sip_port}\n[webrtc]\nhost_addresses = ["127.0.0.1"]\n'
        f'[recording]\ndirectory = "{recordings}"\nauto = ["live"]\n'
    )
    url = f"http://127.0.0.1:{port}"
    proc = await start_gateway(config, port)
    pub = Publisher(url, "live", ToneTrack(440))
    phone = Phone(sip_port)
    try:
        await pub.negotiate()
        await pub.connected()
        assert (await phone.invite("live")).status == 200
        await asyncio.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        bye = await phone.expect("BYE", timeout=5.0)
        await phone.answer(bye, 200)
        code = await asyncio.wait_for(proc.wait(), 8.0)
        took = time.monotonic() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
        await pub.pc.close()
        await phone.close()
    assert code == 0
    assert took < 5.0 + 1.0, f"exit took {took:.1f} s"
    assert not list(recordings.rglob("*.part"))
    [wav] = list(recordings.rglob("*.wav"))
    data, rate = soundfile.read(wav, dtype="int16")
    assert len(data) / rate >= 1.5
