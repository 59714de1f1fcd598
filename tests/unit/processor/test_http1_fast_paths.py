"""The HTTP/1 shortcuts give what the general path gives.

Two shortcuts keep the keep-alive path cheap (http1.py): a head seen before
is not parsed again (the parse is memoised by its bytes), and a chunk that
arrives with nothing carried over is parsed where it is instead of being
copied into the side's buffer first. Here the same streams go through the
shortcuts and around them: with the head caches emptied before every head
(every head parsed anew), and re-cut into 1-byte events (every head and
every multi-byte body goes through the buffer), and the results must match.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecapture.events import Direction, Lost
from ecapture.processor import http1
from ecapture.processor.model import HttpExchange, ProcessorItem
from ecapture.processor.tracker import ConnectionTracker

from .factories import RECV, SEND, conn_close, recording, tls_data

H1_RECORDINGS = [
    "h1_keepalive", "h1_chunked_gzip", "h1_head_then_get", "h1_status_codes", "h1_pipelined",
    "curl_nginx_h1", "h1_hostile_headers",
]
Stream = list[tuple[Direction, bytes]]


def _clear_head_caches() -> None:
    http1._cached_request_head.cache_clear()
    http1._cached_response_head.cache_clear()


def _feed(stream: Stream, *, limit: int, one_byte: bool, cold: bool) -> list[ProcessorItem]:
    """Exchanges and losses of a stream; each chunk keeps its own timestamp
    when it is re-cut, so that those stay comparable."""
    tracker = ConnectionTracker(max_body_bytes=limit)
    items: list[ProcessorItem] = []
    for index, (direction, data) in enumerate(stream):
        pieces = [data[i : i + 1] for i in range(len(data))] if one_byte else [data]
        for piece in pieces:
            if cold:
                _clear_head_caches()
            items += tracker.feed(tls_data(piece, direction, timestamp_ns=index))
    items += tracker.close(conn_close())
    return [item for item in items if isinstance(item, HttpExchange | Lost)]


def _assert_same_everywhere(stream: Stream, limit: int) -> None:
    general = _feed(stream, limit=limit, one_byte=True, cold=True)
    assert _feed(stream, limit=limit, one_byte=False, cold=True) == general
    assert _feed(stream, limit=limit, one_byte=False, cold=False) == general
    assert _feed(stream, limit=limit, one_byte=True, cold=False) == general


@pytest.mark.parametrize("name", H1_RECORDINGS)
@pytest.mark.parametrize("limit", [0, 5, 8 << 20])
def test_recordings_same_through_the_shortcuts(name: str, limit: int) -> None:
    stream = recording(name)
    assert any(isinstance(item, HttpExchange) for item in _feed(
        stream, limit=limit, one_byte=False, cold=False))
    _assert_same_everywhere(stream, limit)


def _body(size: int) -> bytes:
    return bytes(b"abcdefghij"[i % 10] for i in range(size))


def _chunked(body: bytes, trailers: bytes) -> bytes:
    out = b""
    for start in range(0, len(body), 7):
        piece = body[start : start + 7]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"


@st.composite
def _request(draw: st.DrawFn) -> tuple[bytes, str]:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "OPTIONS"]))
    target = draw(st.sampled_from(["/", "/a?b=c", "/x/y"]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    head = f"{method} {target} HTTP/{version}\r\n".encode()
    head += draw(st.sampled_from([b"", b"Host: example.test\r\n", b"Host: a \r\nX-A: 1\r\n"]))
    body = _body(draw(st.integers(0, 30)))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "length" and body:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body, method
    if framing == "chunked":
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, b""), method
    return head + b"\r\n", method


@st.composite
def _response(draw: st.DrawFn, method: str) -> bytes:
    informational = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    status = draw(st.sampled_from([200, 200, 204, 304, 404]))
    head = b"HTTP/1.1 %d Some Reason\r\nServer: test\r\n" % status
    body = _body(draw(st.integers(0, 30)))
    if method == "HEAD" or status in (204, 304):
        return informational + head + b"Content-Length: 12\r\n\r\n"
    if draw(st.booleans()):
        return informational + head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    trailers = draw(st.sampled_from([b"", b"X-Sum: 1\r\n"]))
    return informational + head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, trailers)


def _cut(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        if cut > start:
            yield data[start:cut]
            start = cut
    if start < len(data):
        yield data[start:]


@st.composite
def keepalive_streams(draw: st.DrawFn) -> Stream:
    """Requests and their responses, some pipelined, each direction's bytes
    cut at random places (so heads and bodies also arrive in pieces)."""
    stream: Stream = []
    for _ in range(draw(st.integers(1, 5))):
        batch = [draw(_request()) for _ in range(draw(st.integers(1, 3)))]
        requests = b"".join(request for request, _ in batch)
        responses = b"".join(draw(_response(method)) for _, method in batch)
        for direction, data in ((SEND, requests), (RECV, responses)):
            cuts = draw(st.lists(st.integers(0, 1 << 16), max_size=3))
            stream += [(direction, piece) for piece in _cut(data, cuts)]
    return stream


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=keepalive_streams(), limit=st.sampled_from([3, 8 << 20]))
def test_generated_streams_same_through_the_shortcuts(stream: Stream, limit: int) -> None:
    _assert_same_everywhere(stream, limit)


def test_memoised_head_equals_a_fresh_parse() -> None:
    _clear_head_caches()
    heads = [  # (head, is a request, is valid)
        (b"GET /a HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n", True, True),
        (b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n", True, True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", True, True),
        # both framings at once: llhttp refuses it; Transfer-Encoding frames
        # it (RFC 9112 §6.3 item 3), read by the lenient reader
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         True, True),
        # a control byte in a value, a name llhttp refuses, a bare LF
        (b"GET / HTTP/1.1\r\nX-Esc: a\x1bb\r\nX(y): z\r\n\r\n", True, True),
        (b"HTTP/1.1 200 OK\nX-Esc: \x1b[31m\n\n", False, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Y: z \r\n\r\n", False, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", False, True),
        (b"NOT A HEAD\r\n\r\n", True, False),
    ]
    for head, is_request, valid in heads:
        cached = (http1._cached_request_head if is_request else http1._cached_response_head)
        first, again, fresh = cached(head), cached(head), http1._parse_head(head, is_request)
        assert first is again  # the second read is the memo
        assert first == fresh  # Structs: every field compared
        assert (fresh is not None) == valid


def test_head_caches_are_bounded_and_skip_large_heads() -> None:
    _clear_head_caches()
    stream: Stream = []
    for index in range(http1.HEAD_CACHE_SIZE + 50):
        stream.append((SEND, b"GET /%d HTTP/1.1\r\n\r\n" % index))
        stream.append((RECV, b"HTTP/1.1 204 No Content\r\n\r\n"))
    big = b"GET / HTTP/1.1\r\nX-Big: " + b"b" * http1.MAX_CACHED_HEAD + b"\r\n\r\n"
    stream.append((SEND, big))
    stream.append((RECV, b"HTTP/1.1 204 No Content\r\n\r\n"))
    got = [item for item in _feed(stream, limit=100, one_byte=False, cold=False)
           if isinstance(item, HttpExchange)]
    assert len(got) == http1.HEAD_CACHE_SIZE + 51 and all(e.complete for e in got)
    assert got[-1].request is not None and got[-1].request.headers[0][1].startswith(b"bbb")
    assert http1._cached_request_head.cache_info().currsize == http1.HEAD_CACHE_SIZE
    assert http1._cached_response_head.cache_info().currsize == 1
