"""What the processor hands to the outputs: parsed messages and pass-through.

Writers (src/ecapture/output/) format these; parsers (this package) build
them. Header names and values stay bytes: raw bytes are the truth. Frozen
msgspec Structs rather than frozen dataclasses: one exchange builds three of
them per request, and a frozen dataclass costs ~1 us each to build.
"""

from __future__ import annotations

import msgspec

from ecapture.events import Endpoint, Lost, TlsData

Headers = tuple[tuple[bytes, bytes], ...]


class ConnectionInfo(msgspec.Struct, frozen=True, gc=False):
    """Who owns a connection, as the first event of the connection told it."""

    pid: int
    comm: str
    uid: int
    fd: int
    conn_id: int
    client: Endpoint | None  # the side that sent the request
    server: Endpoint | None


class GrpcMessage(msgspec.Struct, frozen=True, gc=False):
    """One length-prefixed gRPC message (gRPC over HTTP/2, PROTOCOL-HTTP2.md)."""

    compressed: bool
    data: bytes  # as on the wire (still compressed when `compressed`)
    decoded: bytes | None = None  # decompressed with grpc-encoding, when it could be


class HttpRequest(msgspec.Struct, frozen=True, gc=False):
    method: str
    target: str  # request-target (path and query) or :path
    authority: str | None  # Host header or :authority
    scheme: str | None  # :scheme for HTTP/2, None for HTTP/1
    version: str  # "HTTP/1.0", "HTTP/1.1", "HTTP/2"
    headers: Headers
    body: bytes  # as on the wire, de-chunked but still content-encoded
    trailers: Headers = ()
    body_truncated: bool = False  # body larger than the parser keeps


class HttpResponse(msgspec.Struct, frozen=True, gc=False):
    status: int
    reason: str
    version: str
    headers: Headers
    body: bytes
    trailers: Headers = ()
    body_truncated: bool = False
    informational: tuple[int, ...] = ()  # 1xx statuses seen before this one


class HttpExchange(msgspec.Struct, frozen=True, gc=False):
    """A request and its response on one connection (one stream for HTTP/2).

    Either side may be None: a stream joined mid-way has no request, a
    connection closed before the answer has no response.
    """

    connection: ConnectionInfo
    request: HttpRequest | None
    response: HttpResponse | None
    started_ns: int
    finished_ns: int
    stream_id: int | None = None  # HTTP/2 only
    grpc_request: tuple[GrpcMessage, ...] = ()
    grpc_response: tuple[GrpcMessage, ...] = ()
    complete: bool = True  # False when flushed at close/idle before framing ended


class Unparsed(msgspec.Struct, frozen=True, gc=False):
    """Bytes of a connection that is not (or no longer) parsed as HTTP."""

    event: TlsData
    reason: str  # "not-http", "desync", "mid-stream", ...


# Lost: a parser gave up on bytes it could not hold (bounded buffers) or
# skipped after a gap; it says how much and on which connection.
ProcessorItem = HttpExchange | Unparsed | Lost
