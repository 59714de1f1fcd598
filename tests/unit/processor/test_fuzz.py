"""Garbage never raises: every parser and the tracker on random and mutated bytes;
hostile header bytes (any byte in names and values) are kept exactly."""

from __future__ import annotations

import h11
import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecapture.events import Direction
from ecapture.processor import http1
from ecapture.processor.bodies import decode_body
from ecapture.processor.http1 import Http1Parser
from ecapture.processor.http2 import Http2Parser
from ecapture.processor.model import ConnectionInfo, HttpExchange, ProcessorItem, Unparsed
from ecapture.processor.tracker import ConnectionTracker

from .factories import conn_close, recording, tls_data
from .oracle import h11_exchanges

RECORDINGS = [
    "h1_keepalive", "h1_chunked_gzip", "h1_head_then_get", "h1_status_codes", "h1_pipelined",
    "curl_nginx_h1", "h1_hostile_headers", "h2_three_streams", "h2_grpc_unary", "nghttp_nginx_h2",
]
INFO = ConnectionInfo(pid=1, comm="fuzz", uid=0, fd=3, conn_id=1, client=None, server=None)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

directions = st.sampled_from([Direction.SEND, Direction.RECV])
chunk = st.tuples(directions, st.binary(max_size=300), st.integers(0, 2), st.booleans())
# an HTTP-ish start so the parsers get past sniffing and meet garbage later
starts = st.sampled_from([
    b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", b"",
])


def _feed(tracker: ConnectionTracker, chunks: list[tuple[Direction, bytes, int, bool]]) -> None:
    out: list[ProcessorItem] = []
    for index, (direction, data, lost, truncated) in enumerate(chunks):
        out += tracker.feed(tls_data(data, direction, timestamp_ns=index, lost_records=lost,
                                     truncated=truncated and index % 3 == 0))
    out += tracker.close(conn_close())
    out += tracker.flush()
    for item in out:
        if isinstance(item, Unparsed):
            assert item.reason in {"not-http", "mid-stream", "desync", "tunnel"}


@FUZZ
@given(start=starts, chunks=st.lists(chunk, max_size=12))
def test_tracker_on_random_bytes(start: bytes, chunks: list[tuple[Direction, bytes, int, bool]]
                                 ) -> None:
    _feed(ConnectionTracker(max_body_bytes=64), [(Direction.SEND, start, 0, False), *chunks])


@st.composite
def mutated(draw: st.DrawFn) -> list[tuple[Direction, bytes, int, bool]]:
    chunks = recording(draw(st.sampled_from(RECORDINGS)))
    stream = bytearray(b"".join(data for _, data in chunks))
    for _ in range(draw(st.integers(0, 6))):
        where = draw(st.integers(0, max(0, len(stream) - 1)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip" and stream:
            stream[where] ^= draw(st.integers(1, 255))
        elif action == "insert":
            stream[where:where] = draw(st.binary(min_size=1, max_size=20))
        else:
            del stream[where : where + draw(st.integers(1, 40))]
    # re-cut at random places, keeping each recorded chunk's direction
    result = []
    pos = 0
    for direction, data in chunks:
        size = len(data)
        while size > 0 and pos < len(stream):
            take = draw(st.integers(1, max(1, size)))
            result.append((direction, bytes(stream[pos : pos + take]),
                           draw(st.sampled_from([0, 0, 0, 1])), False))
            pos += take
            size -= take
    return result


@FUZZ
@given(chunks=mutated())
def test_tracker_on_mutated_recordings(chunks: list[tuple[Direction, bytes, int, bool]]) -> None:
    _feed(ConnectionTracker(), chunks)


@FUZZ
@given(pieces=st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=10),
       resync=st.sampled_from([None, "mid-stream"]))
def test_http1_parser_directly(pieces: list[tuple[bool, bytes]], resync: str | None) -> None:
    parser = Http1Parser(INFO, max_body_bytes=32, resync_reason=resync)
    out: list[ProcessorItem] = []
    for index, (from_client, data) in enumerate(pieces):
        parser.feed(tls_data(data, timestamp_ns=index), from_client, out)
    parser.finish(99, True, out)
    assert all(isinstance(item, HttpExchange | Unparsed) or item.bytes > 0 for item in out)


@FUZZ
@given(pieces=st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=10))
def test_http2_parser_directly(pieces: list[tuple[bool, bytes]]) -> None:
    parser = Http2Parser(INFO, max_body_bytes=32)
    out: list[ProcessorItem] = []
    preface = tls_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    parser.feed(preface, True, out)
    for index, (from_client, data) in enumerate(pieces):
        parser.feed(tls_data(data, timestamp_ns=index), from_client, out)
    parser.finish(99, False, out)


