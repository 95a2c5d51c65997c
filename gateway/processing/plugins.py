"""User processors ("plug-ins"): loading them and running each off the event loop.

A processor is a class built once per stream as ``cls(stream, **options)`` whose
``process(frame, timestamp, index)`` gets every 20 ms frame (960 read-only int16 samples)
and may return a dict: the processor's latest result, also published as an event. It is
named in the config as ``"module:Class"`` or by the name of an entry point in the group
``audio_gateway.processors``.

Each processor runs in its own daemon thread behind a bounded queue (``PluginRunner``), so
a slow one loses frames (counted) instead of delaying the gateway, a raising one is
stopped and reported, and one stuck forever cannot block shutdown.
"""

from __future__ import annotations

import collections
import importlib
import importlib.metadata
import logging
import queue
import threading
import time
import traceback
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "audio_gateway.processors"


class PluginError(Exception):
    """A processor could not be loaded or constructed; the message says what and why."""


@runtime_checkable
class Processor(Protocol):
    """What the gateway calls. ``close()`` is optional."""

    def process(self, frame: np.ndarray, timestamp: float, index: int) -> dict[str, Any] | None: ...


class BaseProcessor:
    """Convenience base: stores ``stream`` and ``options``; override ``process``."""

    def __init__(self, stream: str, **options: Any) -> None:
        self.stream = stream
        self.options = options

    def process(self, frame: np.ndarray, timestamp: float, index: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def close(self) -> None:
        """Called once when the processor is stopped (in its worker thread)."""


# -- loading ---------------------------------------------------------------------------
def available_processors() -> dict[str, str]:
    """Entry-point processors installed in this environment: ``{name: "module:Class"}``."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(spec: str) -> type:
    """The class named by ``"module:Class"`` (dotted attributes allowed after the colon) or
    by an entry point name in ``audio_gateway.processors``."""
    if ":" in spec:
        return _import_class(spec, f"processor {spec!r}")
    matches = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=spec)
    if not matches:
        raise PluginError(
            f"processor {spec!r}: not 'module:Class' and no entry point of that name in "
            f"group {ENTRY_POINT_GROUP!r}"
        )
    value = next(iter(matches)).value
    return _import_class(value, f"processor {spec!r} (entry point {value!r})")


def _import_class(spec: str, label: str) -> type:
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise PluginError(f"{label}: expected 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PluginError(f"{label}: module {exc.name!r} not found") from exc
    except Exception as exc:
        raise PluginError(f"{label}: importing module {module_name!r} raised {exc!r}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(
                f"{label}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not isinstance(obj, type) or not callable(getattr(obj, "process", None)):
        raise PluginError(f"{label}: {obj!r} is not a processor class (needs a process() method)")
    return obj


def load_processor(spec: str, stream: str, options: dict[str, Any] | None = None) -> Processor:
    """Import and construct a processor for ``stream``; any failure is a ``PluginError``."""
    cls = resolve(spec)
    try:
        return cls(stream, **(options or {}))
    except Exception as exc:
        raise PluginError(
            f"processor {spec!r} for stream {stream!r}: {cls.__name__}(...) raised {exc!r}"
        ) from exc


# -- running ---------------------------------------------------------------------------
_STOP = object()


class PluginRunner:
    """One processor in its own worker thread, fed through a bounded queue.

    ``submit`` is called from the event loop and never blocks: when the queue is full the
    frame is dropped and counted. Counters and results are plain attributes written by the
    worker and read by the loop (each write is atomic under the GIL); ``take_events``
    drains the results published since the last call.
    """

    def __init__(
        self,
        processor: Processor,
        *,
        name: str = "",
        stream: str = "",
        queue_size: int = 50,
        max_events: int = 100,
    ) -> None:
        self.processor = processor
        self.name = name or type(processor).__name__
        self.stream = stream
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        self._thread = threading.Thread(
            target=self._run, name=f"processor:{stream}:{self.name}", daemon=True
        )
        self.state = "created"  # then "running" | "failed" | "stopped"
        self.processed = 0
        self.dropped = 0
        self.last_duration_ms = 0.0
        self.max_duration_ms = 0.0
        #: The latest dict the processor returned (None until one).
        self.results: dict[str, Any] | None = None
        self.results_index: int | None = None
        #: ``repr`` of the exception that stopped the processor, and its traceback.
        self.error: str | None = None
        self.traceback: str | None = None

    def start(self) -> PluginRunner:
        self.state = "running"
        self._thread.start()
        return self

    def submit(self, index: int, timestamp: float, frame: np.ndarray) -> bool:
        """Queue a frame for the processor; False if it was dropped or the runner is not
        running. Writable frames are copied, so the processor never sees later changes."""
        if self.state != "running":
            return False
        if frame.flags.writeable:
            frame = frame.copy()
            frame.flags.writeable = False
        try:
            self._queue.put_nowait((index, timestamp, frame))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the worker and close the processor; True if the thread ended in time.

        Frames still queued are discarded. A processor stuck in ``process`` is abandoned
        (its thread is a daemon and will not hold up interpreter exit).
        """
        if self.state != "failed":
            self.state = "stopped"
        if not self._thread.is_alive():
            return True
        while True:  # make room for the stop marker without ever blocking
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:  # the worker cannot be taking frames: state already says stop
            pass
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def take_events(self) -> list[dict[str, Any]]:
        """Results published since the last call, oldest first (at most ``max_events``)."""
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def snapshot(self) -> dict[str, Any]:
        """Counters and the latest result, for the API."""
        return {
            "processor": self.name,
            "state": self.state,
            "processed": self.processed,
            "dropped": self.dropped,
            "queued": self.queued,
            "last_duration_ms": round(self.last_duration_ms, 3),
            "max_duration_ms": round(self.max_duration_ms, 3),
            "error": self.error,
            "results": self.results,
            "results_index": self.results_index,
        }

    # -- worker thread -------------------------------------------------------------------
    def _run(self) -> None:
        process = self.processor.process
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP or self.state != "running":
                break
            index, timestamp, frame = item
            started = time.perf_counter()
            try:
                result = process(frame, timestamp, index)
                if result is not None and not isinstance(result, dict):
                    raise TypeError(
                        f"process() returned {type(result).__name__}, expected dict or None"
                    )
            except BaseException as exc:  # SystemExit in a plug-in must not pass silently
                self.error = repr(exc)
                self.traceback = traceback.format_exc()
                self.state = "failed"
                log.error(
                    "processor %s on stream %s failed at frame %d, stopped:\n%s",
                    self.name,
                    self.stream,
                    index,
                    self.traceback,
                )
                break
            finally:
                self.last_duration_ms = duration = (time.perf_counter() - started) * 1000.0
                if duration > self.max_duration_ms:
                    self.max_duration_ms = duration
            self.processed += 1
            if result is not None:
                self.results = result
                self.results_index = index
                self._events.append(
                    {
                        "type": "processor",
                        "processor": self.name,
                        "stream": self.stream,
                        "frame": index,
                        "timestamp": timestamp,
                        "result": result,
                    }
                )
        self._close()

    def _close(self) -> None:
        close = getattr(self.processor, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            log.exception("processor %s on stream %s: close() failed", self.name, self.stream)
