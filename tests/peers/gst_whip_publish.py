"""A WHIP publisher that is not aiortc: GStreamer's webrtcbin, driven from PyGObject.

    /usr/bin/python3 gst_whip_publish.py WHIP_URL FREQ SECONDS

Runs with Debian's python3-gi (not the project's venv). Publishes a sine tone as Opus,
non-trickle: waits for ICE gathering, POSTs the offer, applies the answer, plays for
SECONDS once connected, then DELETEs the session. ICE is pinned to 127.0.0.1.
Exit 0 on success; otherwise 1 with the reason on stderr.
"""

import os
import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

PIPELINE = (
    "audiotestsrc is-live=true wave=sine freq={freq} volume=0.3 ! audioconvert ! "
    "audioresample ! audio/x-raw,rate=48000,channels=1 ! opusenc ! rtpopuspay pt=111 ! "
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! "
    "webrtcbin name=webrtc bundle-policy=max-bundle"
)
CONNECT_TIMEOUT_S = 10
PCState = GstWebRTC.WebRTCPeerConnectionState


def run(url: str, freq: float, seconds: float) -> str | None:
    """Publish; the reason it failed, or None."""
    Gst.init(None)
    pipe = Gst.parse_launch(PIPELINE.format(freq=freq))
    webrtc = pipe.get_by_name("webrtc")
    loop = GLib.MainLoop()
    state = {"location": None, "error": None, "posted": False, "played": False}

    def stop(error: str | None = None) -> bool:
        if error and not state["error"]:
            state["error"] = error
        loop.quit()
        return False

    # libnice would gather on every interface; pin it to loopback. webrtcbin's ICE
    # object loses its only reference if this Python wrapper is dropped (the address is
    # then lost too), so the wrapper is kept to the end and the process leaves with
    # os._exit (see main), before interpreter teardown can touch it again.
    ice_agent = webrtc.get_property("ice-agent")
    ice_agent.emit("add-local-ip-address", "127.0.0.1")
    state["ice_agent"] = ice_agent

    # A WHIP publisher only sends (webrtcbin's transceiver defaults to sendrecv).
    transceiver = webrtc.emit("get-transceiver", 0)
    transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)

    def on_remote_set(promise, _data=None) -> None:
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            GLib.idle_add(stop, f"answer rejected by webrtcbin: {reply.get_value('error')}")

    def post_offer() -> bool:
        offer = webrtc.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(
            url, data=offer.encode(), method="POST", headers={"Content-Type": "application/sdp"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer_text = resp.read().decode()
                location = resp.headers["Location"]
                status = resp.status
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            return stop(f"WHIP POST {url}: HTTP {exc.code}: {body}")
        except OSError as exc:
            return stop(f"WHIP POST {url} failed: {exc}")
        if status != 201 or not location:
            return stop(f"WHIP POST {url}: expected 201 with Location, got {status}")
        state["location"] = urllib.request.urljoin(url, location)
        result, sdp = GstSdp.SDPMessage.new_from_text(answer_text)
        if result != GstSdp.SDPResult.OK:
            return stop(f"unparsable SDP answer: {answer_text[:300]!r}")
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        webrtc.emit(
            "set-remote-description", answer, Gst.Promise.new_with_change_func(on_remote_set)
        )
        return False

    def on_gathering(element, _pspec) -> None:
        complete = GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if element.get_property("ice-gathering-state") == complete and not state["posted"]:
            state["posted"] = True
            GLib.idle_add(post_offer)

    def play() -> bool:
        GLib.timeout_add(int(seconds * 1000), stop)
        return False

    def on_connection(element, _pspec) -> None:
        pc_state = element.get_property("connection-state")
        if pc_state == PCState.CONNECTED and not state["played"]:
            state["played"] = True
            GLib.idle_add(play)
        elif pc_state == PCState.FAILED:
            GLib.idle_add(stop, "peer connection failed (ICE or DTLS)")

    def not_connected() -> bool:
        if not state["played"]:
            pc_state = webrtc.get_property("connection-state").value_nick
            stop(f"not connected after {CONNECT_TIMEOUT_S} s (state {pc_state})")
        return False

    def on_offer(promise, _data=None) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            GLib.idle_add(stop, f"create-offer failed: {reply}")
            return
        webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation_needed(element) -> None:
        element.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer))

    def on_message(_bus, message) -> None:
        if message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            stop(f"pipeline error: {err.message} ({debug})")

    webrtc.connect("on-negotiation-needed", on_negotiation_needed)
    webrtc.connect("notify::ice-gathering-state", on_gathering)
    webrtc.connect("notify::connection-state", on_connection)
    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        return "pipeline would not start"
    GLib.timeout_add(CONNECT_TIMEOUT_S * 1000, not_connected)
    loop.run()

    if state["location"]:
        try:
            urllib.request.urlopen(
                urllib.request.Request(state["location"], method="DELETE"), timeout=10
            )
        except OSError as exc:
            stop(f"DELETE {state['location']} failed: {exc}")
    pipe.set_state(Gst.State.NULL)
    return state["error"]


def main() -> None:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        os._exit(2)
    error = run(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
    if error:
        print(f"gst_whip_publish: {error}", file=sys.stderr)
    else:
        print("gst_whip_publish: published", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if error else 0)


if __name__ == "__main__":
    main()
