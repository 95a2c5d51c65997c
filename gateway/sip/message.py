"""Sans-IO SIP messages (RFC 3261 §7, §20, §25): parse bytes, build bytes.

Headers keep their order and repeats; names are canonical (compact forms expanded), so
``msg.headers.get("v")`` and ``msg.headers.get("Via")`` find the same thing. Values of
list headers (Via, Route, Contact, ...) may be comma-joined or repeated; ``get_all``
splits them outside quotes and angle brackets. ``SipParseError`` is the only error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

MAX_MESSAGE = 65535

#: RFC 3261 §7.3.3 compact forms, and the canonical spelling of common names.
COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To",
    "v": "Via", "o": "Event", "r": "Refer-To", "u": "Allow-Events", "x": "Session-Expires",
    "b": "Referred-By", "a": "Accept-Contact", "j": "Reject-Contact",
    "d": "Request-Disposition", "y": "Identity",
}
CANONICAL = {
    name.lower(): name
    for name in (
        "Call-ID", "CSeq", "WWW-Authenticate", "Proxy-Authenticate", "Authorization",
        "Proxy-Authorization", "Max-Forwards", "Record-Route", "Route", "Allow", "Accept",
        "User-Agent", "Server", "Expires", "Min-Expires", "Retry-After", "Require",
        "Proxy-Require", "Unsupported", "RSeq", "RAck", "Warning", "Content-Disposition",
        "Min-SE", "Session-Expires", "Date", "Organization", "Timestamp", "Reason",
        "Path", "Service-Route", "SIP-ETag", "SIP-If-Match", *COMPACT.values(),
    )
}
#: Headers whose value is a comma-separated list (RFC 3261 §7.3.1).
LIST_HEADERS = {
    "Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require",
    "Proxy-Require", "Unsupported", "Accept", "Allow-Events", "Path", "Service-Route",
}
REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 301: "Moved Permanently",
    302: "Moved Temporarily", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication Required",
    408: "Request Timeout", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}
TOKEN = re.compile(r"\A[A-Za-z0-9.!%*_+`'~-]+\Z")
#: Parameter names: token characters plus the extra ones SIP URI parameters allow.
PARAM_NAME = re.compile(r"[A-Za-z0-9.!%*_+`'~\-\[\]/:&$]+")
HOSTNAME = re.compile(r"[A-Za-z0-9._-]*[A-Za-z0-9][A-Za-z0-9._-]*")
IPV6_REFERENCE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
VIA = re.compile(r"([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+(.*)", re.DOTALL)
BLANK_LINE = re.compile(rb"\r?\n\r?\n")
LINE_END = re.compile(rb"\r?\n")
MAX_DIGITS = 10  # no SIP number we read needs more (CSeq < 2**32, ports, lengths)
MAGIC_COOKIE = "z9hG4bK"


T = TypeVar("T")


class SipParseError(ValueError):
    """The bytes are not a SIP message we can use; the message says why."""


def _number(text: str, what: str, limit: int = 2**32 - 1) -> int:
    """A non-negative ASCII decimal no larger than ``limit``, or SipParseError."""
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_DIGITS:
        raise SipParseError(f"bad {what}: {text[:20]!r}")
    value = int(text)
    if value > limit:
        raise SipParseError(f"{what} out of range: {text!r}")
    return value


#: What a URI may not contain: white space (as str.isspace), <, > and ".
_URI_FORBIDDEN = re.compile(r'[\s<>"]')


@lru_cache(maxsize=512)
def canonical_name(name: str) -> str:
    lower = name.strip().lower()
    if lower in COMPACT:
        return COMPACT[lower]
    return CANONICAL.get(lower) or "-".join(p[:1].upper() + p[1:] for p in lower.split("-"))


def split_list(value: str) -> list[str]:
    """Split a comma-joined header value, ignoring commas in quotes, <...> and escapes."""
    if "," not in value:  # one value: the usual case
        value = value.strip()
        return [value] if value else []
    if '"' not in value and "<" not in value:  # no quotes, no URIs: in C
        return [p for p in (part.strip() for part in value.split(",")) if p]
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=1;b;c="x;y"`` (leading ';' optional) into an ordered dict; names lower-cased.

    Empty parameters (``;;``), bad names and unquoted values with spaces are errors.
    """
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    for item in _split_outside_quotes(text[1:] if text.startswith(";") else text, ";"):
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not PARAM_NAME.fullmatch(name):
            raise SipParseError(f"bad parameter {item.strip()[:40]!r}")
        if not value.startswith('"') and len(value.split()) > 1:  # white space inside
            raise SipParseError(f"white space in parameter value {value[:40]!r}")
        params[name.lower()] = value if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    if '"' not in text:  # escapes count only inside quotes
        return text.split(sep)
    parts, start, quoted, i = [], 0, False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quoted:
            i += 1
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError(f"unterminated quoted string in {text[:40]!r}")
    parts.append(text[start:])
    return parts


