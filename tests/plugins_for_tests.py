"""Plug-in processors the tests load by name, as users would from the config."""

from __future__ import annotations

import time

import numpy as np


class Slow:
    """Takes 200 ms per 20 ms frame: ten times too slow to keep up."""

    def __init__(self, stream: str, **options: object) -> None:
        self.stream = stream

    def process(self, frame: np.ndarray, timestamp: float, index: int) -> dict | None:
        time.sleep(0.2)
        return {"peak": int(np.abs(frame.astype(np.int32)).max())}


class Raises:
    """Fails on its third frame."""

    def __init__(self, stream: str, **options: object) -> None:
        self.seen = 0

    def process(self, frame: np.ndarray, timestamp: float, index: int) -> dict | None:
        self.seen += 1
        if self.seen == 3:
            raise RuntimeError("plug-in bug on purpose")
        return None
