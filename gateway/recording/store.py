"""Where recordings live: safe file names, crash recovery, listing, retention.

Layout: ``<directory>/<safe stream name>/<safe name>-<UTC start>.<wav|opus>``, with a
``.part`` suffix while being written and a sidecar ``<file>.json`` holding what the file
name cannot (the real stream name, the start time, whether it was recovered).

Every method does blocking file I/O: call them from a thread (``asyncio.to_thread``),
never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import Any


class RecordingError(Exception):
    """A recording file is not what it should be, or an operation on it is not allowed."""


FORMATS = ("wav", "opus")
PART = ".part"
BROKEN = ".broken"
SIDECAR = ".json"
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


def _format_of(name: str) -> str | None:
    """'wav'/'opus' for a recording file name (finished or ``.part``), else None."""
    base = name.removesuffix(PART)
    for fmt in FORMATS:
        if base.endswith("." + fmt) and len(base) > len(fmt) + 1:
            return fmt
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def _duration(path: Path, fmt: str, in_progress: bool) -> float:
    from .ogg import ogg_duration  # imported here: wav/ogg import RecordingError from us
    from .wav import wav_info

    if fmt == "wav":
        return wav_info(path, from_size=in_progress)[2]
    return ogg_duration(path)


def _repair(path: Path, fmt: str) -> float:
    from .ogg import repair_ogg
    from .wav import repair_wav

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
            try:  # creating the sidecar exclusively claims the name, even across threads
                with open(self._sidecar(final), "x") as f:
                    json.dump(meta, f, sort_keys=True)
            except FileExistsError:
                continue
            return part
        raise RecordingError(f"no free file name for {stem}")

    @staticmethod
    def _sidecar(final: Path) -> Path:
        return final.with_name(final.name + SIDECAR)

    def _final_of(self, recording_id: str) -> Path:
        """The finished path an id stands for, checked to be a recording name in a stream
        folder of the directory (whether it exists or not); KeyError otherwise."""
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
        meta = self._meta(final)
        meta["finished"] = time.time()
        _write_json(self._sidecar(final), meta)
        return final

    def recover(self) -> list[dict[str, Any]]:
        """Repair and finish every ``.part`` a crash left behind (call before recording).

        Unrepairable files are renamed ``x.wav.broken`` and reported, never deleted.
        """
        report = []
        for part in sorted(self.directory.glob(f"*/*{PART}")):
            fmt = _format_of(part.name)
            if fmt is None or part.is_symlink() or not part.is_file():
                continue
            final = part.with_name(part.name.removesuffix(PART))
            meta = self._meta(final)
            try:
                if final.exists():
                    raise RecordingError(f"{final.name} already exists")
                duration = _repair(part, fmt)
            except RecordingError as exc:
                broken = final.with_name(final.name + BROKEN)
                os.replace(part, broken)
                report.append({"path": str(broken), "stream": meta["stream"], "format": fmt,
                               "broken": True, "recovered": False, "duration_s": 0.0,
                               "error": str(exc)})
                continue
            os.replace(part, final)
            meta["recovered"] = True
            _write_json(self._sidecar(final), meta)
            entry = self._entry(final, fmt, in_progress=False)
            report.append({**entry, "path": str(final), "duration_s": round(duration, 3)})
        return report

    # -- listing -----------------------------------------------------------------------
    def _meta(self, final: Path) -> dict[str, Any]:
        """The sidecar, or what the file itself tells when it is missing or unreadable."""
        try:
            meta = json.loads(self._sidecar(final).read_text())
            if isinstance(meta, dict) and isinstance(meta.get("stream"), str):
                return meta
        except (OSError, ValueError):
            pass
        path = final if final.exists() else final.with_name(final.name + PART)
        try:
            started = path.stat().st_mtime
        except OSError:
            started = 0.0
        return {"stream": final.parent.name, "format": _format_of(final.name),
                "started": started, "recovered": False}

    def _entry(self, final: Path, fmt: str, in_progress: bool) -> dict[str, Any]:
        path = final.with_name(final.name + PART) if in_progress else final
        size = path.stat().st_size
        try:
            duration = _duration(path, fmt, in_progress)
        except RecordingError:
            duration = 0.0  # a .part whose header is not on disk yet
        meta = self._meta(final)
        return {
            "id": self._id(final),
            "stream": meta["stream"],
            "format": fmt,
            "file": final.name,
            "started": float(meta.get("started") or 0.0),
            "duration_s": round(duration, 3),
            "bytes": size,
            "in_progress": in_progress,
            "recovered": bool(meta.get("recovered")),
        }

    def list(self) -> list[dict[str, Any]]:
        """Every recording, finished and in progress, oldest first."""
        entries = []
        for folder in self.directory.iterdir():
            if not folder.is_dir() or folder.is_symlink():
                continue
            for path in folder.iterdir():
                fmt = _format_of(path.name)
                if fmt is None or path.is_symlink():
                    continue
                in_progress = path.name.endswith(PART)
                final = path.with_name(path.name.removesuffix(PART))
                try:
                    entries.append(self._entry(final, fmt, in_progress))
                except FileNotFoundError:
                    if not in_progress:
                        continue  # deleted meanwhile
                    try:  # finished meanwhile: renamed from .part
                        entries.append(self._entry(final, fmt, False))
                    except FileNotFoundError:
                        continue
        unique = {e["id"]: e for e in entries}  # a .part and its final seen in one pass
        return sorted(unique.values(), key=lambda e: (e["started"], e["id"]))

    def delete(self, recording_id: str) -> None:
        """Remove a finished recording and its sidecar; KeyError if unknown."""
        path = self.path_of(recording_id)
        if path.name.endswith(PART):
            raise RecordingError("recording in progress; stop it first")
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)

    def enforce_retention(self, now: float) -> list[Path]:
        """Delete finished recordings that ended over ``max_age_s`` ago, then the oldest
        until all recordings (in-progress ones count, but are never deleted) fit in
        ``max_total_bytes``. Returns the deleted files."""
        entries = self.list()
        deleted: list[Path] = []
        kept = []
        for entry in entries:
            ended = entry["started"] + entry["duration_s"]
            if (self.max_age_s is not None and not entry["in_progress"]
                    and now - ended > self.max_age_s):
                deleted.append(self._remove(entry))
            else:
                kept.append(entry)
        if self.max_total_bytes is not None:
            total = sum(e["bytes"] for e in kept)
            for entry in kept:  # oldest first
                if total <= self.max_total_bytes:
                    break
                if not entry["in_progress"]:
                    deleted.append(self._remove(entry))
                    total -= entry["bytes"]
        return deleted

    def _remove(self, entry: dict[str, Any]) -> Path:
        path = self._final_of(entry["id"])
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)
        return path