def _split_hostport(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; the host keeps its brackets."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or not IPV6_REFERENCE.fullmatch(host):
            raise SipParseError(f"bad IPv6 reference in {text[:80]!r}")
        if rest and not rest.startswith(":"):
            raise SipParseError(f"junk after IPv6 host in {text[:80]!r}")
        colon, port_text = rest[:1], rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not HOSTNAME.fullmatch(host):
            raise SipParseError(f"bad host in {text[:80]!r}")
    if not colon:
        return host, None
    port = _number(port_text, "port", 65535)
    if port == 0:
        raise SipParseError(f"bad port in {text[:80]!r}")
    return host, port


def _format_hostport(host: str, port: int | None) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def bare_host(host: str) -> str:
    """A host without IPv6 brackets, as socket calls want it."""
    return host[1:-1] if host.startswith("[") else host


@dataclass
class Uri:
    """``sip:user:password@host:port;params?headers`` (sips and tel are read, not resolved)."""

    scheme: str
    host: str
    user: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> Uri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips", "tel"):
            raise SipParseError(f"not a SIP URI: {text[:80]!r}")
        if _URI_FORBIDDEN.search(rest):
            raise SipParseError(f"white space or <>\" in URI {text[:80]!r}")
        if scheme == "tel":
            number, semicolon, params = rest.partition(";")
            if not number:
                raise SipParseError(f"empty tel URI {text[:80]!r}")
            return cls("tel", "", user=number, params=parse_params(semicolon + params))
        user = password = None
        if "@" in rest:
            # '@' is never literal after the userinfo, while the user part may hold
            # ';' and '?' (RFC 3261 §25.1 user-unreserved): split there first
            userinfo, _, rest = rest.partition("@")
            user, _, pw = userinfo.partition(":")
            password = pw or None
        rest, _, headers = rest.partition("?")
        hostport, semicolon, params = rest.partition(";")
        host, port = _split_hostport(hostport)
        params_ = parse_params(semicolon + params)
        return cls(scheme, host, user, port, params_, headers, password)

    @property
    def hostport(self) -> str:
        return _format_hostport(self.host, self.port)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password else "") + "@"
        tail = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.hostport}{format_params(self.params)}{tail}"


@dataclass
class Address:
    """A name-addr or addr-spec with header parameters: From, To, Contact, Route."""

    uri: Uri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    star: bool = False  # Contact: *

    @classmethod
    def parse(cls, text: str) -> Address:
        text = text.strip()
        if text == "*":
            return cls(Uri("sip", "*"), star=True)
        display = None
        if "<" in text:
            head, _, rest = text.partition("<")
            if head.strip().startswith('"'):
                display, rest = _quoted_display(text)
            else:
                display = _token_display(head)
            uri_text, close, params = rest.partition(">")
            if not close:
                raise SipParseError(f"unclosed <...> in {text[:80]!r}")
            if params.strip() and not params.strip().startswith(";"):
                raise SipParseError(f"junk after <...> in {text[:80]!r}")
        else:
            # addr-spec: parameters after ';' belong to the header, not the URI, and
            # a URI with ',', '?' or ';' of its own must be in <...> (RFC 3261 §20.10)
            uri_text, semicolon, params = text.partition(";")
            params = semicolon + params
            if "?" in uri_text or "," in uri_text:
                raise SipParseError(f"URI with headers or ',' needs <...>: {text[:80]!r}")
        return cls(Uri.parse(uri_text), display, parse_params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.star:
            return "*"
        name = ""
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            name = f'"{escaped}" '
        return f"{name}<{self.uri}>{format_params(self.params)}"


def _token_display(head: str) -> str | None:
    """An unquoted display name: tokens and white space only (RFC 3261 §25.1)."""
    words = head.split()
    if not all(TOKEN.fullmatch(w) for w in words):
        raise SipParseError(f"display name needs quotes: {head.strip()[:80]!r}")
    return " ".join(words) or None


def _quoted_display(text: str) -> tuple[str, str]:
    """('display name', rest after '<') for ``"A \\"b\\"" <sip:...>``."""
    i = text.index('"') + 1
    out = []
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            break
        out.append(ch)
        i += 1
    else:
        raise SipParseError("unclosed quoted display name")
    rest = text[i + 1 :]
    lt = rest.find("<")
    if lt < 0 or rest[:lt].strip():
        raise SipParseError("display name without <uri> right after it")
    return "".join(out), rest[lt + 1 :]


@dataclass
class Via:
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        """``SIP / 2.0 / UDP host : port ;params``: white space allowed around / and :."""
        match = VIA.fullmatch(text.strip())
        if not match or match[1].upper() != "SIP" or match[2] != "2.0":
            raise SipParseError(f"bad Via: {text[:80]!r}")
        if not TOKEN.fullmatch(match[3]):
            raise SipParseError(f"bad Via transport: {text[:80]!r}")
        sent_by, semicolon, params = match[4].partition(";")
        host, port = _split_hostport(re.sub(r"\s*:\s*", ":", sent_by.strip()))
        return cls(match[3].upper(), host, port, parse_params(semicolon + params))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {_format_hostport(self.host, self.port)}" + (
            format_params(self.params)
        )


