"""SIP in a cluster: `gateway serve --workers 2` places calls and registers upstream from
whichever worker it likes, and the answers come back to that worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import time

from audio_checks import assert_tone
from conftest import free_port, need_program
from gateway_procs import GatewayProcess, http, send_tone
from peers.baresip import Baresip, read_wav, write_tone_wav
from peers.sipp import run_sipp
from sip_phone import Phone, sdp_offer


def config(sip_port: int, extra: str = "") -> str:
    return f"""
[streams]
declared = ["tone"]
[sip]
port = {sip_port}
{extra}
"""


async def tone_input(gw: GatewayProcess) -> asyncio.Task:
    """An RTP input of stream "tone" on whichever worker takes the POST, fed a 440 Hz tone."""
    port = free_port(socket.SOCK_DGRAM)
    status, body, _ = await http("POST", f"{gw.url}/api/v1/streams/tone/inputs",
                                 {"port": port, "codec": "PCMU"})
    assert status == 201, body
    return asyncio.create_task(send_tone(port, 440))


async def test_two_workers_dial_out_to_baresip_and_either_worker_hangs_up(tmp_path):
    """Each POST lands on a random worker, which dials from its own port; baresip's answers
    and the DELETE (forwarded when it lands on the other worker) reach the call's worker.
    Every other call is by name: baresip registered with one worker, which places it."""
    need_program("baresip")
    sip_port = free_port(socket.SOCK_DGRAM)
    gw = await GatewayProcess.start(tmp_path / "gw",
                                    config(sip_port, 'users = {callee = "s3cret"}'),
                                    "--workers", "2", "--node-name", "box", nodes=2)
    sender = await tone_input(gw)
    low = random.randrange(30000, 39000, 20)
    wav = write_tone_wav(tmp_path / "callee.wav", 1000, 120)
    placed_by, deleted_by = [], []
    try:
        async with Baresip(tmp_path / "callee", rtp_ports=(low, low + 19), audio_source=wav,
                           user="callee", registrar=f"127.0.0.1:{sip_port}",
                           auth_pass="s3cret") as phone:
            await phone.serve(seconds=110)
            await phone.register()
            uris = [f"sip:callee@127.0.0.1:{phone.sip_port}", "callee"]
            forwarded = 0  # calls by name that the POST's worker had another place
            # until both workers placed calls, a DELETE crossed workers and a call by name
            # was forwarded (6 to 20 calls)
            while len(placed_by) < 6 or (len(placed_by) < 20 and not (
                    len(set(placed_by)) == 2 and placed_by != deleted_by and forwarded)):
                dialled = time.monotonic()
                by_name = len(placed_by) % 2
                status, call, node = await http(
                    "POST", f"{gw.url}/api/v1/streams/tone/outputs",
                    {"type": "sip", "uri": uris[by_name]})
                assert status == 201, call
                placed_by.append(call["id"].rpartition(".")[2])
                if placed_by[-1] != node:
                    assert by_name, call  # a call to a URI is placed where it was asked
                    forwarded += 1
                await phone.wait_event("CALL_ESTABLISHED", timeout=5, after=dialled)
                await asyncio.sleep(1.5)
                output = f"{gw.url}/api/v1/streams/tone/outputs/{call['id']}"
                status, info, _ = await http("GET", output)  # from either worker
                assert status == 200 and info["state"] == "active", info
                assert info["packets"] > 40, info
                status, body, node = await http("DELETE", output)
                assert status == 204, body
                deleted_by.append(node)
                closed = await phone.wait_event("CALL_CLOSED", timeout=5, after=dialled)
                assert "peer" in closed.param, closed.param  # the gateway's BYE
                status, info, _ = await http("GET", output)
                assert status == 200 and info["state"] == "ended", info
                await asyncio.sleep(1.0 - (time.monotonic() - dialled) % 1.0)  # new WAV name
        assert set(placed_by) == {"box-w0", "box-w1"}, placed_by
        assert placed_by != deleted_by, "no DELETE crossed to the other worker"
        assert forwarded, "no call by name was placed by the other worker"
        recordings = phone.recorded()
        assert len(recordings) == len(placed_by), recordings
        for path in recordings:
            samples, rate = read_wav(path)
            assert_tone(samples[rate // 4:], 440, rate=rate, min_seconds=1.0)
        _, sip, _ = await http("GET", f"{gw.url}/api/v1/sip")
        assert sip["calls"] == 0, sip
    finally:
        sender.cancel()
        await gw.stop()


def free_port_pair() -> int:
    """A port p with UDP and TCP p and p + 1 free: worker_port_base for two workers."""
    for _ in range(100):
        base = free_port(socket.SOCK_DGRAM)
        try:
            with contextlib.ExitStack() as stack:
                for port in (base, base + 1):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
                        sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


async def test_upstream_registration_runs_once_per_cluster_and_moves_when_its_worker_dies(
        gateway_factory, tmp_path):
    """Two workers with the same [sip] registrations: one REGISTERs (from its own port,
    sip.worker_port_base + index), the other does not; killed, its job moves and the
    binding stays one. Each worker's own port also answers calls."""
    upstream = await gateway_factory(sip={"port": 0, "users": {"gw": "s3cret"}})
    registrar = upstream.gateway.sip.registrar
    seen: list[tuple[str, int]] = []  # (Call-ID, source port) of each REGISTER
    handle = registrar.handle

    def spy(request, source, now, **kwargs):
        seen.append((request.call_id, source[1]))
        return handle(request, source, now, **kwargs)

    registrar.handle = spy
    sip_port, base = free_port(socket.SOCK_DGRAM), free_port_pair()
    gw = await GatewayProcess.start(tmp_path / "gw", config(sip_port, f"""
worker_port_base = {base}
[[sip.registrations]]
registrar = "sip:127.0.0.1:{upstream.gateway.sip.port}"
user = "gw"
password = "s3cret"
expires = 60
"""), "--workers", "2", "--node-name", "box", nodes=2)
    now = upstream.gateway.sip.endpoint.now
    try:
        for _ in range(100):
            if registrar.lookup("gw", now()):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # time for a second worker to register, if it would
        assert len({call_id for call_id, _ in seen}) == 1, seen  # one client in the cluster
        ports = {port for _, port in seen}
        assert len(ports) == 1 and ports <= {base, base + 1}, (seen, base)  # its own port
        [binding] = registrar.lookup("gw", now())
        assert binding.contact.port == sip_port  # calls from upstream: the shared port
        holder = ports.pop() - base

        os.kill(gw.workers()[holder], signal.SIGKILL)
        first = len(seen)
        for _ in range(100):  # the lease lapses (3 s), another worker takes the job
            if len({call_id for call_id, _ in seen[first:]}) == 1:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        assert len({call_id for call_id, _ in seen[first:]}) == 1, seen[first:]
        assert len(registrar.lookup("gw", now())) == 1
        status, sip, _ = await http("GET", f"{gw.url}/api/v1/sip")
        assert status == 200 and len(sip["registrations"]) == 1, sip
        assert sip["registrations"][0]["state"] in ("registered", "elsewhere"), sip
        assert sip["worker_port"] in (base, base + 1), sip

        for port in (base, base + 1):  # a dispatcher may address each worker on its port
            result = await run_sipp("uac_listen.xml", f"127.0.0.1:{port}", service="tone",
                                    keys={"rtp_port": 9, "listen_ms": 200})
            assert result.ok, result.describe()
            [ok] = [m for m in result.responses() if m.status == 200]
            assert f"127.0.0.1:{port}" in (ok.header("Contact") or ""), ok.text
    finally:
        await gw.stop()


async def test_a_node_that_cannot_take_a_call_answers_503_with_retry_after(gateway_factory):
    """What a dispatcher (Kamailio's ds_next_dst) needs to try the next node: full, or
    shutting down while the call was ringing, the answer is 503 with Retry-After."""
    gw = await gateway_factory(sip={"port": 0, "max_calls": 1, "ring_ms": 3000},
                               streams={"declared": ["tone"]})
    port = gw.gateway.sip.port
    first = Phone(port)
    assert (await first.invite("tone")).status == 200
    full = await Phone(port).invite("tone")
    assert full.status == 503 and full.headers.get("Retry-After") == "10", full
    await first.send(first.request("BYE", "tone", in_dialog=True))
    assert (await first.final()).status == 200
    ringing = Phone(port)
    await ringing.send(ringing.request("INVITE", "tone", sdp_offer(ringing.rtp_port)))
    await asyncio.sleep(0.5)  # ringing (ring_ms)
    await gw.gateway.sip.stop()
    stopped = await ringing.final()
    assert stopped.status == 503 and stopped.headers.get("Retry-After"), stopped
    for phone in (first, ringing):  # the gateway's SIP is stopped: nobody to hang up to
        phone.sip.close()
        phone.rtp.close()
