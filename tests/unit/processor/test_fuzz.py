"""Garbage never raises: every parser and the tracker on random and mutated bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecapture.events import Direction
from ecapture.processor.bodies import decode_body
from ecapture.processor.http1 import Http1Parser
from ecapture.processor.http2 import Http2Parser
from ecapture.processor.model import ConnectionInfo, HttpExchange, ProcessorItem, Unparsed
from ecapture.processor.tracker import ConnectionTracker

from .factories import conn_close, recording, tls_data

RECORDINGS = [
    "h1_keepalive", "h1_chunked_gzip", "h1_head_then_get", "h1_status_codes", "h1_pipelined",
    "curl_nginx_h1", "h2_three_streams", "h2_grpc_unary", "nghttp_nginx_h2",
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
