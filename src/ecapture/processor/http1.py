"""HTTP/1.x observed from outside: heads by httptools, framing by us.

httptools (llhttp) parses and validates each head; a head it rejects (a
control byte in a value, any byte in a name, an obs-fold, a bare LF: real
peers send and accept these) is read by a lenient reader of our own, every
field byte kept as captured (the comment before _lenient_head says why
no library does it).
What still cannot be framed is skipped to the next start line and counted
as a parser `Lost` on its connection. The body framing is ours
because it depends on the request a response answers (RFC 9112 §6.3): a
response to HEAD, a 1xx/204/304 and a 2xx to CONNECT have no body, and
httptools, which never sees the request, desyncs after a HEAD response.
Requests and responses pair in order (pipelining included). A message ends
by its framing or by the connection's close, never by a timer.

This runs for every captured chunk, so the keep-alive path is kept short: a
head seen before is not parsed again, and a chunk with nothing carried over
is parsed where it is (tests/unit/processor/test_http1_fast_paths.py shows
both give what the general path gives).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from functools import lru_cache

import httptools
import msgspec

from ecapture.events import TlsData
from ecapture.processor.base import BodyBuffer, body_lost
from ecapture.processor.model import (
    ConnectionInfo,
    Headers,
    HttpExchange,
    HttpRequest,
    HttpResponse,
    ProcessorItem,
    Unparsed,
)
from ecapture.processor.sniff import (
    MAX_START_LINE,
    REQUEST_START,
    RESPONSE_START,
    START_MARKER,
    START_TAIL,
)

MAX_HEAD_BYTES = 64 << 10  # a longer head is treated as a desync, not buffered
MAX_UNANSWERED = 32  # requests kept waiting for responses (a one-sided capture never pairs)
MAX_CHUNK_LINE = 4096  # chunk-size line with extensions (RFC 9112 §7.1.1)

_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")


class _Mode(enum.Enum):
    HEAD = enum.auto()
    LENGTH = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()  # the CRLF after a chunk's data
    TRAILERS = enum.auto()
    UNTIL_CLOSE = enum.auto()
    RESYNC = enum.auto()  # skipping to the next start line
    TUNNEL = enum.auto()  # after CONNECT 2xx or 101: no longer HTTP


# Reading an Enum member through its class (`_Mode.HEAD`) costs ~0.13 us on
# CPython 3.11 (measured: EnumType attribute lookup), about ten times a
# global's: the framing code, run several times per event, uses these.
_MODE_HEAD = _Mode.HEAD
_MODE_LENGTH = _Mode.LENGTH
_MODE_CHUNK_SIZE = _Mode.CHUNK_SIZE
_MODE_CHUNK_DATA = _Mode.CHUNK_DATA
_MODE_CHUNK_END = _Mode.CHUNK_END
_MODE_TRAILERS = _Mode.TRAILERS
_MODE_UNTIL_CLOSE = _Mode.UNTIL_CLOSE
_MODE_RESYNC = _Mode.RESYNC
_MODE_TUNNEL = _Mode.TUNNEL


_VERSIONS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1"}


class _Head(msgspec.Struct, frozen=True, gc=False):
    """A parsed head. It is a pure function of the head's bytes and of the
    direction, so the parse of a head seen before is reused (HEAD_CACHE_SIZE)."""

    method: str  # "" for a response
    target: str
    authority: str | None
    status: int  # 0 for a request
    reason: str
    version: str
    headers: Headers
    transfer_encoding: bytes | None
    # what framing needs, worked out once per distinct head
    chunked: bool
    content_length: int | None  # None when absent (or invalid: see bad_length)
    # RFC 9112 §6.3 item 5: differing or non-numeric Content-Length values
    bad_length: bool
    size: int  # bytes of the head, its blank line included


class _HeadReader:
    """The httptools callback object for one head (fed exactly that head):
    the fields which decide framing are picked out as each header passes by."""

    __slots__ = (
        "content_length", "done", "header_list", "host", "reason", "transfer_encoding", "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.header_list: list[tuple[bytes, bytes]] = []
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.host: bytes | None = None
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps trailing whitespace; it is not part of the value
        # (RFC 9110 §5.5).
        value = value.rstrip(b" \t")
        self.header_list.append((name, value))
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            self.content_length = value
        elif size == 17 and name.lower() == b"transfer-encoding":
            # several fields form one list (RFC 9110 §5.3)
            if self.transfer_encoding is None:
                self.transfer_encoding = value
            else:
                self.transfer_encoding += b", " + value
        elif size == 4 and name.lower() == b"host":
            self.host = value

    def on_headers_complete(self) -> None:
        self.done = True


def _parse_head(head: bytes, is_request: bool) -> _Head | None:
    """Parse one head with httptools; None when it is not a valid head."""
    reader = _HeadReader()
    parser: httptools.HttpRequestParser | httptools.HttpResponseParser
    if is_request:
        parser = httptools.HttpRequestParser(reader)
    else:
        parser = httptools.HttpResponseParser(reader)
    # llhttp pauses with an error after a CONNECT or Upgrade head ("Pause
    # on CONNECT/Upgrade"); the head itself parsed when the callback ran,
    # and the framing is ours anyway. (try/except, not contextlib.suppress:
    # building that context manager cost ~0.3 us per head.)
    try:  # noqa: SIM105
        parser.feed_data(head)
    except (httptools.HttpParserUpgrade, httptools.HttpParserError):
        pass
    if not reader.done:
        return _lenient_head(head, is_request)
    version: str = parser.get_http_version()
    if isinstance(parser, httptools.HttpRequestParser):
        method, status = parser.get_method().decode("latin-1"), 0
    else:
        method, status = "", parser.get_status_code()
    host = reader.host
    encoding = reader.transfer_encoding
    length = reader.content_length
    return _Head(
        method=method, target=reader.url.decode("latin-1"),
        authority=host.decode("latin-1") if host is not None else None,
        status=status, reason=reader.reason.decode("latin-1"),
        version=_VERSIONS.get(version) or "HTTP/" + version,
        headers=tuple(reader.header_list), transfer_encoding=encoding,
        chunked=encoding is not None and _transfer_chunked(encoding),
        content_length=int(length) if length is not None and length.isdigit() else None,
        bad_length=length is not None and not length.isdigit(), size=len(head),
    )


# llhttp is strict by default, as a server must be: it rejects a control
# byte (ESC, NUL, DEL...) in a value, any byte outside tchar in a name, a
# bare LF, whitespace before a colon, a repeated or listed Content-Length.
# Its lenient mode (httptools 0.9 `set_dangerous_leniencies`) accepts control
# bytes in values only, and replaces an obs-fold by neither of the spaces
# RFC 9112 §5.2 asks for (it keeps the HTAB); h11 is stricter than llhttp,
# and the stdlib's http.client reads heads from a blocking file, not
# sans-IO. We observe; the peer may well have accepted what these reject
# (nginx's ngx_http_parse_header_line ends a name at CR or LF as at a
# colon, an empty value), so a head llhttp rejects is read by the small
# reader below: every byte of a field kept as captured, framing decided by
# RFC 9112 §6.3.

_TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
_LENIENT_REQUEST_LINE = re.compile(rb"([" + _TCHAR + rb"]+) +(.*?) +HTTP/(1\.[01])", re.DOTALL)
_LENIENT_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: (.*))?", re.DOTALL)
_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head whose lines may end in a bare LF


def _head_lines(data: bytes) -> tuple[list[bytes], int] | None:
    """The lines of the head `data` opens and the head's size; None when it
    has no blank line. A line ends at LF, one CR before it is dropped (RFC
    9112 §2.2); any other byte, a lone CR included, stays in the line."""
    lines: list[bytes] = []
    pos = 0
    while True:
        newline = data.find(b"\n", pos)
        if newline < 0:
            return None
        line = data[pos : newline - 1 if data[newline - 1 : newline] == b"\r" else newline]
        pos = newline + 1
        if not line:
            return lines, pos
        lines.append(line)


def _fields(lines: list[bytes]) -> Headers:
    """Field lines as (name, value), every byte kept but the syntax around them.

    An obs-fold becomes one SP after what the line before kept (RFC 9112
    §5.2; what h11 does); a value loses its surrounding SP/HTAB (RFC 9110
    §5.5). A name keeps whatever precedes its colon (whitespace included:
    RFC 9112 §5.1 lets no server frame by such a field, and a
    whitespace-preceded first line is likewise not folded, §2.2). A line
    without a colon is a name with an empty value, as nginx reads one.
    """
    joined: list[bytes] = []
    for line in lines:
        if (line[0] == 0x20 or line[0] == 0x09) and joined:
            joined[-1] += b" " + line.lstrip(b" \t")
        else:
            joined.append(line)
    fields = []
    for line in joined:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    return tuple(fields)


def _lenient_head(head: bytes, is_request: bool) -> _Head | None:
    """Read a head llhttp rejected; None when its start line is not HTTP/1."""
    found = _head_lines(head)
    if found is None or not found[0]:
        return None
    lines, size = found
    if is_request:
        start = _LENIENT_REQUEST_LINE.fullmatch(lines[0])
        if start is None or not start[2]:
            return None
        method, target, version, status, reason = start[1], start[2], start[3], 0, b""
    else:
        start = _LENIENT_STATUS_LINE.fullmatch(lines[0])
        if start is None:
            return None
        method, target, version = b"", b"", start[1]
        status, reason = int(start[2]), start[3] or b""
    headers = _fields(lines[1:])
    lengths: list[bytes] = []
    encoding = host = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value)
        elif lowered == b"transfer-encoding":
            encoding = value if encoding is None else encoding + b", " + value
        elif lowered == b"host":
            host = value
    content_length, bad_length = _content_length(lengths)
    return _Head(
        method=method.decode("latin-1"), target=target.decode("latin-1"),
        authority=host.decode("latin-1") if host is not None else None,
        status=status, reason=reason.decode("latin-1"),
        version="HTTP/" + version.decode("ascii"), headers=headers,
        transfer_encoding=encoding,
        chunked=encoding is not None and _transfer_chunked(encoding),
        content_length=content_length, bad_length=bad_length, size=size,
    )


def _content_length(values: list[bytes]) -> tuple[int | None, bool]:
    """(length, invalid) of a message's Content-Length fields.

    RFC 9112 §6.3 item 5 and RFC 9110 §8.6: repeated fields or a list are
    one length when every element is the same number; otherwise (differing
    numbers, anything but digits, no number at all) the framing is invalid:
    a server must answer 400 and close, a client must discard the
    response. Either way the peer reads no body; we report the head and
    count what follows it as lost (Http1Parser._unframed).
    """
    if not values:
        return None, False
    numbers = {
        element.strip(b" \t") for value in values for element in value.split(b",")
    } - {b""}  # empty list elements are ignored (RFC 9110 §5.6.1)
    if len(numbers) == 1:
        (number,) = numbers
        if number.isdigit():
            return int(number), False
    return None, True


# Clients and servers repeat their heads byte for byte (a load generator's
# request, a server's response until its Date changes; keep-alive makes every
# one of them a new head to parse), and a parse is ~1-2 us of httptools and
# callbacks. Small heads only: both caches together hold at most ~4 MiB
# (2 x 256 keys of up to 4 KiB, and their parses).
HEAD_CACHE_SIZE = 256
MAX_CACHED_HEAD = 4096


@lru_cache(maxsize=HEAD_CACHE_SIZE)
def _cached_request_head(head: bytes) -> _Head | None:
    return _parse_head(head, True)


@lru_cache(maxsize=HEAD_CACHE_SIZE)
def _cached_response_head(head: bytes) -> _Head | None:
    return _parse_head(head, False)


# The per-message state below is a mutable msgspec Struct rather than a
# slotted class: built in C, ~0.06 us instead of ~0.18 us for an __init__ in
# Python, and each exchange makes three. eq=False keeps identity semantics;
# gc=False is safe as these never form reference cycles.
class _Message(msgspec.Struct, gc=False, eq=False):
    """One request or response being read: its head and its body."""

    head: _Head
    trailers: Headers = ()
    # Most bodies arrive in one piece: that piece is kept as it came
    # (`first`); a second piece moves both to a bounded buffer.
    first: bytes = b""
    body: BodyBuffer | None = None

    def as_request(self) -> HttpRequest:
        head = self.head
        body = self.body
        return HttpRequest(
            method=head.method, target=head.target, authority=head.authority, scheme=None,
            version=head.version, headers=head.headers,
            body=self.first if body is None else bytes(body.data), trailers=self.trailers,
            body_truncated=body is not None and body.dropped > 0,
        )

    def as_response(self, informational: tuple[int, ...]) -> HttpResponse:
        head = self.head
        body = self.body
        return HttpResponse(
            status=head.status, reason=head.reason, version=head.version, headers=head.headers,
            body=self.first if body is None else bytes(body.data), trailers=self.trailers,
            body_truncated=body is not None and body.dropped > 0,
            informational=informational,
        )


class _Exchange(msgspec.Struct, gc=False, eq=False):
    started_ns: int
    request: _Message | None
    response: _Message | None = None
    request_done: bool = False
    response_done: bool = False
    informational: tuple[int, ...] = ()  # 1xx statuses: rare, so no list
    unframed: bool = False  # a body whose length could not be known: never complete


class _Side:
    """One direction: its buffer, framing state and the message it reads."""

    __slots__ = (
        "buffer", "counting", "is_client", "message", "mode", "read_cached_head", "remaining",
        "resync_reason", "skipped",
    )

    def __init__(self, is_client: bool) -> None:
        self.is_client = is_client
        self.read_cached_head = _cached_request_head if is_client else _cached_response_head
        self.buffer = bytearray()
        self.mode = _MODE_HEAD
        self.remaining = 0
        self.message: _Message | None = None
        self.resync_reason = "desync"
        # bytes skipped while resynchronising; `counting` when they are the
        # parser's loss (not a mid-stream start or a gap, reported as such)
        self.counting = False
        self.skipped = 0

    def resync(self, reason: str, counting: bool = False) -> None:
        self.mode = _MODE_RESYNC
        self.resync_reason = reason
        self.buffer.clear()
        self.message = None
        self.remaining = 0
        self.counting = counting
        self.skipped = 0


def _skip_empty_lines(buffer: bytes | bytearray, pos: int) -> int:
    while True:
        if buffer.startswith(b"\r\n", pos):
            pos += 2
        elif buffer.startswith(b"\n", pos):
            pos += 1
        else:
            return pos


def _transfer_chunked(value: bytes) -> bool:
    """chunked must be the final transfer coding (RFC 9112 §6.1)."""
    return value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


class Http1Parser:
    """Both directions of one HTTP/1.x connection, paired into exchanges."""

    def __init__(
        self, info: ConnectionInfo, *, max_body_bytes: int, resync_reason: str | None = None
    ) -> None:
        self.info = info
        self._max_body = max_body_bytes
        self._client = _Side(is_client=True)
        self._server = _Side(is_client=False)
        # exchanges not yet emitted, in request order; the response side
        # answers the first one whose response has not ended
        self._exchanges: deque[_Exchange] = deque()
        self._unanswered: deque[_Exchange] = deque()
        if resync_reason is not None:
            self._client.resync(resync_reason)
            self._server.resync(resync_reason)

    def prime(self, from_client: bool, partial_line: bytes) -> None:
        """Hand over the partial line a mid-stream scan held for one side."""
        side = self._client if from_client else self._server
        if side.mode is _MODE_RESYNC:
            side.buffer += partial_line

    # -- the ConnectionParser interface ---------------------------------------

    def feed(self, event: TlsData, from_client: bool, out: list[ProcessorItem]) -> None:
        side = self._client if from_client else self._server
        mode = side.mode
        if mode is _MODE_TUNNEL:
            out.append(Unparsed(event, "tunnel"))
            return
        data: bytes | bytearray = side.buffer
        if mode is _MODE_RESYNC:
            if not self._resync(side, event.data, event, out, report=True):
                return
        elif data:
            side.buffer += event.data
        else:
            # nothing carried over (the usual case): parse the chunk where it
            # is; only what it leaves unparsed is copied to the buffer
            data = event.data
        while self._parse(side, data, event, out):
            # bytes after the point of desync may hold the next message
            if not self._resync(side, b"", event, out, report=False):
                break
            data = side.buffer
        if event.truncated and event.last_chunk:
            # the kernel copied less than the call moved: bytes are missing
            # right after this chunk
            self.gap(event, out)

    def gap(self, event: TlsData, out: list[ProcessorItem]) -> None:
        self._flush_all(event.timestamp_ns, out)
        if self._client.mode is not _MODE_TUNNEL:
            for side in (self._client, self._server):
                self._report_skipped(side, event.timestamp_ns, out)
                side.resync("desync")

    def finish(self, timestamp_ns: int, closed: bool, out: list[ProcessorItem]) -> None:
        server = self._server
        if closed and server.mode is _MODE_UNTIL_CLOSE and server.message is not None:
            self._response_done(server.message, timestamp_ns, out)
        self._flush_all(timestamp_ns, out)
        for side in (self._client, self._server):
            mode = side.mode
            if mode is _MODE_RESYNC:
                self._report_skipped(side, timestamp_ns, out)
            elif mode is not _MODE_TUNNEL and side.buffer.strip(b"\r\n"):
                # a head (or chunk line) cut by the end: shown nowhere else
                out.append(body_lost(self.info, timestamp_ns, len(side.buffer)))
                side.buffer.clear()

    def _report_skipped(self, side: _Side, timestamp_ns: int, out: list[ProcessorItem]) -> None:
        """The bytes a desync made the parser skip, as one Lost item."""
        if side.counting and side.skipped > 0:
            out.append(body_lost(self.info, timestamp_ns, side.skipped))
        side.counting = False
        side.skipped = 0

    # -- parsing ---------------------------------------------------------------

    def _resync(
        self, side: _Side, data: bytes, event: TlsData, out: list[ProcessorItem], report: bool
    ) -> bool:
        """Skip to the next start line; True when the side is in sync again.

        `side.buffer` holds the last partial line of earlier bytes, so a
        start line split across events is still found. `report` says whether
        this event's skipped bytes still need an Unparsed item.
        """
        buffer = side.buffer
        carried = len(buffer)
        buffer += data
        side.skipped += len(data)
        match = None
        if START_MARKER in buffer:
            pattern = REQUEST_START if side.is_client else RESPONSE_START
            match = pattern.search(buffer)
        if match is None:
            del buffer[: buffer.rfind(b"\n") + 1]
            if len(buffer) > MAX_START_LINE:
                del buffer[:-START_TAIL]  # no line end for long: keep what a start may begin with
            if report:
                out.append(Unparsed(event, side.resync_reason))
            return False
        if report and match.start() > carried:
            out.append(Unparsed(event, side.resync_reason))
        side.skipped -= len(buffer) - match.start()  # these are parsed again
        self._report_skipped(side, event.timestamp_ns, out)
        del buffer[: match.start()]
        side.mode = _MODE_HEAD
        return True

    def _parse(
        self, side: _Side, buffer: bytes | bytearray, event: TlsData, out: list[ProcessorItem]
    ) -> bool:
        """Consume what the side's framing allows of `buffer` (`side.buffer`,
        or the event's bytes when nothing was carried over), keeping the rest
        in `side.buffer`; True after a desync, with `side.buffer` holding the
        bytes from the next line on."""
        pos = 0
        size = len(buffer)
        while pos < size:
            mode = side.mode
            if mode is _MODE_HEAD:
                if buffer[pos] <= 0x0D:  # RFC 9112 §2.2: skip empty lines before a start
                    pos = _skip_empty_lines(buffer, pos)
                end = buffer.find(b"\r\n\r\n", pos) + 4
                if end < 4:
                    # lines may end in a bare LF (RFC 9112 §2.2); when one
                    # ends a head before a CRLF CRLF, llhttp rejects that
                    # head and _lenient_head finds where it really ends
                    blank = _BLANK_LINE.search(buffer, pos)
                    if blank is None:
                        if size - pos > MAX_HEAD_BYTES:
                            return self._desync(side, buffer, pos, event, out)
                        break
                    end = blank.end()
                head = bytes(buffer[pos:end])
                parsed = (
                    side.read_cached_head(head) if len(head) <= MAX_CACHED_HEAD
                    else _parse_head(head, side.is_client)
                )
                if parsed is None:
                    return self._desync(side, buffer, pos, event, out)
                pos += parsed.size
                if side.is_client:
                    framed = self._request_head(side, _Message(parsed), event, out)
                else:
                    framed = self._response_head(side, _Message(parsed), event, out)
                if not framed:
                    return self._unframed(side, buffer, pos, event, out)
            elif mode is _MODE_LENGTH:
                take = min(side.remaining, size - pos)
                self._body(side, buffer, pos, take)
                pos += take
                side.remaining -= take
                if side.remaining == 0:
                    self._message_done(side, event.timestamp_ns, out)
            elif mode is _MODE_CHUNK_SIZE:
                match = _CHUNK_SIZE.match(buffer, pos)
                if match is None:
                    line_end = buffer.find(b"\n", pos)
                    if line_end >= 0 or size - pos > MAX_CHUNK_LINE:
                        return self._desync(side, buffer, pos, event, out)
                    break
                pos = match.end()
                chunk_size = int(match.group(1), 16)
                if chunk_size == 0:
                    side.mode = _MODE_TRAILERS
                else:
                    side.mode = _MODE_CHUNK_DATA
                    side.remaining = chunk_size
            elif mode is _MODE_CHUNK_DATA:
                take = min(side.remaining, size - pos)
                self._body(side, buffer, pos, take)
                pos += take
                side.remaining -= take
                if side.remaining == 0:
                    side.mode = _MODE_CHUNK_END
            elif mode is _MODE_CHUNK_END:
                if size - pos < 2:
                    if buffer[pos] != 0x0D:
                        return self._desync(side, buffer, pos, event, out)
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    return self._desync(side, buffer, pos, event, out)
                pos += 2
                side.mode = _MODE_CHUNK_SIZE
            elif mode is _MODE_TRAILERS:
                if buffer.startswith(b"\r\n", pos):
                    pos += 2
                elif buffer[pos] == 0x0A:  # a bare LF (RFC 9112 §2.2)
                    pos += 1
                elif size - pos < 2:
                    break
                else:
                    # trailer fields have the syntax of header fields (RFC 9112 §7.1.2)
                    found = _head_lines(bytes(buffer[pos : pos + MAX_HEAD_BYTES]))
                    if found is None:
                        if size - pos > MAX_HEAD_BYTES:
                            return self._desync(side, buffer, pos, event, out)
                        break
                    lines, length = found
                    if side.message is not None:
                        side.message.trailers = _fields(lines)
                    pos += length
                self._message_done(side, event.timestamp_ns, out)
            elif mode is _MODE_UNTIL_CLOSE:
                self._body(side, buffer, pos, size - pos)
                pos = size
            else:  # TUNNEL: the head just parsed switched protocols
                out.append(Unparsed(event, "tunnel"))
                side.buffer.clear()
                return False
        if buffer is side.buffer:
            del side.buffer[:pos]
        elif pos < size:
            side.buffer += buffer[pos:]
        return False

    def _body(self, side: _Side, buffer: bytes | bytearray, pos: int, take: int) -> None:
        message = side.message
        if message is None or not take:
            return
        body = message.body
        if body is None:
            if not message.first and take <= self._max_body:
                # the first piece: one copy (none when it is all of the bytes)
                message.first = bytes(buffer[pos : pos + take])
                return
            body = message.body = BodyBuffer(self._max_body)
            body.add(message.first)
            message.first = b""
        # of the buffer, a small copy is cheaper than a memoryview
        if take < 4096:
            body.add(buffer[pos : pos + take])
            return
        with memoryview(buffer) as view:
            body.add(view[pos : pos + take])

    def _desync(
        self, side: _Side, buffer: bytes | bytearray, pos: int, event: TlsData,
        out: list[ProcessorItem],
    ) -> bool:
        """Bytes at `pos` of `buffer` break framing: give up on what is in
        flight and keep the bytes after that line for the resync scan."""
        out.append(Unparsed(event, "desync"))
        self._flush_all(event.timestamp_ns, out)
        line_end = buffer.find(b"\n", pos)
        rest = buffer[line_end + 1 :] if line_end >= 0 else b""
        skipped = len(buffer) - pos
        side.resync("desync", counting=True)
        side.skipped = skipped  # the bad line and what follows, until a start
        side.buffer += rest
        return True

    def _unframed(
        self, side: _Side, buffer: bytes | bytearray, pos: int, event: TlsData,
        out: list[ProcessorItem],
    ) -> bool:
        """The head before `pos` was read but its body cannot be framed (RFC
        9112 §6.3 items 4-5): its exchange was kept (pairing holds: the peer
        answers or closes); the bytes from `pos` to the next start are lost."""
        rest = buffer[pos:]
        if rest:
            out.append(Unparsed(event, "desync"))
        side.resync("desync", counting=True)
        side.skipped = len(rest)
        side.buffer += rest
        return True

    def _request_head(
        self, side: _Side, message: _Message, event: TlsData, out: list[ProcessorItem]
    ) -> bool:
        if len(self._exchanges) >= MAX_UNANSWERED:
            self._emit_oldest_unanswered(event.timestamp_ns, out)
        exchange = _Exchange(event.timestamp_ns, message)
        self._exchanges.append(exchange)
        self._unanswered.append(exchange)
        side.message = message
        head = message.head
        length = head.content_length
        if head.transfer_encoding is not None:
            if not head.chunked:
                # RFC 9112 §6.3 item 4: a request's length cannot be known
                return self._no_framing(side, exchange, event.timestamp_ns, out)
            side.mode = _MODE_CHUNK_SIZE
        elif head.bad_length:  # RFC 9112 §6.3 item 5
            return self._no_framing(side, exchange, event.timestamp_ns, out)
        elif length:  # neither None nor 0
            side.mode = _MODE_LENGTH
            side.remaining = length
        else:  # no body (RFC 9112 §6.3 item 7); what _message_done does, known exchange
            side.message = None
            exchange.request_done = True
            if self._exchanges[0].response_done:  # else _emit_ready has nothing to emit
                self._emit_ready(event.timestamp_ns, out)
        return True

    def _response_head(
        self, side: _Side, message: _Message, event: TlsData, out: list[ProcessorItem]
    ) -> bool:
        if self._unanswered:
            exchange = self._unanswered[0]
        else:  # joined mid-way or after a gap: a response without its request
            exchange = _Exchange(event.timestamp_ns, None)
            exchange.request_done = True
            self._exchanges.append(exchange)
            self._unanswered.append(exchange)
        status = message.head.status
        if 100 <= status < 200 and status != 101:
            exchange.informational += (status,)  # interim: the final one follows
            return True
        exchange.response = message
        side.message = message
        method = exchange.request.head.method if exchange.request is not None else ""
        tunnel = status == 101 or (method == "CONNECT" and 200 <= status < 300)
        # RFC 9112 §6.3 items 1-2: these responses have no body
        if method == "HEAD" or status in (204, 304) or tunnel:
            self._message_done(side, event.timestamp_ns, out)
            if tunnel:
                self._client.mode = _MODE_TUNNEL
                self._server.mode = _MODE_TUNNEL
                self._client.buffer.clear()
            return True
        head = message.head
        length = head.content_length
        if head.chunked:
            side.mode = _MODE_CHUNK_SIZE
        elif head.transfer_encoding is None and length is not None:
            side.remaining = length
            if length == 0:
                self._message_done(side, event.timestamp_ns, out)
            else:
                side.mode = _MODE_LENGTH
        elif head.transfer_encoding is None and head.bad_length:  # RFC 9112 §6.3 item 5
            return self._no_framing(side, exchange, event.timestamp_ns, out)
        else:
            side.mode = _MODE_UNTIL_CLOSE  # RFC 9112 §6.3 item 8
        return True

    def _no_framing(
        self, side: _Side, exchange: _Exchange, timestamp_ns: int, out: list[ProcessorItem]
    ) -> bool:
        """The message just read has a head but no knowable body: it ends
        here, its exchange is marked incomplete; False for the caller."""
        exchange.unframed = True
        self._message_done(side, timestamp_ns, out)
        return False

    # -- pairing ---------------------------------------------------------------

    def _message_done(self, side: _Side, timestamp_ns: int, out: list[ProcessorItem]) -> None:
        message = side.message
        side.message = None
        if side.mode is not _MODE_TUNNEL:
            side.mode = _MODE_HEAD
        if message is None:
            return
        if side.is_client:
            # the request just read is almost always the newest exchange
            for exchange in reversed(self._exchanges):
                if exchange.request is message:
                    exchange.request_done = True
                    break
        else:  # _response_done, side.message already cleared
            unanswered = self._unanswered
            if unanswered and unanswered[0].response is message:
                unanswered.popleft().response_done = True
        self._emit_ready(timestamp_ns, out)

    def _response_done(
        self, message: _Message, timestamp_ns: int, out: list[ProcessorItem]
    ) -> None:
        if self._unanswered and self._unanswered[0].response is message:
            self._unanswered.popleft().response_done = True
        self._server.message = None
        self._emit_ready(timestamp_ns, out)

    def _emit_ready(self, timestamp_ns: int, out: list[ProcessorItem]) -> None:
        exchanges = self._exchanges
        while exchanges:
            exchange = exchanges[0]
            if not (exchange.request_done and exchange.response_done):
                return
            exchanges.popleft()
            self._emit(
                exchange, timestamp_ns, exchange.request is not None and not exchange.unframed, out
            )

    def _emit_oldest_unanswered(self, timestamp_ns: int, out: list[ProcessorItem]) -> None:
        """Bound memory when responses never come: give the oldest up.

        Its response, if it still comes, pairs with the next request: an
        observer cannot tell, so pairing is resynchronised as after a gap.
        """
        exchange = self._exchanges.popleft()
        if self._unanswered and self._unanswered[0] is exchange:
            self._unanswered.popleft()
        if self._server.message is not None and exchange.response is self._server.message:
            self._server.message = None
        self._emit(exchange, timestamp_ns, False, out)

    def _flush_all(self, timestamp_ns: int, out: list[ProcessorItem]) -> None:
        """Emit every exchange in flight as incomplete."""
        while self._exchanges:
            self._emit(self._exchanges.popleft(), timestamp_ns, False, out)
        self._unanswered.clear()
        # a side in the middle of a body keeps its framing but no longer
        # keeps the bytes: they belong to an exchange already emitted
        self._client.message = None
        self._server.message = None

    def _emit(
        self, exchange: _Exchange, timestamp_ns: int, complete: bool, out: list[ProcessorItem]
    ) -> None:
        request = exchange.request
        response = exchange.response
        out.append(HttpExchange(
            connection=self.info,
            request=request.as_request() if request is not None else None,
            response=response.as_response(exchange.informational) if response is not None
            else None,
            started_ns=exchange.started_ns, finished_ns=timestamp_ns, complete=complete,
        ))
        if (request is None or request.body is None) and (
            response is None or response.body is None
        ):
            return  # no body buffer, so nothing dropped: the common case, no loop
        for message in (request, response):
            if message is not None and message.body is not None and message.body.dropped:
                out.append(body_lost(self.info, timestamp_ns, message.body.dropped))
