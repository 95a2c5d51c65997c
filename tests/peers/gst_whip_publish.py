"""A WHIP publisher that is not aiortc: GStreamer's webrtcbin, driven from PyGObject.

    /usr/bin/python3 gst_whip_publish.py WHIP_URL FREQ SECONDS

Runs with Debian's python3-gi (not the project's venv). Publishes a sine tone as Opus,
non-trickle: waits for ICE gathering, POSTs the offer, applies the answer, plays for
SECONDS, then DELETEs the session. ICE is pinned to 127.0.0.1. Exit 0 on success.
"""

import sys
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


def fail(message: str) -> None:
    print(f"gst_whip_publish: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    url, freq, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    Gst.init(None)
    pipe = Gst.parse_launch(PIPELINE.format(freq=freq))
    webrtc = pipe.get_by_name("webrtc")
    loop = GLib.MainLoop()
    state = {"location": None, "agent": None, "error": None}

    ice_agent = webrtc.get_property("ice-agent")
    ice_agent.emit("add-local-ip-address", "127.0.0.1")
    state["agent"] = ice_agent  # keep a Python reference or the address is lost

    def post_offer() -> bool:
        offer = webrtc.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(
            url, data=offer.encode(), method="POST", headers={"Content-Type": "application/sdp"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer_text = resp.read().decode()
                location = resp.headers["Location"]
        except Exception as exc:  # noqa: BLE001 - report whatever the POST did
            state["error"] = f"WHIP POST failed: {exc}"
            loop.quit()
            return False
        state["location"] = urllib.request.urljoin(url, location)
        _, sdp = GstSdp.SDPMessage.new_from_text(answer_text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        GLib.timeout_add(int(seconds * 1000), loop.quit)
        return False

    complete = GstWebRTC.WebRTCICEGatheringState.COMPLETE

    def on_gathering(element, _pspec) -> None:
        if element.get_property("ice-gathering-state") == complete:
            GLib.idle_add(post_offer)

    def on_offer(promise, _data=None) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation_needed(element) -> None:
        element.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))

    def on_message(_bus, message) -> None:
        if message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            state["error"] = f"pipeline error: {err.message} ({debug})"
            loop.quit()

    webrtc.connect("on-negotiation-needed", on_negotiation_needed)
    webrtc.connect("notify::ice-gathering-state", on_gathering)
    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    pipe.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int((seconds + 15) * 1000), loop.quit)  # never hang
    loop.run()
    connection = webrtc.get_property("connection-state")
    if state["location"]:
        try:
            urllib.request.urlopen(urllib.request.Request(state["location"], method="DELETE"))
        except Exception as exc:  # noqa: BLE001
            print(f"gst_whip_publish: DELETE failed: {exc}", file=sys.stderr)
    pipe.set_state(Gst.State.NULL)
    if state["error"]:
        fail(state["error"])
    if connection != GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
        fail(f"peer connection ended in state {connection.value_nick}")
    print("gst_whip_publish: published", flush=True)


if __name__ == "__main__":
    main()
