"""Exact output bytes of representative HTTP exchanges, pinned.

The files under golden/ were written by the JSON and text writers as they
were before their hot paths were optimised (commit message of this file):
any change to a byte of the JSON contract or of the text layout fails here.
The cases cover every branch of the body and header handling: decoded
codings, bodies that cannot decode, binary bodies, -t cuts (including one
that splits a UTF-8 character), trailers, gRPC, HTTP/2, missing sides,
header bytes outside ASCII (and a recorded exchange with control bytes and
ESC in its headers, parsed from the capture), and unknown or IPv6 endpoints.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from datetime import UTC
from pathlib import Path

import brotli
import pytest

from ecapture.events import Direction, Endpoint, TlsData
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.text import TextWriter
from ecapture.processor.model import HttpExchange
from ecapture.processor.tracker import ConnectionTracker

from . import factories
from .conftest import MemorySink

GOLDEN = Path(__file__).parent / "golden"
RECORDINGS = Path(__file__).resolve().parents[2] / "data" / "processor"
TEXT = "héllo wörld, \"quoted\" \\ back\tslash\n" * 4
GZIPPED = gzip.compress(TEXT.encode(), mtime=0)  # mtime=0: the same bytes every run


def _wrk_like() -> HttpExchange:
    return factories.exchange(
        request=factories.request(target="/", authority="127.0.0.1:8443",
                                  headers=((b"Host", b"127.0.0.1:8443"),)),
        response=factories.response(
            body=b"ok", reason="OK",
            headers=((b"Server", b"nginx/1.22.1"),
                     (b"Date", b"Wed, 25 Nov 2026 08:00:00 GMT"),
                     (b"Content-Type", b"application/octet-stream"),
                     (b"Content-Length", b"2"), (b"Connection", b"keep-alive"))),
    )


def _recorded_escapes() -> HttpExchange:
    """The first exchange of a real capture: curl sent `-H $'X-Ctl:
    a\\x01b\\x7f\\x1b[0m'`, Python's http.server answered with an ESC in X-Esc
    and echoed X-Ctl (tests/data/processor/record_streams.py)."""
    document = json.loads((RECORDINGS / "h1_hostile_headers.json").read_text())
    tracker = ConnectionTracker()
    found = []
    for index, (direction, payload) in enumerate(document["chunks"]):
        data = base64.b64decode(payload)
        found += [item for item in tracker.feed(TlsData(
            timestamp_ns=1_000 + index, pid=4242, tid=4242, uid=1000, comm="curl", conn_id=7,
            fd=5, direction=Direction.SEND if direction == "send" else Direction.RECV,
            call_id=index, call_len=len(data), offset=0, data=data, last_chunk=True,
            truncated=False, local=Endpoint("127.0.0.1", 40000),
            remote=Endpoint("127.0.0.1", 8443), lost_records=0, lost_bytes=0,
        )) if isinstance(item, HttpExchange)]
    assert len(found) == 2
    return found[0]


def _encoded(coding: bytes, body: bytes, **overrides: object) -> HttpExchange:
    return factories.exchange(response=factories.response(
        body=body, headers=((b"Content-Type", b"text/plain"), (b"Content-Encoding", coding)),
        **overrides))


# (name, exchange, -t/--tsize)
CASES: list[tuple[str, HttpExchange, int]] = [
    ("plain", factories.exchange(), 0),
    ("wrk-like", _wrk_like(), 0),
    ("gzip", _encoded(b"gzip", GZIPPED), 0),
    ("gzip cut by -t", _encoded(b"gzip", GZIPPED), 50),
    ("gzip twice, two headers", factories.exchange(response=factories.response(
        body=gzip.compress(GZIPPED, mtime=0),
        headers=((b"content-encoding", b"gzip"), (b"Content-Encoding", b"gzip"))),), 0),
    ("brotli", _encoded(b"br", brotli.compress(TEXT.encode())), 0),
    ("deflate upper case", _encoded(b" DEFLATE ", zlib.compress(b"deflated")), 0),
    ("gzip that does not decode", _encoded(b"gzip", b"\x1f\x8b not really gzip"), 0),
    ("gzip cut short by the parser", _encoded(b"gzip", GZIPPED[:40], body_truncated=True), 0),
    ("unknown coding", _encoded(b"x-custom", b"as is"), 0),
    ("identity coding", _encoded(b" Identity ", b"identity body"), 0),
    ("empty coding value", _encoded(b"", b"empty coding"), 0),
    ("coding on an empty body", _encoded(b"gzip", b""), 0),
    ("binary body", factories.exchange(response=factories.response(
        body=bytes(range(256)))), 0),
    ("text cut by -t", factories.exchange(
        request=factories.request(method="POST", body=b'{"k": "' + b"v" * 300 + b'"}',
                                  headers=((b"Content-Type", b"application/json"),)),
        response=factories.response(body=b"z" * 500)), 100),
    ("body exactly -t long", factories.exchange(response=factories.response(
        body=b"q" * 100)), 100),
    ("-t cut splits a UTF-8 character", factories.exchange(response=factories.response(
        body="aé".encode() * 10)), 4),
    ("chunked with trailers", factories.exchange(response=factories.response(
        headers=((b"Transfer-Encoding", b"chunked"), (b"Trailer", b"X-Checksum")),
        trailers=((b"X-Checksum", b"abc123"), (b"X-Other", b"\xe9t\xe9")))), 0),
    ("grpc", factories.grpc_exchange(), 0),
    ("grpc cut by -t", factories.grpc_exchange(), 2),
    ("http2", factories.exchange(
        request=factories.request(scheme="http", version="HTTP/2", authority="h2.test:8080",
                                  headers=((b":method", b"GET"), (b":path", b"/a?b=c"),
                                           (b":authority", b"h2.test:8080"),
                                           (b":scheme", b"http"))),
        response=factories.response(version="HTTP/2", reason="",
                                    headers=((b":status", b"404"),), status=404,
                                    body=b"not found"),
        stream_id=3), 0),
    ("no request, incomplete", factories.exchange(request=None, complete=False), 0),
    ("no response", factories.exchange(response=None), 0),
    ("neither side", factories.exchange(request=None, response=None, complete=False), 0),
    ("header bytes outside ASCII", factories.exchange(request=factories.request(
        headers=((b"X-Latin", b"caf\xe9 \xff"), (b"X-Ctl", b"\x1b]0;t\x07\x00"),
                 (b"X-Json", b'"\\/'), (b"X-Utf8", "ü€".encode())))), 0),
    ("absolute-form target", factories.exchange(request=factories.request(
        target="http://proxy.test/x")), 0),
    ("connect", factories.exchange(request=factories.request(
        method="CONNECT", target="example.test:443")), 0),
    ("asterisk, no authority", factories.exchange(request=factories.request(
        method="OPTIONS", target="*", authority=None)), 0),
    ("ipv6 server, unknown client", factories.exchange(connection=factories.connection(
        client=None, server=Endpoint("::1", 443))), 0),
    ("non-UTF-8 comm and reason", factories.exchange(
        connection=factories.connection(comm="x\ufffdy"),
        response=factories.response(reason="Ünknown\x1b")), 0),
    ("recorded control bytes and ESC in headers", _recorded_escapes(), 0),
]

# Cases also pinned with colour on (status colours, dim notes, warnings).
COLORED = ["plain", "gzip", "gzip cut short by the parser", "text cut by -t", "http2",
           "neither side"]

# The writers' -t/--tsize counts for the cases above: (records, bytes) cut.
EXPECTED_CUTS = {
    "gzip cut by -t": (1, len(TEXT.encode()) - 50),
    "text cut by -t": (2, (309 - 100) + (500 - 100)),  # request and response bodies
    "grpc cut by -t": (2, (8 - 2) + (7 - 2)),  # the HTTP/2 bodies; gRPC messages are not cut
    "-t cut splits a UTF-8 character": (1, 30 - 4),
}


def _json_line(exchange: HttpExchange, tsize: int) -> tuple[bytes, tuple[int, int]]:
    sink = MemorySink()
    writer = JsonLinesWriter("tls", sink, tsize=tsize)
    writer.write(exchange)
    writer.close()
    return bytes(sink.data), (writer.cut.records, writer.cut.bytes)


def _text_block(exchange: HttpExchange, tsize: int, color: bool) -> bytes:
    sink = MemorySink()
    writer = TextWriter("tls", sink, tsize=tsize, timezone=UTC, color=color)
    writer.write(exchange)
    writer.close()
    return bytes(sink.data)


def _golden_json() -> list[bytes]:
    """One JSON line per case, in CASES order."""
    return (GOLDEN / "http_exchanges.jsonl").read_bytes().splitlines(keepends=True)


def _golden_text(name: str) -> dict[str, bytes]:
    """Blocks keyed by case name; each block follows a `### name` line."""
    blocks = {}
    for part in (GOLDEN / name).read_bytes().split(b"### ")[1:]:
        title, _, block = part.partition(b"\n")
        blocks[title.decode()] = block
    return blocks


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[c[0] for c in CASES])
def test_json_bytes_are_unchanged(index: int, case: tuple[str, HttpExchange, int]) -> None:
    name, exchange, tsize = case
    line, cut = _json_line(exchange, tsize)
    assert line == _golden_json()[index]
    assert cut == EXPECTED_CUTS.get(name, (0, 0))


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[c[0] for c in CASES])
def test_text_bytes_are_unchanged(index: int, case: tuple[str, HttpExchange, int]) -> None:
    name, exchange, tsize = case
    assert _text_block(exchange, tsize, color=False) == _golden_text("http_exchanges.txt")[name]


@pytest.mark.parametrize("name", COLORED)
def test_colored_text_bytes_are_unchanged(name: str) -> None:
    [(exchange, tsize)] = [(e, t) for n, e, t in CASES if n == name]
    expected = _golden_text("http_exchanges.color.txt")[name]
    assert _text_block(exchange, tsize, color=True) == expected


def test_every_case_is_pinned() -> None:
    assert len(_golden_json()) == len(CASES)
    assert list(_golden_text("http_exchanges.txt")) == [name for name, _, _ in CASES]
    assert list(_golden_text("http_exchanges.color.txt")) == COLORED


def test_one_writer_for_every_case_gives_the_same_bytes() -> None:
    # The writers cache what repeats between exchanges (heads, endpoints,
    # the clock's second): one writer for all cases must write each case
    # exactly as a fresh writer does, and reuse of a cached head must not
    # carry one message's body handling over to another's.
    for tsize in sorted({tsize for _, _, tsize in CASES}):
        cases = [(name, exchange) for name, exchange, size in CASES if size == tsize]
        json_sink, text_sink = MemorySink(), MemorySink()
        json_writer = JsonLinesWriter("tls", json_sink, tsize=tsize)
        text_writer = TextWriter("tls", text_sink, tsize=tsize, timezone=UTC)
        for _, exchange in cases * 2:
            json_writer.write(exchange)
            text_writer.write(exchange)
        json_writer.close()
        text_writer.close()
        golden_text = _golden_text("http_exchanges.txt")
        expected_json = [_golden_json()[[n for n, _, _ in CASES].index(name)]
                         for name, _ in cases] * 2
        assert json_sink.data.splitlines(keepends=True) == expected_json
        assert bytes(text_sink.data) == b"".join(golden_text[name] for name, _ in cases) * 2


@pytest.mark.parametrize("writer_class", [JsonLinesWriter, TextWriter])
def test_heads_too_many_or_too_big_to_cache_are_still_written_exactly(
        writer_class: type[JsonLinesWriter] | type[TextWriter]) -> None:
    from ecapture.output import jsonl, text

    limit = max(jsonl.MAX_CACHED_HEADS, text.MAX_CACHED_HEADS)
    big = b"b" * max(jsonl.MAX_CACHED_HEAD_BYTES, text.MAX_CACHED_HEAD_BYTES)
    exchanges = [
        factories.exchange(response=factories.response(
            headers=((b"X-Id", str(index).encode()), (b"X-Big", big if index % 7 == 0 else b"")),
            body=f"body {index}".encode()))
        for index in range(limit * 2 + 3)
    ]
    cached_sink, fresh_sink = MemorySink(), MemorySink()
    cached = writer_class("tls", cached_sink)
    for exchange in exchanges:
        cached.write(exchange)
        fresh = writer_class("tls", fresh_sink)
        fresh.write(exchange)
        fresh.close()
    cached.close()
    assert cached_sink.data == fresh_sink.data
    assert f'"X-Id","{limit * 2 + 2}"'.encode() in cached_sink.data or (
        f"< X-Id: {limit * 2 + 2}\n".encode() in cached_sink.data)