@FUZZ
@given(body=st.binary(max_size=500),
       coding=st.sampled_from(["gzip", "deflate", "br", "zstd", "gzip, br", "bogus", None]))
def test_decode_body_never_raises(body: bytes, coding: str | None) -> None:
    result = decode_body(body, coding, limit=4096)
    assert result is None or len(result) <= 4096 or coding is None


# -- hostile header bytes: every byte in names and values ------------------------

_FRAMING_NAMES = {b"content-length", b"transfer-encoding"}


_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FIELD_VCHAR = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)]) + b" \t"


def _tame(alphabet: bytes, min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map(bytes)


@st.composite
def _field(draw: st.DrawFn, tame: bool) -> tuple[bytes, tuple[bytes, bytes]]:
    """One field line as sent (line end included) and (name, value) as it
    must come out. Names hold any byte but the colon and line ends and do
    not open with whitespace (that would be an obs-fold); values any byte
    but LF, and no CR right before the line end (it would join it). `tame`
    keeps to what RFC 9110 allows, so that h11 accepts and checks it too."""
    names = _tame(_TCHAR, 1, 12) if tame else st.binary(min_size=1, max_size=12)
    name = draw(names.filter(
        lambda n: not (set(n) & set(b":\r\n")) and n[0] not in b" \t"
        and n.lower() not in _FRAMING_NAMES))
    values = _tame(_FIELD_VCHAR, 0, 16) if tame else st.binary(max_size=16)
    raw = draw(values.filter(lambda v: b"\n" not in v and not v.endswith(b"\r")))
    line = name + b":" + raw
    value = raw
    if draw(st.integers(0, 4)) == 0:  # an obs-fold (RFC 9112 §5.2)
        fold = bytes(draw(st.lists(st.sampled_from(b" \t"), min_size=1, max_size=3)))
        more = draw(values.filter(
            lambda v: b"\n" not in v and not v.endswith(b"\r")))
        line += draw(st.sampled_from([b"\r\n", b"\n"])) + fold + more
        value = raw + b" " + (fold + more).lstrip(b" \t")  # h11 joins folds the same way
    return line + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"])), (name, value.strip(b" \t"))


@st.composite
def _hostile_message(draw: st.DrawFn, start: bytes, no_body: bool, response: bool,
                     tame: bool) -> tuple[bytes, tuple[tuple[bytes, bytes], ...], bytes]:
    """(bytes sent, fields expected, body expected) of one message (a
    response with neither framing would end only at the close)."""
    fields = draw(st.lists(_field(tame), max_size=5))
    if not response:  # h11 wants a Host in an HTTP/1.1 request
        fields.insert(0, (b"Host: h\r\n", (b"Host", b"h")))
    head = start + b"".join(line for line, _ in fields)
    expected = [parsed for _, parsed in fields]
    body = draw(st.binary(max_size=20))
    framing = draw(st.sampled_from(["length", "chunked"] if response else
                                   ["length", "chunked", "none"]))
    end = draw(st.sampled_from([b"\r\n", b"\n"]))
    if no_body or framing == "none":
        return head + end, tuple(expected), b""
    if framing == "length":
        expected.append((b"Content-Length", b"%d" % len(body)))
        return head + b"Content-Length: %d\r\n" % len(body) + end + body, tuple(expected), body
    expected.append((b"Transfer-Encoding", b"chunked"))
    chunks = b"".join(b"%x\r\n" % len(body[i : i + 7]) + body[i : i + 7] + b"\r\n"
                      for i in range(0, len(body), 7))
    return (head + b"Transfer-Encoding: chunked\r\n" + end + chunks + b"0\r\n\r\n",
            tuple(expected), body)


@st.composite
def hostile_exchanges(draw: st.DrawFn) -> tuple[list[tuple[Direction, bytes]], list[tuple[
        tuple[tuple[bytes, bytes], ...], bytes, tuple[tuple[bytes, bytes], ...], bytes]]]:
    """A keep-alive stream (client's view) of 1-3 exchanges with hostile
    fields, and what each exchange must hold."""
    stream: list[tuple[Direction, bytes]] = []
    expected = []
    tame = draw(st.booleans())
    for index in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
        request, request_fields, request_body = draw(_hostile_message(
            method + b" /%d HTTP/1.1" % index + draw(st.sampled_from([b"\r\n", b"\n"])),
            False, False, tame))
        status = draw(st.sampled_from([200, 204, 404]))
        response, response_fields, response_body = draw(_hostile_message(
            b"HTTP/1.1 %d %s\r\n" % (status, b"OK" if tame else b"R\x1b"),
            method == b"HEAD" or status == 204, True, tame))
        stream += [(Direction.SEND, request), (Direction.RECV, response)]
        expected.append((request_fields, request_body, response_fields, response_body))
    return stream, expected


def _pieces(stream: list[tuple[Direction, bytes]], how: str, cut: int
            ) -> list[tuple[Direction, bytes]]:
    if how == "whole":
        return stream
    size = 1 if how == "bytes" else cut
    return [(direction, data[i : i + size]) for direction, data in stream
            for i in range(0, len(data), size)]


@FUZZ
@given(case=hostile_exchanges(), how=st.sampled_from(["whole", "bytes", "split"]),
       cut=st.integers(2, 37))
def test_hostile_fields_are_kept_exactly(
    case: tuple[list[tuple[Direction, bytes]], list[tuple[
        tuple[tuple[bytes, bytes], ...], bytes, tuple[tuple[bytes, bytes], ...], bytes]]],
    how: str, cut: int,
) -> None:
    stream, expected = case
    tracker = ConnectionTracker()
    out: list[ProcessorItem] = []
    for index, (direction, data) in enumerate(_pieces(stream, how, cut)):
        out += tracker.feed(tls_data(data, direction, timestamp_ns=index))
    out += tracker.close(conn_close())
    # well-defined framing: an exchange for each, nothing unparsed or lost
    assert [item for item in out if not isinstance(item, HttpExchange)] == []
    got = [item for item in out if isinstance(item, HttpExchange)]
    assert len(got) == len(expected)
    for exchange, (request_fields, request_body, response_fields, response_body) in zip(
            got, expected, strict=True):
        assert exchange.complete and exchange.request is not None
        assert exchange.response is not None
        assert exchange.request.headers == request_fields
        assert exchange.request.body == request_body
        assert exchange.response.headers == response_fields
        assert exchange.response.body == response_body
    # h11, stricter, is the oracle wherever it accepts the stream
    try:
        oracle = h11_exchanges(stream)
    except (h11.ProtocolError, AssertionError):
        return
    assert len(oracle) == len(got)
    for exchange, reference in zip(got, oracle, strict=True):
        assert exchange.request is not None and exchange.response is not None
        assert _lower(exchange.request.headers) == reference.request_headers
        assert exchange.request.body == reference.request_body
        assert _lower(exchange.response.headers) == reference.response_headers
        assert exchange.response.body == reference.response_body


def _lower(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.lower(), value) for name, value in headers)


class _Reader:
    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.done = True


@FUZZ
@given(values=st.lists(st.binary(max_size=16).filter(lambda v: not set(v) & set(b"\r\n")),
                       max_size=4),
       is_request=st.booleans())
def test_lenient_reader_agrees_with_llhttp_lenient_mode(values: list[bytes], is_request: bool
                                                        ) -> None:
    """llhttp's lenient mode (httptools set_dangerous_leniencies) accepts
    control bytes in values: where it accepts, our reader reads the same."""
    start = b"GET / HTTP/1.1\r\n" if is_request else b"HTTP/1.1 200 OK\r\n"
    head = start + b"".join(b"X-%d: %s\r\n" % (i, value) for i, value in enumerate(values))
    head += b"\r\n"
    reader = _Reader()
    parser: httptools.HttpRequestParser | httptools.HttpResponseParser = (
        httptools.HttpRequestParser(reader) if is_request else httptools.HttpResponseParser(reader))
    parser.set_dangerous_leniencies(lenient_headers=True)
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:
        return
    assert reader.done
    ours = http1._parse_head(head, is_request)
    assert ours is not None and ours.size == len(head)
    assert list(ours.headers) == reader.fields
