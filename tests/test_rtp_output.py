"""Plain RTP out to real monitoring tools: ffmpeg, tshark, a multicast socket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct
import sys
import wave

import aiohttp
import numpy as np
import pytest
from audio_checks import assert_tone
from conftest import free_port, need_program
from stepping import RtpSink, send_tone

from gateway.codecs.g711 import ulaw_decode
from gateway.webrtc.client import Publisher, ToneTrack


async def api(gw, method: str, path: str, body=None):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gw.url + path, json=body) as r:
            ctype = r.content_type
            data = await r.json() if "json" in ctype else await r.text()
            return r.status, data


async def add_output(gw, stream: str, **body) -> dict:
    path = f"/api/v1/streams/{stream}/outputs"
    status, data = await api(gw, "POST", path, {"type": "rtp", **body})
    assert status == 201, data
    return data


def read_wav(path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return data.reshape(-1, w.getnchannels())[:, 0], w.getframerate()


async def publish_tone(gw, stream: str, freq: float) -> Publisher:
    pub = Publisher(gw.url, stream, ToneTrack(freq))
    await pub.negotiate()
    await pub.connected()
    return pub


async def ffmpeg_records(sdp_file, wav, seconds: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file,udp,rtp",
        "-i",
        str(sdp_file),
        "-t",
        str(seconds),
        "-y",
        str(wav),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def output_sdp_file(gw, tmp_path, out: dict, port: int, codec: str):
    status, sdp = await api(gw, "GET", f"/api/v1/streams/tone/outputs/{out['id']}/sdp")
    assert status == 200 and f"m=audio {port} RTP/AVP" in sdp
    sdp_file = tmp_path / f"{codec}.sdp"
    sdp_file.write_text(sdp)
    return sdp_file


async def udp_port_bound(port: int, timeout: float = 10.0) -> None:
    """Wait until some process listens on UDP ``port`` (read from /proc: no probe bind
    that could steal the port from it)."""
    suffix = f":{port:04X}"
    async with asyncio.timeout(timeout):
        while True:
            for table in ("/proc/net/udp", "/proc/net/udp6"):
                with open(table) as f:
                    if any(line.split()[1].endswith(suffix) for line in list(f)[1:]):
                        return
            await asyncio.sleep(0.02)


async def test_ffmpeg_records_an_rtp_output_from_its_sdp_in_real_time(gateway, tmp_path):
    need_program("ffmpeg")
    pub = await publish_tone(gateway, "tone", 440)
    port = free_port(socket.SOCK_DGRAM)
    out = await add_output(gateway, "tone", host="127.0.0.1", port=port, codec="opus")
    sdp_file = await output_sdp_file(gateway, tmp_path, out, port, "opus")
    wav = tmp_path / "opus.wav"
    proc = await ffmpeg_records(sdp_file, wav, 4)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    samples, rate = read_wav(wav)
    assert_tone(samples[rate // 2 :], 440, rate=rate)
    status, _ = await api(gateway, "DELETE", f"/api/v1/streams/tone/outputs/{out['id']}")
    assert status == 204
    await pub.delete()


@pytest.mark.parametrize("codec", ["PCMU", "G722", "opus"])
async def test_ffmpeg_records_an_rtp_output_from_its_sdp(stepped_gateway, tmp_path, codec):
    """The same on a stepped clock: ffmpeg gets 6 s of packets as fast as they are made."""
    need_program("ffmpeg")
    gw = stepped_gateway
    send_tone(gw, "tone", 440)
    port = free_port(socket.SOCK_DGRAM)
    out = await add_output(gw, "tone", host="127.0.0.1", port=port, codec=codec)
    sdp_file = await output_sdp_file(gw, tmp_path, out, port, codec)
    wav = tmp_path / f"{codec}.wav"
    proc = await ffmpeg_records(sdp_file, wav, 4)
    await udp_port_bound(port)
    await gw.step(300)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    samples, rate = read_wav(wav)
    assert len(samples) == 4 * rate
    assert_tone(samples[rate // 2 :], 440, rate=rate)
    status, _ = await api(gw, "DELETE", f"/api/v1/streams/tone/outputs/{out['id']}")
    assert status == 204


TSHARK_PACKETS = 250


async def test_tshark_sees_a_clean_pcmu_stream(gateway, tmp_path):
    """Real-time pacing as a monitoring tool sees it: 5 s of packets, no loss, no jitter."""
    need_program("tshark")
    pub = await publish_tone(gateway, "clean", 440)
    port = free_port(socket.SOCK_DGRAM)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))  # a receiver, so no ICMP port-unreachable noise
    sink.setblocking(False)
    cap = await asyncio.create_subprocess_exec(
        "tshark",
        "-i",
        "lo",
        "-f",
        f"udp and host 127.0.0.1 and dst port {port}",
        "-c",
        str(TSHARK_PACKETS),  # 5 s of 20 ms packets, then it prints its statistics
        "-a",
        "duration:30",
        "-q",
        "-d",
        f"udp.port=={port},rtp",
        "-z",
        "rtp,streams",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(10):  # until the capture has started
        while b"Capturing on" not in await cap.stderr.readline():
            pass
    out = await add_output(gateway, "clean", host="127.0.0.1", port=port, codec="PCMU")
    stdout, stderr = await asyncio.wait_for(cap.communicate(), 30)
    text = stdout.decode()
    (tmp_path / "tshark.txt").write_text(text)
    row = next(
        (line for line in text.splitlines() if f" {port} " in f" {line} " and "0x" in line), None
    )
    assert row is not None, text + stderr.decode()
    # tshark 3.6+/4.x: start, end, src, port, dst, port, SSRC, payload, packets, lost (pct),
    # min/mean/max delta, min/mean/max jitter (ms), then "X" if it saw a problem
    match = re.search(
        r"0x[0-9A-Fa-f]+\s+\S+\s+(\d+)\s+(-?\d+)\s+\((-?[\d.]+)%\)((?:\s+[\d.]+){6})(.*)$", row
    )
    assert match, row
    packets, lost = int(match.group(1)), int(match.group(2))
    max_delta, max_jitter = (float(x) for x in match.group(4).split()[2::3])
    assert packets == TSHARK_PACKETS, row
    assert lost == 0, row
    assert max_jitter < 5.0, row
    assert "X" not in match.group(5), f"tshark flags a problem: {row}"
    assert "Wrong sequence" not in text and "Incorrect timestamp" not in text, text
    sink.close()
    await api(gateway, "DELETE", f"/api/v1/streams/clean/outputs/{out['id']}")
    await pub.delete()


async def test_multicast_output_reaches_a_group_member(stepped_gateway):
    group, port = "239.255.42.42", free_port(socket.SOCK_DGRAM)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rx.bind((group, port))
    membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
    try:
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as exc:
        pytest.fail(f"cannot join {group} on loopback: {exc}")
    sink = RtpSink(rx)
    gw = stepped_gateway
    gw.gateway.rtp_outputs.sockets.multicast_interface = "127.0.0.1"
    send_tone(gw, "mc", 440)
    out = await add_output(gw, "mc", host=group, port=port, codec="PCMU", ttl=1)
    assert out["multicast"] is True
    await gw.step(150)
    packets = await sink.wait_for(150)
    sink.close()
    assert len(packets) == 150, f"{len(packets)} multicast packets for 150 frames"
    pcm = ulaw_decode(b"".join(p[12:] for p in packets))
    assert_tone(pcm, 440, rate=8000, min_seconds=3.0)
    await api(gw, "DELETE", f"/api/v1/streams/mc/outputs/{out['id']}")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "rtp", "host": "127.0.0.1", "port": 5004, "codec": "GSM"}, "codec"),
        ({"type": "rtp", "host": "no such host.invalid", "port": 5004}, "host"),
        ({"type": "rtp", "host": "127.0.0.1", "port": 0}, "port"),
        ({"type": "rtp", "host": "127.0.0.1", "port": "5004"}, "port"),
        ({"type": "rtp", "host": "127.0.0.1", "port": 5004, "codec": "opus", "ptime": 30}, "ptime"),
        ({"type": "rtp", "host": "127.0.0.1", "port": 5004, "colour": "red"}, "colour"),
        ({"type": "fax", "host": "127.0.0.1", "port": 5004}, "type"),
        ({"host": "127.0.0.1", "port": 5004}, "type"),
    ],
)
async def test_bad_output_requests_name_the_field(gateway, body, field):
    status, data = await api(gateway, "POST", "/api/v1/streams/x/outputs", body)
    assert status == 400, data
    assert data["errors"][0]["field"] == field, data


async def test_a_bad_request_names_every_bad_field_and_creates_nothing(gateway):
    body = {"type": "rtp", "host": "127.0.0.1", "port": "5004", "ttl": 0, "bitrate": 5999,
            "colour": "red"}
    status, data = await api(gateway, "POST", "/api/v1/streams/x/outputs", body)
    assert status == 400, data
    assert {(e["field"], e["message"]) for e in data["errors"]} == {
        ("port", "must be an integer"), ("ttl", "must be 1-255"),
        ("bitrate", "must be 6000-510000"), ("colour", "unknown field")}
    assert all(e["message"] in data["detail"] for e in data["errors"])
    assert not gateway.gateway.rtp_outputs.outputs and "x" not in gateway.gateway.registry.streams


async def test_unreachable_destination_is_counted_not_fatal(stepped_gateway):
    gateway = stepped_gateway
    send_tone(gateway, "unreach", 440)
    # the kernel refuses broadcast without SO_BROADCAST: a send error that never leaves the host
    bad = await add_output(gateway, "unreach", host="255.255.255.255", port=5004, codec="PCMU")
    nobody = free_port(socket.SOCK_DGRAM)
    closed = await add_output(gateway, "unreach", host="127.0.0.1", port=nobody)
    sink = RtpSink()
    good = await add_output(gateway, "unreach", host="127.0.0.1", port=sink.port, codec="PCMU")
    await gateway.step(75)
    _, bad_info = await api(gateway, "GET", f"/api/v1/streams/unreach/outputs/{bad['id']}")
    _, good_info = await api(gateway, "GET", f"/api/v1/streams/unreach/outputs/{good['id']}")
    assert bad_info["errors"] >= 75 and bad_info["packets"] == 0  # RTP, and RTCP reports
    assert good_info["packets"] == 75 == len(sink.drain()) and good_info["errors"] == 0
    _, closed_info = await api(gateway, "GET", f"/api/v1/streams/unreach/outputs/{closed['id']}")
    assert closed_info["packets"] == 75  # nobody listening: ICMP is not our problem
    sink.close()


async def test_an_output_whose_packets_cannot_be_built_costs_the_others_nothing(
        stepped_gateway, caplog):
    gateway = stepped_gateway
    send_tone(gateway, "poison", 440)
    sinks = first, _, last = RtpSink(), RtpSink(), RtpSink()
    outs = [await add_output(gateway, "poison", host="127.0.0.1", port=sink.port,
                             codec="PCMU") for sink in sinks]
    # a header that cannot be packed (how a payload type of 999 from an SDP once failed)
    gateway.gateway.rtp_outputs.outputs[outs[1]["id"]].payload_type = 999
    await gateway.step(60)
    assert len(first.drain()) == 60 == len(last.drain())
    _, broken = await api(gateway, "GET", f"/api/v1/streams/poison/outputs/{outs[1]['id']}")
    assert broken["packets"] == 0 and broken["errors"] >= 60
    errors = [r for r in caplog.records if "cannot build its packet" in r.getMessage()]
    assert len(errors) == 1, errors  # logged once, counted every time
    for sink in sinks:
        sink.close()


async def test_outputs_share_encoders_by_codec_and_ptime(gateway):
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(4)]
    a = await add_output(gateway, "share", host="127.0.0.1", port=ports[0], codec="PCMU")
    b = await add_output(gateway, "share", host="127.0.0.1", port=ports[1], codec="PCMU")
    c = await add_output(gateway, "share", host="127.0.0.1", port=ports[2], codec="PCMU", ptime=40)
    d = await add_output(gateway, "share", host="127.0.0.1", port=ports[3], codec="PCMA")
    stream = gateway.gateway.registry.get("share")
    assert len(stream.egress) == 3
    _, listing = await api(gateway, "GET", "/api/v1/streams/share/outputs")
    shared = {o["id"]: o["encoder_shared_with"] for o in listing["outputs"]}
    assert shared == {a["id"]: 1, b["id"]: 1, c["id"]: 0, d["id"]: 0}
    for out in (a, b, c, d):
        await api(gateway, "DELETE", f"/api/v1/streams/share/outputs/{out['id']}")
    assert stream.egress == {}


async def test_outputs_and_inputs_declared_in_config_start_with_the_gateway(gateway_factory):
    """As docs/rtp.md writes them: an output entry needs no "type"."""
    in_port, out_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", out_port))
    rx.setblocking(False)
    gw = await gateway_factory(
        rtp={
            "inputs": [{"stream": "cfg", "port": in_port, "codec": "PCMU"}],
            "outputs": [
                {
                    "stream": "cfg",
                    "host": "127.0.0.1",
                    "port": out_port,
                    "codec": "PCMA",
                    "ptime": 40,
                }
            ],
        }
    )
    _, outputs = await api(gw, "GET", "/api/v1/streams/cfg/outputs")
    _, inputs = await api(gw, "GET", "/api/v1/streams/cfg/inputs")
    assert [o["port"] for o in outputs["outputs"]] == [out_port]
    assert [i["port"] for i in inputs["inputs"]] == [in_port]
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(rx, 2048), 2)
    assert data[1] & 0x7F == 8 and len(data) == 12 + 320  # PCMA, 40 ms
    rx.close()


async def test_bad_config_entry_stops_startup_naming_it(gateway_factory):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"rtp\.outputs\[0\]\.codec"):
        await gateway_factory(
            rtp={
                "outputs": [
                    {"type": "rtp", "stream": "x", "host": "127.0.0.1", "port": 9, "codec": "GSM"}
                ]
            }
        )


async def test_cli_adds_lists_and_removes_outputs(gateway):
    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "GATEWAY_URL": gateway.url},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode()

    port = free_port(socket.SOCK_DGRAM)
    code, out = await cli(
        "outputs", "add", "cli", "--host", "127.0.0.1", "--port", str(port), "--codec", "G722"
    )
    assert code == 0, out
    output_id = json.loads(out)["id"]
    code, out = await cli("streams")
    assert code == 0 and "cli" in out
    code, out = await cli("outputs", "sdp", "cli", output_id)
    assert code == 0 and "a=rtpmap:9 G722/8000" in out
    code, out = await cli(
        "outputs", "add", "cli", "--host", "127.0.0.1", "--port", "9", "--codec", "GSM"
    )
    assert code == 1 and "unknown codec" in out
    code, out = await cli("outputs", "rm", "cli", output_id)
    assert code == 0
    code, out = await cli("outputs", "ls", "cli")
    assert code == 0 and '"outputs": []' in out
    # --url after the action, and a name the API refuses: its 404, not a traceback
    code, out = await cli("outputs", "ls", "bad name/..", "--url", gateway.url)
    assert code == 1 and out.startswith("error: 404 no stream named 'bad name/..'"), out
    code, out = await cli("outputs", "add", "cli", "--host", "127.0.0.1", "--port", str(port),
                          "--codec", "opus", "--bitrate", "24000")
    assert code == 0 and json.loads(out)["codec"] == "opus", out


async def test_ipv6_output(gateway):
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        rx.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    rx.setblocking(False)
    out = await add_output(
        gateway, "v6", host="::1", port=rx.getsockname()[1], codec="L16", rate=16000
    )
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(rx, 2048), 2)
    assert data[0] == 0x80 and len(data) == 12 + 640  # L16/16 kHz, 20 ms, big-endian
    _, sdp = await api(gateway, "GET", f"/api/v1/streams/v6/outputs/{out['id']}/sdp")
    assert "c=IN IP6 ::1" in sdp and "L16/16000" in sdp
    rx.close()


async def test_sender_reports_and_bye_reach_the_rtcp_port(gateway):
    from gateway.rtp.rtcp import Bye, SenderReport, parse_compound

    rtp_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):  # an even/odd pair of free ports
        port = free_port(socket.SOCK_DGRAM)
        try:
            rtp_rx.bind(("127.0.0.1", port))
            rtcp_rx.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            rtp_rx.close()
            rtp_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_rx.setblocking(False)
    out = await add_output(gateway, "sr", host="127.0.0.1", port=port, codec="PCMU")
    loop = asyncio.get_running_loop()
    report = parse_compound(await asyncio.wait_for(loop.sock_recv(rtcp_rx, 2048), 2))
    assert isinstance(report[0], SenderReport) and report[0].ssrc == out["ssrc"]
    await api(gateway, "DELETE", f"/api/v1/streams/sr/outputs/{out['id']}")
    bye = parse_compound(await asyncio.wait_for(loop.sock_recv(rtcp_rx, 2048), 2))
    assert any(isinstance(p, Bye) and out["ssrc"] in p.sources for p in bye)
    rtp_rx.close()
    rtcp_rx.close()