class Headers:
    """Ordered, repeatable headers with canonical names.

    Values parsed from them (``parsed``) are kept until the headers change: a request
    is read by the overload gate, the transaction layer, NAT handling and the service,
    and parsing its Via, From and To each time was most of an OPTIONS' cost. The parsed
    objects are shared, so callers copy them before changing them.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [_checked(n, v) for n, v in items]
        self._parsed: dict[str, Any] = {}

    def parsed(self, name: str, parse: Callable[[Headers], T]) -> T:
        """``parse(self)``: header ``name`` (canonical) read once until it changes;
        errors are not kept."""
        try:
            return self._parsed[name]
        except KeyError:
            value = self._parsed[name] = parse(self)
            return value

    def get(self, name: str, default: str | None = None) -> str | None:
        name = canonical_name(name)
        for n, v in self._items:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value, repeated headers and comma-joined list values split apart."""
        name = canonical_name(name)
        values = [v for n, v in self._items if n == name]
        if name in LIST_HEADERS:
            return [item for v in values for item in split_list(v)]
        return values

    def add(self, name: str, value: str, first: bool = False) -> None:
        item = _checked(name, value)
        self._parsed.pop(item[0], None)
        if first:
            self._items.insert(0, item)
        else:
            self._items.append(item)

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one (in the place of the first)."""
        item = _checked(name, value)
        name = item[0]
        self._parsed.pop(name, None)
        for i, (n, _) in enumerate(self._items):
            if n == name:
                self._items[i] = item
                self._items = [it for j, it in enumerate(self._items) if j <= i or it[0] != name]
                return
        self._items.append(item)

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self._parsed.pop(name, None)
        self._items = [it for it in self._items if it[0] != name]

    def adopt_parsed(self, source: Headers, names: Iterable[str]) -> None:
        """What ``source`` has parsed of headers ``names``, copied here unchanged."""
        for name in names:
            if name in source._parsed:
                self._parsed[name] = source._parsed[name]

    def replace_first(self, name: str, value: str, parsed: Any = None) -> None:
        """Replace the first value of list header ``name`` (the top Via), keeping the
        rest; ``parsed`` is what the header now parses to, if the caller knows it."""
        item = _checked(name, value)
        name = item[0]
        self._parsed.pop(name, None)
        for i, (n, v) in enumerate(self._items):
            if n == name:
                self._items[i] = (name, ", ".join([item[1], *split_list(v)[1:]]))
                if parsed is not None:
                    self._parsed[name] = parsed
                return
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def copy(self) -> Headers:
        copied = Headers()
        copied._items = list(self._items)  # checked already
        return copied


@lru_cache(maxsize=512)
def _header_name(name: str) -> str:
    """The canonical form of a valid header name (messages repeat a few dozen names)."""
    name = canonical_name(name)
    if not TOKEN.fullmatch(name):
        raise SipParseError(f"bad header name {name[:40]!r}")
    return name


def _checked(name: str, value: object) -> tuple[str, str]:
    """(canonical name, value) if they can be written out as one header line."""
    name, value = _header_name(name), str(value)
    if "\r" in value or "\n" in value:
        raise SipParseError(f"line break in the value of {name}")
    return name, value


def _required(headers: Headers, name: str) -> str:
    """The one value of a single-valued header: missing or repeated is an error."""
    values = headers.get_all(name)
    if not values:
        raise SipParseError(f"missing {name} header")
    if len(values) > 1:
        raise SipParseError(f"more than one {name} header")
    return values[0]


def _call_id(headers: Headers) -> str:
    value = _required(headers, "Call-ID")
    if value.split() != [value]:  # empty, or white space in it
        raise SipParseError(f"bad Call-ID: {value[:80]!r}")
    return value


def _cseq(headers: Headers) -> tuple[int, str]:
    text = _required(headers, "CSeq")
    parts = text.split()
    if len(parts) != 2 or not TOKEN.fullmatch(parts[1]):
        raise SipParseError(f"bad CSeq: {text[:80]!r}")
    return _number(parts[0], "CSeq number"), parts[1]


def _from(headers: Headers) -> Address:
    return Address.parse(_required(headers, "From"))


def _to(headers: Headers) -> Address:
    return Address.parse(_required(headers, "To"))


def _vias(headers: Headers) -> list[Via]:
    return [Via.parse(v) for v in headers.get_all("Via")]


def _contact(headers: Headers) -> Address | None:
    values = headers.get_all("Contact")
    return Address.parse(values[0]) if values else None


class Message:
    """What requests and responses share: headers, body and the dialog identifiers."""

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    # -- the headers every transaction and dialog needs ---------------------------
    # Parsed once per version of the header (Headers.parsed); shared, so copy to change.
    @property
    def call_id(self) -> str:
        return self.headers.parsed("Call-ID", _call_id)

    @property
    def cseq(self) -> tuple[int, str]:
        """(number, method); the method keeps its case, as methods are case-sensitive."""
        return self.headers.parsed("CSeq", _cseq)

    @property
    def from_(self) -> Address:
        return self.headers.parsed("From", _from)

    @property
    def to(self) -> Address:
        return self.headers.parsed("To", _to)

    @property
    def vias(self) -> list[Via]:
        return self.headers.parsed("Via", _vias)

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("no Via header")
        return vias[0]

    @property
    def contact(self) -> Address | None:
        return self.headers.parsed("Contact", _contact)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def validate(self) -> None:
        """The mandatory headers of RFC 3261 §8.1.1 are present, single and readable."""
        self.call_id  # noqa: B018 - each access parses and raises if bad
        self.cseq  # noqa: B018
        self.from_  # noqa: B018
        self.to  # noqa: B018
        self.top_via  # noqa: B018
        self.vias  # noqa: B018 - all of them: they are copied into responses

    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        lines = [self._start_line()]
        for name, value in self.headers:
            if name != "Content-Length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class Request(Message):
    def __init__(
        self, method: str, uri: Uri, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.method = method  # case-sensitive (RFC 3261 §7.1): "invite" is not INVITE
        self.uri = uri

    def validate(self) -> None:
        """As Message.validate, and the CSeq method is the request's (RFC 3261 §8.2)."""
        super().validate()
        if self.cseq[1] != self.method:
            raise SipParseError(f"CSeq method {self.cseq[1]!r} is not {self.method!r}")

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    def __init__(
        self, status: int, reason: str | None = None, headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason if reason is not None else REASONS.get(status, "Unknown")

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def parse_message(data: bytes, max_size: int = MAX_MESSAGE) -> Request | Response:
    """One whole message (a UDP datagram, or one framed from a TCP stream)."""
    if len(data) > max_size:
        raise SipParseError(f"message larger than {max_size} bytes")
    data = bytes(data).lstrip(b"\r\n")  # CRLFs before the start line are ignored (§7.5)
    head, body = _split_head(data)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    lines = _unfold(text.replace("\r\n", "\n").split("\n"))
    if not lines or not lines[0]:
        raise SipParseError("empty message")
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not TOKEN.fullmatch(name.strip()):
            raise SipParseError(f"bad header line: {line[:80]!r}")
        headers.add(name, value.strip())
    message = _start(lines[0], headers)
    length = _single_length(headers.get_all("Content-Length"))
    if length is not None:
        if length > len(body):
            raise SipParseError(f"Content-Length {length} but only {len(body)} body bytes")
        body = body[:length]  # RFC 3261 §18.3: extra datagram bytes are discarded
    message.body = body
    return message


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """(start line and headers, body) around the first empty line (CRLF or bare LF)."""
    blank = BLANK_LINE.search(data)
    if blank is None:
        raise SipParseError("no blank line after the headers")
    return data[: blank.start()], data[blank.end() :]


def _single_length(values: list[str] | list[bytes]) -> int | None:
    """The Content-Length, None if absent; differing repeats make framing unknowable."""
    if not values:
        return None
    texts = {v.decode("latin-1") if isinstance(v, bytes) else v for v in values}
    lengths = {_number(t, "Content-Length") for t in texts}
    if len(lengths) > 1:
        raise SipParseError(f"conflicting Content-Length headers: {sorted(lengths)}")
    return lengths.pop()


def _unfold(lines: list[str]) -> list[str]:
    """Header folding (RFC 3261 §7.3.1): a line starting with white space continues."""
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if len(out) < 2:
                raise SipParseError("continuation line without a header before it")
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def _start(line: str, headers: Headers) -> Request | Response:
    parts = line.split(" ", 2)
    if len(parts) < 2:
        raise SipParseError(f"bad start line: {line[:80]!r}")
    if parts[0].upper().startswith("SIP/"):
        _check_version(parts[0])
        code = parts[1]
        if len(code) != 3 or not code.isascii() or not code.isdigit():
            raise SipParseError(f"bad status code {code[:10]!r}")
        if not 100 <= int(code) <= 699:
            raise SipParseError(f"status code {code} outside 100-699")
        return Response(int(code), parts[2] if len(parts) > 2 else "", headers)
    if len(parts) != 3:
        raise SipParseError(f"bad request line: {line[:80]!r}")
    _check_version(parts[2])
    method = parts[0]
    if not TOKEN.fullmatch(method):
        raise SipParseError(f"bad method {method[:20]!r}")
    uri = Uri.parse(parts[1])
    if uri.headers:
        raise SipParseError(f"headers in a Request-URI: {parts[1][:80]!r}")
    return Request(method, uri, headers)


def _check_version(text: str) -> None:
    """SIP/2.0, in any case (RFC 3261 §7.1); another version's text says "version"."""
    if text.upper() != "SIP/2.0":
        if text.upper().startswith("SIP/"):
            raise SipParseError(f"unsupported version {text[:20]!r}")
        raise SipParseError(f"bad SIP version {text[:20]!r}")


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (RFC 3261 §18.3).

    CRLF keep-alives (RFC 5626) between messages are skipped. A message without
    Content-Length, or larger than ``max_size``, breaks the stream: SipParseError.
    """

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._scanned = 0  # bytes already searched for the blank line, minus overlap

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while True:
            if self._scanned == 0:
                self._skip_keepalives()
            blank = BLANK_LINE.search(self._buffer, self._scanned)
            if blank is None:
                if len(self._buffer) > self.max_size:
                    raise SipParseError(f"header section larger than {self.max_size} bytes")
                self._scanned = max(0, len(self._buffer) - 3)
                return out
            self._scanned = blank.start()
            length = _content_length(bytes(self._buffer[: blank.start()]))
            total = blank.end() + length
            if total > self.max_size:
                raise SipParseError(f"message larger than {self.max_size} bytes")
            if len(self._buffer) < total:
                return out
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]
            self._scanned = 0

    @property
    def pending(self) -> bool:
        """Part of a message is buffered (its end has not arrived yet)."""
        return bool(self._buffer.strip(b"\r\n"))

    def _skip_keepalives(self) -> None:
        """CRLF (or bare LF) keep-alives between messages (RFC 5626 §3.5.1)."""
        start = len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))
        if start and self._buffer[start - 1 : start] == b"\r":
            start -= 1  # a CR that may be the first half of a CRLF still on its way
        del self._buffer[:start]


def _content_length(head: bytes) -> int:
    values = []
    for line in LINE_END.split(head)[1:]:
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation, as parse_message reads it
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            values.append(value)
    length = _single_length(values)
    if length is None:
        raise SipParseError("a message on a stream transport needs Content-Length")
    return length


def response_to(
    request: Request, status: int, reason: str | None = None, to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
) -> Response:
    """A response with the request's Via, From, To (plus our tag), Call-ID and CSeq.

    Also, per RFC 3261, Timestamp in a 100 (§8.2.6.1) and Record-Route in 101-299
    responses, which may set up a dialog (§12.1.1).
    """
    out = Headers()
    for via in request.headers.get_all("Via"):
        out.add("Via", via)
    out.add("From", request.headers.get("From") or "")
    to = request.headers.get("To") or ""
    tagged = to_tag and status != 100 and "tag" not in Address.parse(to).params
    if tagged:
        to = f"{to};tag={to_tag}"
    out.add("To", to)
    out.add("Call-ID", request.call_id)
    out.add("CSeq", request.headers.get("CSeq") or "")
    # the same values: what the request has parsed of them is not parsed again
    out.adopt_parsed(request.headers, ("Via", "From", "Call-ID", "CSeq")
                     + (() if tagged else ("To",)))
    if status == 100 and "Timestamp" in request.headers:
        out.add("Timestamp", request.headers.get("Timestamp") or "")
    if 100 < status < 300:
        for route in request.headers.get_all("Record-Route"):
            out.add("Record-Route", route)
    for name, value in headers:
        out.add(name, value)
    return Response(status, reason, out, body)
