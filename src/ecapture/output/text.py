"""Readable text for a terminal or a log file.

One block per HTTP exchange, a raw block per non-HTTP chunk (`Unparsed`),
a warning block per loss, one line per closed connection. Raw TlsData is
not printed here: the tracker hands non-HTTP bytes over as Unparsed.
Every byte that came from the traced program is escaped before it reaches
the terminal (an ESC in a payload must not drive the user's terminal).
Colour is plain ANSI, decided by the caller; rich costs ~140 µs a line
(docs/performance.md#per-event-costs), too much per event.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo

from ecapture.events import ConnClose, Endpoint, Lost, TlsData
from ecapture.output.base import CutCount, Sink, unrenderable
from ecapture.output.content import exchange_url, header_value, view_body
from ecapture.output.render import TEXT_RENDERERS, text_renderer
from ecapture.processor.model import (
    GrpcMessage,
    Headers,
    HttpExchange,
    HttpRequest,
    HttpResponse,
    Unparsed,
)

HEX_BYTES_PER_LINE = 16
# Rendered header blocks kept per marker (heads repeat across a connection's
# exchanges); more distinct heads empty the cache, bigger blocks are not
# kept: ~2 MiB per marker with the keys, at most.
MAX_CACHED_HEADS = 512
MAX_CACHED_HEAD_BYTES = 2048


def _escape_table() -> dict[int, str]:
    # C0 controls except TAB and LF, DEL, C1 controls, and the bidi
    # overrides/isolates (Unicode TR9) that can reorder what the user reads.
    escaped = [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]
    table = {code: f"\\x{code:02x}" for code in escaped}
    for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        table[code] = f"\\u{code:04x}"
    return table


_ESCAPES = _escape_table()
# Any character escape_str changes; CR is one of them, so text without a
# match has no CRLF either and comes back as it is (one regex scan costs a
# fraction of a translate through a dict).
_NEEDS_ESCAPE = re.compile("[" + "".join(re.escape(chr(code)) for code in sorted(_ESCAPES)) + "]")


def escape_str(text: str) -> str:
    """Text with every unprintable character as \\xNN; CRLF as a line break."""
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return text.replace("\r\n", "\n").translate(_ESCAPES)


def escape_text(data: bytes) -> str:
    """Bytes as text: UTF-8 where valid, invalid bytes as \\xNN, then escape_str."""
    return escape_str(data.decode("utf-8", errors="backslashreplace"))


def _printable(byte: int) -> str:
    return chr(byte) if 0x20 <= byte < 0x7F else "."


def hex_dump(data: bytes) -> str:
    """hexdump -C layout: offset, 16 bytes in two groups of 8, ASCII column."""
    lines = []
    for start in range(0, len(data), HEX_BYTES_PER_LINE):
        row = data[start:start + HEX_BYTES_PER_LINE]
        left = " ".join(f"{byte:02x}" for byte in row[:8])
        right = " ".join(f"{byte:02x}" for byte in row[8:])
        ascii_column = "".join(_printable(byte) for byte in row)
        lines.append(f"{start:08x}  {left:<23}  {right:<23}  |{ascii_column}|")
    return "\n".join(lines)


class Palette:
    """ANSI SGR codes (ECMA-48 §8.3.117), or empty strings without colour."""

    __slots__ = ("bad", "bold", "dim", "good", "request", "reset", "warn")

    def __init__(self, enabled: bool) -> None:
        def code(sgr: str) -> str:
            return f"\x1b[{sgr}m" if enabled else ""

        self.bold = code("1")
        self.dim = code("2")
        self.request = code("36")  # cyan
        self.good = code("32")  # green
        self.bad = code("31")  # red
        self.warn = code("33")  # yellow
        self.reset = code("0")


def _endpoint(endpoint: Endpoint | None) -> str:
    return "?" if endpoint is None else str(endpoint)


class TextWriter:
    def __init__(
        self, module: str, sink: Sink, *, tsize: int = 0, hex_dump: bool = False,
        color: bool = False, timezone: tzinfo | None = None,
    ) -> None:
        self.module = module
        self.cut = CutCount()
        self._sink = sink
        self._tsize = tsize
        self._hex = hex_dump
        self._colors = Palette(color)
        self._timezone = timezone  # None = local time
        self._pending: list[str] = []
        self._closed = False
        self._clock_second = -1  # the second whose "%H:%M:%S" text is kept
        self._clock_text = ""
        # marker -> head -> (its rendered lines, its Content-Encoding or None)
        self._header_blocks: dict[str, dict[Headers, tuple[str, str | None]]] = {}

    # -- items -----------------------------------------------------------

    def write(self, item: object) -> None:
        render = TEXT_RENDERERS.find(type(item))
        if render is None:
            unrenderable(self, item)
            return
        text = render(self, item)
        if text:
            self._pending.append(text)

    def flush(self) -> None:
        if self._pending:
            self._sink.write("".join(self._pending).encode("utf-8"))
            self._pending.clear()
        self._sink.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush()

    # -- formatting ------------------------------------------------------

    def time_text(self, timestamp_ns: int) -> str:
        """HH:MM:SS.micro in the writer's time zone (for renderers of other modules)."""
        return self._time(timestamp_ns)

    @property
    def colors(self) -> Palette:
        return self._colors

    def _time(self, timestamp_ns: int) -> str:
        seconds, nanoseconds = divmod(timestamp_ns, 1_000_000_000)
        if seconds != self._clock_second:  # datetime costs ~1 µs; items come in bursts
            moment = datetime.fromtimestamp(seconds, self._timezone)
            self._clock_text = f"{moment:%H:%M:%S}"
            self._clock_second = seconds
        return f"{self._clock_text}.{nanoseconds // 1000:06d}"

    def _cut_note(self, cut_bytes: int) -> str:
        self.cut.add(cut_bytes)
        return f"... {cut_bytes} more bytes not shown (-t {self._tsize})\n"

    def _payload(self, data: bytes, force_hex: bool = False, text: str | None = None) -> str:
        """`text`, when given, is `data` already decoded as UTF-8."""
        if not data:
            return ""
        if self._hex or force_hex:
            return hex_dump(data) + "\n"
        text = escape_text(data) if text is None else escape_str(text)
        return text if text.endswith("\n") else text + "\n"

    def _unparsed(self, item: Unparsed) -> str:
        event = item.event
        colors = self._colors
        size = f"{len(event.data)} bytes"
        if event.offset or len(event.data) != event.call_len:
            size += f" (offset {event.offset} of a {event.call_len}-byte call)"
        head = (
            f"{colors.bold}{self._time(event.timestamp_ns)} {event.comm} pid {event.pid} "
            f"fd {event.fd} conn {event.conn_id} {event.direction.label} {_endpoint(event.src)} → "
            f"{_endpoint(event.dst)} {size} [{item.reason}]{colors.reset}\n"
        )
        parts = [head]
        if event.truncated:
            parts.append(f"{colors.warn}(the kernel copied less than the call moved: "
                         f"see the loss report){colors.reset}\n")
        data = event.data
        cut = 0
        if self._tsize and len(data) > self._tsize:
            cut = len(data) - self._tsize
            data = data[:self._tsize]
        parts.append(self._payload(data))
        if cut:
            parts.append(self._cut_note(cut))
        parts.append("\n")
        return "".join(parts)

    def _headers(self, marker: str, headers: Headers) -> tuple[str, str | None]:
        """The head's lines after `marker`, and its Content-Encoding; cached."""
        blocks = self._header_blocks.get(marker)
        if blocks is None:
            blocks = self._header_blocks[marker] = {}
        entry = blocks.get(headers)
        if entry is None:
            entry = (
                "".join(f"{marker} {escape_text(name)}: {escape_text(value)}\n"
                        for name, value in headers),
                header_value(headers, b"content-encoding"),
            )
            if len(entry[0]) <= MAX_CACHED_HEAD_BYTES:  # never shorter than the head
                if len(blocks) >= MAX_CACHED_HEADS:
                    blocks.clear()
                blocks[headers] = entry
        return entry

    def _body(self, message: HttpRequest | HttpResponse, encoding: str | None) -> str:
        """`encoding` is the message's Content-Encoding (None when absent)."""
        body = message.body
        if not body:
            return ""
        parts = []
        cut_bytes = 0
        if encoding is None:  # what view_body does without a coding
            shown = body
            if self._tsize and len(body) > self._tsize:
                shown = body[:self._tsize]
                cut_bytes = len(body) - self._tsize
        else:
            view = view_body(message, self._tsize)
            shown, cut_bytes = view.shown, view.cut_bytes
            if view.decoded:
                parts.append(f"{self._colors.dim}(decoded: {view.full_len} bytes from "
                             f"{len(body)} on the wire){self._colors.reset}\n")
        try:
            parts.append(self._payload(shown, text=shown.decode("utf-8")))
        except UnicodeDecodeError:
            parts.append(self._payload(shown, force_hex=True))
        if cut_bytes:
            parts.append(self._cut_note(cut_bytes))
        if message.body_truncated:
            parts.append(f"{self._colors.warn}(body cut short: longer than the parser "
                         f"keeps){self._colors.reset}\n")
        return "".join(parts)

    def _grpc(self, label: str, messages: tuple[GrpcMessage, ...]) -> str:
        parts = []
        for number, message in enumerate(messages, 1):
            data = message.data if message.decoded is None else message.decoded
            state = "compressed" if message.compressed else "uncompressed"
            if message.compressed and message.decoded is not None:
                state = f"decompressed from {len(message.data)} bytes"
            parts.append(f"  gRPC {label} message {number}: {len(data)} bytes ({state})\n")
            shown = data
            cut = 0
            if self._tsize and len(data) > self._tsize:
                cut = len(data) - self._tsize
                shown = data[:self._tsize]
            parts.append(self._payload(shown, force_hex=True))
            if cut:
                parts.append(self._cut_note(cut))
        return "".join(parts)

    def _exchange(self, exchange: HttpExchange) -> str:
        colors = self._colors
        connection = exchange.connection
        request = exchange.request
        response = exchange.response
        version = request.version if request is not None else (
            response.version if response is not None else "HTTP"
        )
        stream = f" stream {exchange.stream_id}" if exchange.stream_id is not None else ""
        duration_ms = (exchange.finished_ns - exchange.started_ns) / 1e6
        state = "" if exchange.complete else " [incomplete]"
        parts = [
            f"{colors.bold}{self._time(exchange.started_ns)} {connection.comm} "
            f"pid {connection.pid} fd {connection.fd} conn {connection.conn_id} "
            f"{_endpoint(connection.client)} → "
            f"{_endpoint(connection.server)} {version}{stream} {duration_ms:.3f} ms"
            f"{state}{colors.reset}\n"
        ]
        if request is None:
            parts.append(f"{colors.dim}> (request not seen){colors.reset}\n")
        else:
            parts.append(f"{colors.request}> {escape_str(request.method)} "
                         f"{escape_str(exchange_url(request))} "
                         f"{request.version}{colors.reset}\n")
            parts.append(self._message(">", request))
        parts.append(self._grpc("request", exchange.grpc_request))
        if response is None:
            parts.append(f"{colors.dim}< (no response){colors.reset}\n")
        else:
            status_color = colors.bad if response.status >= 400 else colors.good
            parts.append(f"{status_color}< {response.version} {response.status} "
                         f"{escape_str(response.reason)}{colors.reset}\n")
            parts.append(self._message("<", response))
        parts.append(self._grpc("response", exchange.grpc_response))
        parts.append("\n")
        return "".join(parts)

    def _message(self, marker: str, message: HttpRequest | HttpResponse) -> str:
        """Headers, the blank line, the body and trailers of one side."""
        head, encoding = self._headers(marker, message.headers)
        trailers = (self._headers(f"{marker} (trailer)", message.trailers)[0]
                    if message.trailers else "")
        return f"{head}{marker}\n{self._body(message, encoding)}{trailers}"

    def _lost(self, item: Lost) -> str:
        colors = self._colors
        where = []
        if item.pid is not None:
            where.append(f"pid {item.pid}")
        if item.comm is not None:
            where.append(item.comm)
        if item.fd is not None:
            where.append(f"fd {item.fd}")
        if item.conn_id is not None:
            where.append(f"conn {item.conn_id}")
        scope = " ".join(where) if where else "all connections"
        return (
            f"{colors.warn}!! {self._time(item.timestamp_ns)} LOST {item.records} records "
            f"({item.bytes} bytes), reason {item.reason.value}, {scope}{colors.reset}\n\n"
        )

    def _close(self, item: ConnClose) -> str:
        lost = ""
        if item.lost_records:
            lost = f", {item.lost_records} records ({item.lost_bytes} bytes) lost before"
        return (
            f"{self._colors.dim}{self._time(item.timestamp_ns)} {item.comm} pid {item.pid} "
            f"fd {item.fd} conn {item.conn_id} closed ({item.cause.value}){lost}"
            f"{self._colors.reset}\n"
        )


# The item types of the TLS module; other modules register theirs in their files.
@text_renderer(HttpExchange)
def _render_exchange(writer: TextWriter, item: HttpExchange) -> str:
    return writer._exchange(item)


@text_renderer(Unparsed)
def _render_unparsed(writer: TextWriter, item: Unparsed) -> str:
    return writer._unparsed(item)


@text_renderer(Lost)
def _render_lost(writer: TextWriter, item: Lost) -> str:
    return writer._lost(item)


@text_renderer(ConnClose)
def _render_close(writer: TextWriter, item: ConnClose) -> str:
    return writer._close(item)


@text_renderer(TlsData)
def _render_data(writer: TextWriter, item: TlsData) -> str:
    return ""  # shown through Unparsed or HttpExchange
