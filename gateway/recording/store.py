"""Where recordings live: safe file names, crash recovery, listing, retention.

Layout: ``<directory>/<safe stream name>/<safe name>-<UTC start>.<wav|opus>``, with a
``.part`` suffix until finished and a sidecar ``<file>.json`` holding what the file
name cannot (the real stream name, the start time, whether it was recovered).

A ``.part`` is in progress only while a recorder of this process writes it (the store
hands out and takes back those names); any other ``.part`` is unfinished: left by a crash
or a failed recording, listed with the reason, and finished by :meth:`recover`.

Every method does blocking file I/O: call them from a thread (``asyncio.to_thread``),
never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import Any

from ..models.limits import RECORDING_FORMATS
from .errors import RecordingError
from .ogg import ogg_duration, repair_ogg
from .wav import repair_wav, wav_info

FORMATS = RECORDING_FORMATS
PART = ".part"
BROKEN = ".broken"
SIDECAR = ".json"
TMP = ".tmp"
#: Longest safe name; stream names can be anything a client sends.
MAX_NAME = 80
_HASH_LEN = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HASHED = re.compile(rf"_[0-9a-f]{{{_HASH_LEN}}}$")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                     *(f"lpt{i}" for i in range(10))}


def safe_name(stream: str) -> str:
    """A file-name part for ``stream`` that can never leave its directory.

    Keeps ``[A-Za-z0-9._-]`` and replaces the rest with ``_``; leading and trailing dots
    go (no ``.``/``..``, no hidden files, no Windows trailing-dot names), and so do
    Windows device names and overlong names. Whenever anything changed, ``_`` and a hash
    of the original name are appended, so two streams never share a directory. Names that
    merely look hashed (end in ``_`` + 12 hex digits) are hashed too, so an unchanged name
    can never equal another name's changed one.
    """
    cleaned = _UNSAFE.sub("_", stream).strip(".")
    reserved = cleaned.split(".", 1)[0].lower() in _WINDOWS_RESERVED
    if (cleaned == stream and cleaned and len(cleaned) <= MAX_NAME and not reserved
            and not _HASHED.search(cleaned)):
        return cleaned
    if reserved:
        cleaned = "_" + cleaned  # "CON.txt_<hash>" would still name a Windows device
    digest = hashlib.sha256(stream.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    prefix = cleaned[: MAX_NAME - _HASH_LEN - 1].rstrip(".")
    return f"{prefix}_{digest}" if prefix else digest


def _timestamp(started: float) -> str:
    ms = int(round(started * 1000))
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f"{ms % 1000:03d}Z"


def _longest_id() -> int:
    """Characters in the id of the longest path new_path makes: base64 of
    ``<name>/<name>-<timestamp>-<n>.<format>``."""
    rel = MAX_NAME + len("/") + MAX_NAME + len("-") + len(_timestamp(0)) + len("-999") \
        + len(".") + max(map(len, FORMATS))
    return -(-rel // 3) * 4


#: Longest recording id (256): ids are urlsafe base64 without padding.
MAX_ID_CHARS = _longest_id()
ID_PATTERN = "[A-Za-z0-9_-]+"
_ID = re.compile(ID_PATTERN)


def valid_id(recording_id: str) -> bool:
    """Whether ``recording_id`` can be one this store made: checked before it is decoded,
    so that no odd id (too long for a file name, say) ever reaches the filesystem."""
    return len(recording_id) <= MAX_ID_CHARS and _ID.fullmatch(recording_id) is not None


_STARTED = re.compile(r"-(\d{8}T\d{6})(\d{3})Z(?:-\d+)?\.[a-z]+$")


def _started_of(name: str) -> float | None:
    """The start time :func:`_timestamp` put in a recording's file name, if it is there."""
    match = _STARTED.search(name.removesuffix(PART))
    if match is None:
        return None
    try:
        parsed = time.strptime(match[1], "%Y%m%dT%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(parsed) + int(match[2]) / 1000


def _format_of(name: str) -> str | None:
    """'wav'/'opus' for a recording file name (finished or ``.part``), else None."""
    base = name.removesuffix(PART)
    for fmt in FORMATS:
        if base.endswith("." + fmt) and len(base) > len(fmt) + 1:
            return fmt
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically: it holds the old or the new data, never a torn file.
    A failed write (disk full) removes its temporary file and raises."""
    tmp = path.with_name(path.name + TMP)
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())  # a full disk or quota may only tell here
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _finished(entry: dict[str, Any]) -> bool:
    return not entry["in_progress"] and entry["error"] is None


def _duration(path: Path, fmt: str, in_progress: bool) -> float:
    if fmt == "wav":
        return wav_info(path, from_size=in_progress)[2]
    return ogg_duration(path)


def _repair(path: Path, fmt: str) -> float:
    return repair_wav(path) if fmt == "wav" else repair_ogg(path)


class RecordingStore:
    """The recordings directory. Ids are the urlsafe base64 of the final relative path,
    so a recording keeps its id from ``.part`` to finished, and ids decode back to paths
    that are checked to stay inside the directory."""

    def __init__(self, directory: str | os.PathLike[str], max_age_s: float | None = None,
                 max_total_bytes: int | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes  # the directory is made by the first recording
        #: ``.part`` files a recorder is writing: the only recordings in progress.
        self._writing: set[Path] = set()
        #: ``.part`` files left unfinished (a failed recording or recovery), and why.
        self._unfinished: dict[Path, str] = {}

    # -- paths and ids -----------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved == self.directory or not resolved.is_relative_to(self.directory):
            raise RecordingError(f"{path} is outside the recordings directory")
        return resolved

    def _id(self, final: Path) -> str:
        rel = final.relative_to(self.directory).as_posix()
        return base64.urlsafe_b64encode(rel.encode()).decode().rstrip("=")

    def new_path(self, stream: str, fmt: str, started: float) -> Path:
        """A fresh ``.part`` path for a recording starting at ``started`` (epoch seconds).

        The stream's subdirectory is created and the sidecar written; the name is made
        unique if another recording of the stream started in the same millisecond.
        """
        if fmt not in FORMATS:
            raise ValueError(f"recording format must be one of {FORMATS}, got {fmt!r}")
        name = safe_name(stream)
        folder = self._inside(self.directory / name)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{_timestamp(started)}"
        meta = {"stream": stream, "format": fmt, "started": started, "recovered": False}
        for n in range(1000):
            final = folder / f"{stem}{f'-{n}' if n else ''}.{fmt}"
            part = self._inside(final.with_name(final.name + PART))
            if any(p.exists() for p in (final, part, final.with_name(final.name + BROKEN))):
                continue
            sidecar = self._sidecar(final)
            try:  # creating the sidecar exclusively claims the name, even across threads
                f = open(sidecar, "x")
            except FileExistsError:
                continue
            try:
                with f:
                    json.dump(meta, f, sort_keys=True)
            except BaseException:  # disk full: no empty sidecar left claiming the name
                with contextlib.suppress(OSError):
                    sidecar.unlink()
                raise
            self._writing.add(part)
            return part
        raise RecordingError(f"no free file name for {stem}")

    @staticmethod
    def _sidecar(final: Path) -> Path:
        return final.with_name(final.name + SIDECAR)

    def _final_of(self, recording_id: str) -> Path:
        """The finished path an id stands for, checked to be a recording name in a stream
        folder of the directory (whether it exists or not); KeyError otherwise."""
        if not valid_id(recording_id):
            raise KeyError(recording_id)
        try:
            padded = recording_id + "=" * (-len(recording_id) % 4)
            rel = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        except (ValueError, binascii.Error, UnicodeError):
            raise KeyError(recording_id) from None
        if base64.urlsafe_b64encode(rel.encode()).decode().rstrip("=") != recording_id:
            raise KeyError(recording_id)  # only the one canonical spelling of each id
        parts = PurePosixPath(rel).parts
        if (len(parts) != 2 or PurePosixPath(rel).as_posix() != rel or "\\" in rel
                or "\0" in rel or any(p in ("", ".", "..", "/") for p in parts)
                or _format_of(parts[1]) is None or rel.endswith(PART)):
            raise KeyError(recording_id)
        return self.directory.joinpath(*parts)

    def path_of(self, recording_id: str) -> Path:
        """The file of a recording id (finished, else in progress); KeyError otherwise."""
        final = self._final_of(recording_id)
        for path in (final, final.with_name(final.name + PART)):
            try:
                resolved = self._inside(path)
            except RecordingError:
                raise KeyError(recording_id) from None
            if resolved.is_file():
                return resolved
        raise KeyError(recording_id)

    # -- lifecycle ---------------------------------------------------------------------
    def finish(self, path: Path) -> Path:
        """Give a completed ``x.wav.part`` its final name (atomically) and return it."""
        path = Path(path)
        if not path.name.endswith(PART):
            raise ValueError(f"not an in-progress recording: {path}")
        final = path.with_name(path.name.removesuffix(PART))
        os.replace(path, final)
        self._writing.discard(path)
        return final

    def release(self, path: Path, reason: str) -> None:
        """A recorder stops writing ``path`` without finishing it (its writes failed): it
        is listed as unfinished, with ``reason``, until the next :meth:`recover`."""
        path = Path(path)
        if path in self._writing:
            self._unfinished[path] = reason
            self._writing.discard(path)

    def discard(self, path: Path) -> None:
        """Remove a ``.part`` (and its sidecar) whose writer never started: nothing is in
        it. Best effort: what cannot be removed now, the next :meth:`recover` clears."""
        path = Path(path)
        final = path.with_name(path.name.removesuffix(PART))
        for leftover in (path, self._sidecar(final)):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        self._writing.discard(path)

    def recover(self) -> list[dict[str, Any]]:
        """Repair and finish every ``.part`` that no recorder writes (a crash or a failed
        recording left it), and clear what interrupted writes left behind (``*.json.tmp``,
        sidecars without a recording). Call at start, before recording.

        Each file is repaired in place, then its sidecar is written (atomically), then it
        is renamed: a step that fails (disk full, read-only, I/O error) leaves a ``.part``
        that plays up to its last repair, listed as unfinished with the reason, and the
        next call starts over. Unrepairable files are renamed ``x.wav.broken`` and
        reported, never deleted; a ``.part`` without a single byte is removed.
        """
        self._clear_leftovers()
        report = []
        for part in sorted(self.directory.glob(f"*/*{PART}")):
            fmt = _format_of(part.name)
            if (fmt is None or part in self._writing or part.is_symlink()
                    or not part.is_file()):
                continue
            item = self._recover(part, fmt)
            if item is not None:
                report.append(item)
        return report

    def _recover(self, part: Path, fmt: str) -> dict[str, Any] | None:
        final = part.with_name(part.name.removesuffix(PART))
        meta = self._meta(final)
        report = {"path": str(part), "stream": meta["stream"], "format": fmt,
                  "broken": False, "recovered": False, "duration_s": 0.0}
        try:
            if part.stat().st_size == 0:  # its writer could not write a byte
                part.unlink()
                self._sidecar(final).unlink(missing_ok=True)
                self._unfinished.pop(part, None)
                return None
            try:
                if final.exists():
                    raise RecordingError(f"{final.name} already exists")
                duration = _repair(part, fmt)
            except RecordingError as exc:
                broken = final.with_name(final.name + BROKEN)
                os.replace(part, broken)
                self._unfinished.pop(part, None)
                return {**report, "path": str(broken), "broken": True, "error": str(exc)}
            meta["recovered"] = True
            _write_json(self._sidecar(final), meta)
            os.replace(part, final)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._unfinished[part] = f"not recovered: {reason}; retried at the next start"
            return {**report, "error": self._unfinished[part]}
        self._unfinished.pop(part, None)
        entry = self._entry(final, fmt, part=False)
        return {**report, **entry, "path": str(final), "duration_s": round(duration, 3)}

    def _clear_leftovers(self) -> None:
        """Temporary sidecars of interrupted writes, and sidecars whose recording is gone
        (deleted halfway, or never started because the disk was full)."""
        for path in self.directory.glob(f"*/*{SIDECAR}{TMP}"):
            with contextlib.suppress(OSError):
                path.unlink()
        for path in self.directory.glob(f"*/*{SIDECAR}"):
            final = path.with_name(path.name.removesuffix(SIDECAR))
            if _format_of(final.name) is None or path.is_symlink():
                continue
            names = (final, final.with_name(final.name + PART),
                     final.with_name(final.name + BROKEN))
            if not any(p.exists() or p in self._writing for p in names):
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- listing -----------------------------------------------------------------------
    def _meta(self, final: Path) -> dict[str, Any]:
        """The sidecar, or what the file itself tells when it is missing or unreadable."""
        try:
            meta = json.loads(self._sidecar(final).read_text())
            if isinstance(meta, dict) and isinstance(meta.get("stream"), str):
                return meta
        except (OSError, ValueError):
            pass
        started = _started_of(final.name)
        if started is None:
            path = final if final.exists() else final.with_name(final.name + PART)
            try:
                started = path.stat().st_mtime
            except OSError:
                started = 0.0
        return {"stream": final.parent.name, "format": _format_of(final.name),
                "started": started, "recovered": False}

    def _entry(self, final: Path, fmt: str, part: bool) -> dict[str, Any]:
        path = final.with_name(final.name + PART) if part else final
        writing = path in self._writing  # before stat: finish() renames, then forgets
        size = path.stat().st_size
        try:
            duration = _duration(path, fmt, part)
        except RecordingError:
            duration = 0.0  # a .part whose header is not on disk yet
        meta = self._meta(final)
        error = None
        if part and not writing:
            error = self._unfinished.get(path, "unfinished (left by an interrupted run); "
                                               "recovered at the next start")
        return {
            "id": self._id(final),
            "stream": meta["stream"],
            "format": fmt,
            "file": final.name,
            "started": float(meta.get("started") or 0.0),
            "duration_s": round(duration, 3),
            "bytes": size,
            "in_progress": writing,
            "recovered": bool(meta.get("recovered")) and not part,
            "error": error,
        }

    def list(self) -> list[dict[str, Any]]:
        """Every recording: finished, in progress and unfinished, oldest first."""
        entries = []
        for folder in self.directory.iterdir():
            if not folder.is_dir() or folder.is_symlink():
                continue
            for path in folder.iterdir():
                fmt = _format_of(path.name)
                if fmt is None or path.is_symlink():
                    continue
                part = path.name.endswith(PART)
                final = path.with_name(path.name.removesuffix(PART))
                try:
                    entries.append(self._entry(final, fmt, part))
                except FileNotFoundError:
                    if not part:
                        continue  # deleted meanwhile
                    try:  # finished meanwhile: renamed from .part
                        entries.append(self._entry(final, fmt, False))
                    except FileNotFoundError:
                        continue
        unique = {e["id"]: e for e in entries}  # a .part and its final seen in one pass
        return sorted(unique.values(), key=lambda e: (e["started"], e["id"]))

    def delete(self, recording_id: str) -> None:
        """Remove a recording (finished or unfinished) and its sidecar; KeyError if
        unknown, RecordingError while a recorder writes it."""
        path = self.path_of(recording_id)
        if path in self._writing:
            raise RecordingError("recording in progress; stop it first")
        path.unlink(missing_ok=True)
        self._sidecar(path.with_name(path.name.removesuffix(PART))).unlink(missing_ok=True)
        self._unfinished.pop(path, None)

    def enforce_retention(self, now: float) -> list[Path]:
        """Delete finished recordings that ended over ``max_age_s`` ago, then the oldest
        until all recordings (in-progress and unfinished ones count, but are never
        deleted) fit in ``max_total_bytes``. Returns the deleted files."""
        entries = self.list()
        deleted: list[Path] = []
        kept = []
        for entry in entries:
            ended = entry["started"] + entry["duration_s"]
            if (self.max_age_s is not None and _finished(entry)
                    and now - ended > self.max_age_s):
                deleted.append(self._remove(entry))
            else:
                kept.append(entry)
        if self.max_total_bytes is not None:
            total = sum(e["bytes"] for e in kept)
            for entry in kept:  # oldest first
                if total <= self.max_total_bytes:
                    break
                if _finished(entry):
                    deleted.append(self._remove(entry))
                    total -= entry["bytes"]
        return deleted

    def _remove(self, entry: dict[str, Any]) -> Path:
        path = self._final_of(entry["id"])
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)
        return path
