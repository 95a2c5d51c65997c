"""Silence alarm: a two-state machine over per-frame RMS levels, counted in frames.

Counting frames, not seconds, makes the edges exact: with ``after_s=5.0`` the alarm is
raised on the 250th consecutive frame below the threshold (the frame that completes 5 s),
and with ``clear_after_s=0`` it clears on the first frame at or above it. A positive
``clear_after_s`` needs that much continuous signal before clearing (a single click does
not end a silence). Time is the frame index: frames a lagging reader skipped still count.
"""

from __future__ import annotations

from typing import Any

from gateway.core.audio import FRAME_SECONDS


class SilenceAlarm:
    """Raise after ``after_s`` below ``threshold_dbfs``; clear after ``clear_after_s`` above."""

    __slots__ = (
        "threshold_dbfs",
        "frame_s",
        "_after",
        "_clear_after",
        "raised",
        "silent",
        "_quiet_since",
        "_loud_since",
    )

    def __init__(
        self,
        threshold_dbfs: float = -60.0,
        after_s: float = 5.0,
        clear_after_s: float = 0.0,
        frame_s: float = FRAME_SECONDS,
    ) -> None:
        if after_s <= 0 or clear_after_s < 0:
            raise ValueError("after_s must be > 0 and clear_after_s >= 0")
        self.threshold_dbfs = threshold_dbfs
        self.frame_s = frame_s
        self._after = max(1, round(after_s / frame_s))  # frames below, inclusive
        self._clear_after = max(1, round(clear_after_s / frame_s))  # frames above, inclusive
        #: The alarm is up.
        self.raised = False
        #: The last frame was below the threshold.
        self.silent = False
        self._quiet_since: int | None = None  # first frame of the current quiet run
        self._loud_since: int | None = None  # first frame of the current loud run

    def update(self, index: int, rms_dbfs: float) -> dict[str, Any] | None:
        """Feed frame ``index``'s level; return a ``silence`` event when the state changes."""
        self.silent = rms_dbfs < self.threshold_dbfs
        if self.silent:
            self._loud_since = None
            if self._quiet_since is None:
                self._quiet_since = index
            if not self.raised and index - self._quiet_since + 1 >= self._after:
                self.raised = True
                return self._event("raised", index)
        else:
            self._quiet_since = None
            if self._loud_since is None:
                self._loud_since = index
            if self.raised and index - self._loud_since + 1 >= self._clear_after:
                self.raised = False
                return self._event("cleared", index)
        return None

    def due(self, index: int, level_dbfs: float) -> int | None:
        """The frame at which the alarm will be raised if every frame after ``index`` is
        at ``level_dbfs`` (an idle stream's silence); None if it will not be."""
        if self.raised or level_dbfs >= self.threshold_dbfs:
            return None
        start = self._quiet_since if self.silent and self._quiet_since is not None \
            else index + 1
        return max(start + self._after - 1, index + 1)

    def update_run(self, first: int, last: int, rms_dbfs: float) -> dict[str, Any] | None:
        """Frames ``first``..``last`` all at ``rms_dbfs`` at once (an idle stream's
        silence): the state and the event, at its exact frame, of that many ``update``s."""
        if last < first:
            return None
        event = self.update(first, rms_dbfs)
        if event is not None or last == first:  # one level: one change in a run at most
            return event
        if self.silent:
            assert self._quiet_since is not None
            due = self._quiet_since + self._after - 1
            if not self.raised and due <= last:
                self.raised = True
                return self._event("raised", due)
        else:
            assert self._loud_since is not None
            due = self._loud_since + self._clear_after - 1
            if self.raised and due <= last:
                self.raised = False
                return self._event("cleared", due)
        return None

    def _event(self, state: str, index: int) -> dict[str, Any]:
        return {
            "type": "silence",
            "state": state,
            "frame": index,
            "at_s": round(index * self.frame_s, 6),
        }
