"""A stream's outputs: every egress that hears it, in one registry, with its counters.

WebRTC listeners, RTP outputs, SIP calls and recordings register on their stream when
they start and unregister when they end. Unregistering adds the output's final counts to
the registry's totals for its kind, so the totals read at any moment (ended outputs plus
live ones) never go down, and nothing has to watch outputs come and go.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Protocol

from .counters import OutputCounters


class Output(Protocol):
    """An egress of one stream (``stream``), listed, counted and stopped through it."""

    id: str
    kind: str  # "webrtc", "rtp", "sip", "recording"

    def info(self) -> dict[str, Any]: ...

    def counters(self) -> OutputCounters:
        """What it sent on this stream so far."""

    async def close(self, reason: str = "") -> None: ...


class OutputRegistry:
    """The live outputs of one stream, by id, and the totals of those that ended."""

    def __init__(self) -> None:
        self._live: dict[str, Output] = {}
        self._ended: dict[str, OutputCounters] = {}

    def add(self, output: Output) -> None:
        self._live[output.id] = output
        self._ended.setdefault(output.kind, OutputCounters())  # its series exist from now

    def remove(self, output: Output) -> None:
        """Unregister (again: nothing); its counts so far move to the ended totals."""
        if self._live.get(output.id) is output:
            del self._live[output.id]
            self._ended[output.kind].add(output.counters())

    def get(self, output_id: str) -> Output | None:
        return self._live.get(output_id)

    def __iter__(self) -> Iterator[Output]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    def count_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for output in self._live.values():
            counts[output.kind] = counts.get(output.kind, 0) + 1
        return counts

    def totals(self) -> dict[str, OutputCounters]:
        """Per kind, what every output the stream ever had sent (for metrics)."""
        totals = {kind: replace(ended) for kind, ended in self._ended.items()}
        for output in list(self._live.values()):
            totals[output.kind].add(output.counters())
        return totals
