"""Random ids for sessions, calls, outputs and recordings.

Hex, not ``token_urlsafe``: an id that starts with ``-`` is read as an option by
command-line tools (``gateway outputs sdp s -Xy...``), and hex ids are safe in URLs,
file names and SIP headers alike.
"""

from __future__ import annotations

import secrets


def new_id(nbytes: int = 8) -> str:
    """A random id of ``2 * nbytes`` lowercase hex digits."""
    return secrets.token_hex(nbytes)
