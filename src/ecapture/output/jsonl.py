"""`--format json`: one JSON object per line, keys fixed by the JSON contract (README.md).

The hot path of the benchmark: a data event becomes one msgspec Struct
(bytes fields are written as base64 by msgspec itself) and the batch is
encoded with one `encode_lines` call at `flush()`, which measured about
twice as fast as encoding item by item (bench/micro_output.py).
An HTTP event reuses what repeats between exchanges: a head's header pairs
are encoded to JSON once and embedded as `msgspec.Raw` (the same bytes the
encoder would write for the list), and a connection's endpoint texts are
made once. tests/unit/output/test_output_golden.py pins the bytes.
Every key is always present (null when unknown), so `jq` filters and
schemas need no existence tests.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ecapture.events import ConnClose, Direction, Endpoint, Lost, TlsData
from ecapture.output.base import CutCount, Sink, unrenderable
from ecapture.output.content import (
    DEFAULT_SCHEME,
    exchange_url,
    header_pairs,
    header_value,
    view_body,
)
from ecapture.output.render import JSON_RENDERERS, json_renderer
from ecapture.processor.model import (
    ConnectionInfo,
    GrpcMessage,
    Headers,
    HttpExchange,
    HttpRequest,
    HttpResponse,
    Unparsed,
)

# Encode the pending items when this many are waiting, or when their
# payloads reach this size: bounds memory between flushes of large batches
# (and a few-MiB output buffer encoded at once measured slower).
MAX_PENDING = 4096
MAX_PENDING_PAYLOAD_BYTES = 1 << 20
MAX_CACHED_ENDPOINTS = 4096
# Heads (header tuples) and connections whose output text is kept; more
# distinct ones empty the cache (a head that never repeats costs one extra
# encode, ~0.3 µs). Only heads whose JSON has up to MAX_CACHED_HEAD_BYTES are
# kept (the JSON is never shorter than the head): ~2 MiB with the keys.
MAX_CACHED_HEADS = 512
MAX_CACHED_HEAD_BYTES = 2048
MAX_CACHED_CONNECTIONS = 4096
_SEND = Direction.SEND


class DataEvent(msgspec.Struct):
    type: Literal["data"]
    module: str
    ts: int
    pid: int
    tid: int
    comm: str
    uid: int | None
    fd: int
    conn_id: int  # unique for the capture
    ssl: int  # the SSL* in the process (reused by allocators: not an id)
    socket_cookie: int | None  # SO_COOKIE of its socket, null when not known
    direction: str
    src: str | None
    dst: str | None
    len: int  # the whole call's length (TlsData.call_len)
    offset: int  # this chunk's offset within the call
    truncated: bool
    payload_b64: bytes


class CloseEvent(msgspec.Struct):
    type: Literal["close"]
    module: str
    ts: int
    pid: int
    tid: int | None  # None: the close was seen outside the process (softirq)
    comm: str
    uid: int | None
    fd: int
    conn_id: int
    ssl: int
    socket_cookie: int | None
    cause: str  # "tcp", "ssl_free", "ssl_clear", "ssl_moved"


class LostEvent(msgspec.Struct):
    type: Literal["lost"]
    module: str
    ts: int
    pid: int | None
    tid: int | None
    comm: str | None
    uid: int | None
    reason: str
    records: int
    # Renamed so the class body does not shadow the builtin `bytes`.
    byte_count: int = msgspec.field(name="bytes")
    conn_id: int | None = None
    fd: int | None = None


class HttpBody(msgspec.Struct):
    headers: msgspec.Raw  # [[name, value], ...], latin-1 text, pre-encoded
    body: str | None  # the decoded body when it is UTF-8 text
    body_b64: bytes | None  # otherwise its bytes
    body_len: int  # bytes on the wire (de-chunked, still content-encoded)
    body_truncated: bool
    trailers: msgspec.Raw  # as headers


class HttpResponseBody(HttpBody):
    status: int


class GrpcMessageEvent(msgspec.Struct):
    compressed: bool  # the message's compressed flag on the wire
    len: int  # bytes on the wire
    decoded: bool  # data_b64 holds the decompressed message
    data_b64: bytes


class GrpcMessages(msgspec.Struct):
    request: list[GrpcMessageEvent]
    response: list[GrpcMessageEvent]


class HttpEvent(msgspec.Struct):
    type: Literal["http"]
    module: str
    ts: int
    pid: int
    tid: int | None
    comm: str
    uid: int | None
    fd: int
    conn_id: int
    src: str | None  # the client
    dst: str | None  # the server
    version: str | None
    stream_id: int | None
    method: str | None
    url: str | None
    authority: str | None
    path: str | None
    status: int | None
    reason: str | None
    duration_ns: int
    complete: bool
    request: HttpBody | None
    response: HttpResponseBody | None
    grpc: GrpcMessages | None


JsonEvent = DataEvent | CloseEvent | LostEvent | HttpEvent
_BodyFields = tuple[msgspec.Raw, str | None, bytes | None, int, bool, msgspec.Raw]
_NO_PAIRS = msgspec.Raw(b"[]")  # what an empty header list encodes to


class JsonLinesWriter:
    """Formats items as JSON lines into `sink`; Unparsed items are skipped
    (their bytes already went out as "data" events)."""

    def __init__(self, module: str, sink: Sink, *, tsize: int = 0) -> None:
        self.module = module
        self.cut = CutCount()
        self._sink = sink
        self._tsize = tsize
        self._pending: list[msgspec.Struct] = []
        self._endpoint_texts: dict[Endpoint, str] = {}
        # head -> (its pairs as JSON, its Content-Encoding or None)
        self._heads: dict[Headers, tuple[msgspec.Raw, str | None]] = {}
        self._connection_texts: dict[ConnectionInfo, tuple[str | None, str | None]] = {}
        self._pending_payload = 0  # payload bytes in self._pending
        self._encoder = msgspec.json.Encoder()
        self._closed = False

    @property
    def sink(self) -> Sink:
        """Where the lines go (the native path writes its own lines there)."""
        return self._sink

    def write(self, item: object) -> None:
        event: msgspec.Struct | None
        if type(item) is TlsData:  # the hot paths first, then the registry
            event = self._data_event(item)
        elif type(item) is HttpExchange:
            event = self._http_event(item)
        else:
            render = JSON_RENDERERS.find(type(item))
            if render is None:
                unrenderable(self, item)
                return
            event = render(self, item)
            if event is None:
                return
        pending = self._pending
        pending.append(event)
        if len(pending) >= MAX_PENDING or self._pending_payload >= MAX_PENDING_PAYLOAD_BYTES:
            self._encode_pending()

    def _data_event(self, item: TlsData) -> DataEvent:
        # Hot path: plain attribute reads and `is` tests; the properties
        # TlsData.src/.dst and Direction.label cost ~0.1 µs each here.
        data = item.data
        truncated = item.truncated
        tsize = self._tsize
        if tsize and len(data) > tsize:
            self.cut.add(len(data) - tsize)
            data = data[:tsize]
            truncated = True
        self._pending_payload += len(data)
        if item.direction is _SEND:
            direction, src, dst = "send", item.local, item.remote
        else:
            direction, src, dst = "recv", item.remote, item.local
        texts = self._endpoint_texts  # str() is never empty, so `or` means "not cached"
        return DataEvent(
            "data", self.module, item.timestamp_ns, item.pid, item.tid, item.comm, item.uid,
            item.fd, item.conn_id, item.ssl, item.socket_cookie, direction,
            None if src is None else texts.get(src) or self._endpoint_text(src),
            None if dst is None else texts.get(dst) or self._endpoint_text(dst),
            item.call_len, item.offset, truncated, data,
        )

    def _endpoint_text(self, endpoint: Endpoint) -> str:
        """str(endpoint), cached by the endpoint itself (a frozen msgspec Struct
        hashes in C: half the cost of building an (ip, port) key); __str__
        runs Python code."""
        text = self._endpoint_texts.get(endpoint)
        if text is None:
            if len(self._endpoint_texts) >= MAX_CACHED_ENDPOINTS:
                self._endpoint_texts.clear()
            text = self._endpoint_texts[endpoint] = str(endpoint)
        return text

    def _head(self, headers: Headers) -> tuple[msgspec.Raw, str | None]:
        """The header pairs as encoded JSON and the Content-Encoding value,
        cached by the head's bytes: one decode and encode per distinct head
        (per pair they cost ~1.2 µs a head, bench/micro_output.py)."""
        entry = self._heads.get(headers)
        if entry is None:
            encoded = self._encoder.encode(header_pairs(headers))
            entry = (msgspec.Raw(encoded), header_value(headers, b"content-encoding"))
            if len(encoded) <= MAX_CACHED_HEAD_BYTES:
                if len(self._heads) >= MAX_CACHED_HEADS:
                    self._heads.clear()
                self._heads[headers] = entry
        return entry

    def _body_fields(self, message: HttpRequest | HttpResponse) -> _BodyFields:
        """HttpBody's fields, in order."""
        head = message.headers
        headers, encoding = self._heads.get(head) or self._head(head)
        body = message.body
        truncated = message.body_truncated
        if encoding is not None and body:
            # A content coding: view_body undoes it when it can (rare path).
            view = view_body(message, self._tsize)
            shown = view.shown
            if view.cut_bytes:
                self.cut.add(view.cut_bytes)
                truncated = True
        else:  # what view_body does without a coding, minus its BodyView
            shown = body
            tsize = self._tsize
            if tsize and len(body) > tsize:
                self.cut.add(len(body) - tsize)
                shown = body[:tsize]
                truncated = True
        trailers = message.trailers
        trailer_pairs = self._head(trailers)[0] if trailers else _NO_PAIRS
        try:
            return headers, shown.decode("utf-8"), None, len(body), truncated, trailer_pairs
        except UnicodeDecodeError:
            return headers, None, shown, len(body), truncated, trailer_pairs

    def _grpc(self, messages: tuple[GrpcMessage, ...]) -> list[GrpcMessageEvent]:
        return [
            GrpcMessageEvent(
                message.compressed, len(message.data), message.decoded is not None,
                message.data if message.decoded is None else message.decoded,
            )
            for message in messages
        ]

    def _connection_text(self, connection: ConnectionInfo) -> tuple[str | None, str | None]:
        """(client, server) as text, made once per connection."""
        texts = self._connection_texts.get(connection)
        if texts is None:
            if len(self._connection_texts) >= MAX_CACHED_CONNECTIONS:
                self._connection_texts.clear()
            client, server = connection.client, connection.server
            texts = self._connection_texts[connection] = (
                None if client is None else self._endpoint_text(client),
                None if server is None else self._endpoint_text(server),
            )
        return texts

    def _http_event(self, exchange: HttpExchange) -> HttpEvent:
        connection = exchange.connection
        request = exchange.request
        response = exchange.response
        src, dst = self._connection_texts.get(connection) or self._connection_text(connection)
        grpc = None
        if exchange.grpc_request or exchange.grpc_response:
            grpc = GrpcMessages(
                self._grpc(exchange.grpc_request), self._grpc(exchange.grpc_response)
            )
        if request is None:
            return HttpEvent(
                "http", self.module, exchange.started_ns, connection.pid, None,
                connection.comm, connection.uid, connection.fd, connection.conn_id, src, dst,
                None if response is None else response.version, exchange.stream_id,
                None, None, None, None,
                None if response is None else response.status,
                None if response is None else response.reason,
                exchange.finished_ns - exchange.started_ns, exchange.complete, None,
                None if response is None else HttpResponseBody(
                    *self._body_fields(response), response.status),
                grpc,
            )
        target, authority = request.target, request.authority
        if authority is not None and target[:1] == "/" and request.method != "CONNECT":
            url = f"{request.scheme or DEFAULT_SCHEME}://{authority}{target}"  # origin-form
        else:
            url = exchange_url(request)
        return HttpEvent(
            "http", self.module, exchange.started_ns, connection.pid, None, connection.comm,
            connection.uid, connection.fd, connection.conn_id, src, dst,
            request.version, exchange.stream_id, request.method, url, authority, target,
            None if response is None else response.status,
            None if response is None else response.reason,
            exchange.finished_ns - exchange.started_ns, exchange.complete,
            HttpBody(*self._body_fields(request)),
            None if response is None else HttpResponseBody(
                *self._body_fields(response), response.status),
            grpc,
        )

    def _encode_pending(self) -> None:
        if self._pending:
            self._sink.write(self._encoder.encode_lines(self._pending))
            self._pending.clear()
            self._pending_payload = 0

    def flush(self) -> None:
        self._encode_pending()
        self._sink.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush()


# The item types of the TLS module; other modules register theirs in their files.
@json_renderer(TlsData)
def _render_data(writer: JsonLinesWriter, item: TlsData) -> DataEvent:
    return writer._data_event(item)


@json_renderer(HttpExchange)
def _render_http(writer: JsonLinesWriter, item: HttpExchange) -> HttpEvent:
    return writer._http_event(item)


@json_renderer(Unparsed)
def _render_unparsed(writer: JsonLinesWriter, item: Unparsed) -> None:
    return None  # its bytes already went out as "data" events


@json_renderer(ConnClose)
def _render_close(writer: JsonLinesWriter, item: ConnClose) -> CloseEvent:
    return CloseEvent(
        "close", writer.module, item.timestamp_ns, item.pid, item.tid, item.comm,
        item.uid, item.fd, item.conn_id, item.ssl, item.socket_cookie, item.cause.value,
    )


@json_renderer(Lost)
def _render_lost(writer: JsonLinesWriter, item: Lost) -> LostEvent:
    return LostEvent(
        "lost", writer.module, item.timestamp_ns, item.pid, None, item.comm, None,
        item.reason.value, item.records, item.bytes, item.conn_id, item.fd,
    )
