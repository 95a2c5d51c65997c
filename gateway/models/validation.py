"""Pydantic's validation errors, said the gateway's way: the key path as a person writes
it (``sip.routes[0].match``) and a short message ("must be 1-65534", "is required").

The configuration (``ConfigError``) and the API (a 400 problem's ``errors``) both say
them from here."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError


class KeyProblem(ValueError):
    """Raised by a validator that checks several fields: names the one at fault, relative
    to the model that checks it (``key``), or none (the message says it all)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class Invalid(NamedTuple):
    path: str  # "sip.routes[0].match"; "" for the whole document
    kind: str  # pydantic's error type: "missing", "extra_forbidden", "int_type"...
    message: str  # "is required", "must be an integer", "must be 1-65534"
    value: Any  # what was sent


#: Pydantic's type errors: the Python name (configuration) and the JSON one (API).
TYPE_NAMES = {
    "int_type": ("int", "an integer"),
    "float_type": ("float", "a number"),
    "string_type": ("str", "a string"),
    "bool_type": ("bool", "a boolean"),
    "list_type": ("list", "a list"),
    "dict_type": ("table", "an object"),
    "model_type": ("table", "an object"),
}


def path_of(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: Any) -> tuple[str, str]:
    """(relative key of a KeyProblem or "", message)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error":
        exc = ctx.get("error")
        if isinstance(exc, KeyProblem):
            return exc.key or "", exc.message
        return "", str(exc)
    if kind in ("missing", "union_tag_not_found"):
        return "", "is required"
    if kind == "extra_forbidden":
        return "", "unknown field"
    if kind in TYPE_NAMES:
        return "", f"must be {TYPE_NAMES[kind][1]}"
    if kind == "literal_error":
        return "", f"must be {ctx['expected']}"
    if kind == "union_tag_invalid":
        return "", f"must be {ctx['expected_tags']}"
    if kind in ("string_too_short", "too_short"):
        least = ctx.get("min_length", 1)
        unit = "characters" if kind == "string_too_short" else "items"
        return "", "must not be empty" if least == 1 else f"must be at least {least} {unit}"
    return "", error["msg"][:1].lower() + error["msg"][1:]


def invalid(exc: ValidationError, tagged: bool = False) -> list[Invalid]:
    """Every error of ``exc``. ``tagged``: a discriminated union was validated, whose tag
    pydantic puts first in each location (``("rtp", "port")``): it is left out."""
    out = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if tagged:
            loc = ("type",) if error["type"].startswith("union_tag") else loc[1:]
        key, message = _message(error)
        path = path_of(loc)
        if key:
            path = f"{path}.{key}" if path and not key.startswith("[") else path + key
        out.append(Invalid(path, error["type"], message, error.get("input")))
    return out
