"""Where SIP replies go (RFC 3261 §18.2.2 with RFC 3581 rport), sans-IO.

A phone behind NAT writes its private address in Via. The server notes the address the
request really came from (``received`` and ``rport``) and answers there, so the reply
passes back through the same NAT binding.
"""

from __future__ import annotations

from dataclasses import replace

from .message import Request, Response, bare_host


def stamp_received(request: Request, host: str, port: int) -> None:
    """Add ``received``/``rport`` to the top Via, as the server transport must (§18.2.1)."""
    top = request.top_via
    params = dict(top.params)  # the parsed Via is shared with the request: change a copy
    if "rport" in params:
        params["rport"] = str(port)
        params["received"] = host
    elif bare_host(top.host) != host or "received" in params:
        params["received"] = host  # ours, never one the client wrote itself
    else:
        return
    top = replace(top, params=params)
    request.headers.replace_first("Via", str(top), parsed=[top, *request.vias[1:]])


def reply_address(response: Response) -> tuple[str, int]:
    """(host, port) a response over UDP is sent to, from its top Via."""
    via = response.top_via
    host = via.params.get("received") or bare_host(via.host)
    rport = via.params.get("rport")
    if rport and rport.isascii() and rport.isdigit() and 0 < int(rport) < 65536:
        return host, int(rport)
    return host, via.port or 5060
