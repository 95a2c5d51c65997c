"""Cancelling a task that its owner holds, without leaving a reference cycle.

A cancelled task keeps its CancelledError (``result()`` raises it), the error's traceback
keeps the task's frames, and their ``self`` is the owner: an owner that still holds the
task closes a cycle only the garbage collector frees. A SIP call left ~40 objects so (its
shared encoder's and RTP fan-out's tasks), and gateway/heap.py collects only while
collections find garbage. So an owner drops the task as it cancels it.
"""

from __future__ import annotations


def cancel_and_drop(owner: object, attribute: str) -> None:
    """Cancel the task in ``owner.<attribute>`` (if any) and set the attribute to None."""
    task = getattr(owner, attribute)
    setattr(owner, attribute, None)
    if task is not None:
        task.cancel()
