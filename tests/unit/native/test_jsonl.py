"""The Rust JSON writer (native/src/jsonl.rs) writes exactly the bytes of
the Python one (ecapture.output.jsonl.JsonLinesWriter), with the same -t cut
counts: for every golden case and for generated items (arbitrary bytes in
headers, bodies and comm; content codings that decode, fail or explode; -t;
IPv6 endpoints; None wherever a field may be None). The items go to Rust
through the test binding ecapture._native.jsonl_encode (native/src/py_jsonl.rs).
"""

from __future__ import annotations

import gzip
import socket
import zlib
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from output import factories
from output.conftest import MemorySink
from output.test_output_golden import CASES, EXPECTED_CUTS

from ecapture import _native
from ecapture.events import (
    CloseCause,
    ConnClose,
    Direction,
    Endpoint,
    LossReason,
    Lost,
    TlsData,
    decode_endpoint,
)
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.processor.bodies import decode_body
from ecapture.processor.model import (
    ConnectionInfo,
    GrpcMessage,
    HttpExchange,
    HttpRequest,
    HttpResponse,
)

U16 = st.integers(0, (1 << 16) - 1)
U32 = st.integers(0, (1 << 32) - 1)
U64 = st.integers(0, (1 << 64) - 1)
I32 = st.integers(-(1 << 31), (1 << 31) - 1)


def python_lines(items: list[Any], tsize: int,
                 module: str = "tls") -> tuple[bytes, tuple[int, int]]:
    sink = MemorySink()
    writer = JsonLinesWriter(module, sink, tsize=tsize)
    for item in items:
        writer.write(item)
    writer.close()
    return bytes(sink.data), (writer.cut.records, writer.cut.bytes)


def assert_same(items: list[Any], tsize: int, module: str = "tls") -> None:
    expected, expected_cut = python_lines(items, tsize, module)
    got, cut = _native.jsonl_encode(items, module, tsize)
    assert got.splitlines() == expected.splitlines()
    assert got == expected
    assert cut == expected_cut


@pytest.mark.parametrize(("name", "exchange", "tsize"), CASES, ids=[case[0] for case in CASES])
def test_golden_cases(name: str, exchange: HttpExchange, tsize: int) -> None:
    got, cut = _native.jsonl_encode([exchange], "tls", tsize)
    assert got == python_lines([exchange], tsize)[0]
    assert cut == EXPECTED_CUTS.get(name, (0, 0))


def test_golden_cases_through_one_writer() -> None:
    for tsize in sorted({tsize for _, _, tsize in CASES}):
        assert_same([exchange for _, exchange, size in CASES if size == tsize] * 2, tsize)


def test_data_close_lost_and_unparsed() -> None:
    assert_same([
        factories.tls_data(data=bytes(range(256)) * 3, call_len=70000, offset=16384),
        factories.tls_data(direction=Direction.RECV, socket_cookie=None, truncated=True),
        factories.tls_data(local=None, remote=Endpoint("::1", 443), data=b""),
        factories.unparsed(),
        factories.conn_close(),
        factories.conn_close(tid=None, cause=CloseCause.SSL_MOVED, socket_cookie=None),
        factories.lost(),
        factories.lost(reason=LossReason.PARSER, pid=7, comm="nginx", conn_id=9, fd=-3),
    ], 0)
    assert_same([factories.tls_data(data=b"a" * 1000), factories.tls_data(data=b"short")], 100)


def test_module_name_is_escaped() -> None:
    assert_same([factories.tls_data(), factories.conn_close(), factories.lost(),
                 factories.exchange()], 0, module='m"\\\x01é')


# --- generated items -------------------------------------------------------

TEXT = st.text(max_size=40)  # any code point but surrogates: controls, DEL, U+2028, astral
COMM = st.binary(max_size=16).map(lambda raw: raw.decode("utf-8", errors="replace")) | TEXT


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint | None:
    """As events.py decodes them from the kernel's struct sock_addr."""
    kind = draw(st.sampled_from(["none", "v4", "v6", "v6-special"]))
    port = draw(U16)
    if kind == "none":
        return None
    if kind == "v4":
        return decode_endpoint(socket.AF_INET, port, draw(st.binary(min_size=16, max_size=16)))
    if kind == "v6":
        raw = draw(st.binary(min_size=16, max_size=16))
    else:  # runs of zero groups, mapped and compatible IPv4, loopback
        groups = draw(st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xFE80, 0x64]),
                               min_size=8, max_size=8))
        raw = b"".join(group.to_bytes(2, "big") for group in groups)
    return decode_endpoint(socket.AF_INET6, port, raw)


PLAIN = "héllo wörld, \"quoted\" \\ back\tslash\n\x00\x1b\u2028 ".encode() * 3


@st.composite
def encoded_bodies(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A body and its Content-Encoding header(s): codings that decode, that
    do not, stacked codings, odd spellings, bodies that are not UTF-8."""
    plain = draw(st.sampled_from([PLAIN, b"", bytes(range(256)), b"ok"]) | st.binary(max_size=300))
    codings = draw(st.lists(st.sampled_from(["gzip", "x-gzip", "deflate", "deflate-raw", "br",
                                             "zstd", "identity", "x-custom"]),
                            min_size=1, max_size=3))
    body = plain
    names = []
    for coding in codings:
        if coding in ("gzip", "x-gzip"):
            body = gzip.compress(body, mtime=0)
        elif coding == "deflate":
            body = zlib.compress(body)
        elif coding == "deflate-raw":
            compressor = zlib.compressobj(wbits=-15)
            body = compressor.compress(body) + compressor.flush()
        elif coding == "br":
            body = brotli.compress(body)
        elif coding == "zstd":
            body = zstandard.ZstdCompressor().compress(body)
        names.append("deflate" if coding == "deflate-raw" else coding)
    damage = draw(st.sampled_from(["none", "none", "cut", "flip", "append", "nul-pad", "twice"]))
    if damage == "cut" and body:
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif damage == "flip" and body:
        index = draw(st.integers(0, len(body) - 1))
        body = body[:index] + bytes([body[index] ^ draw(st.integers(1, 255))]) + body[index + 1:]
    elif damage == "append":
        body += draw(st.binary(min_size=1, max_size=8))
    elif damage == "nul-pad":
        body += b"\0" * draw(st.integers(1, 4))
    elif damage == "twice":
        body += body
    spell = draw(st.sampled_from(["as is", "upper", "spaces", "latin-1 space"]))
    value = ", ".join(names)
    if spell == "upper":
        value = value.upper()
    elif spell == "spaces":
        value = f" \t{value.replace(', ', ' ,  ')} "
    elif spell == "latin-1 space":
        value = f"\xa0{value}\x85"
    if draw(st.booleans()):  # one header, or one per coding
        headers = [(b"Content-Encoding", value.encode("latin-1"))]
    else:
        headers = [(draw(st.sampled_from([b"content-encoding", b"CONTENT-ENCODING"])),
                    name.encode()) for name in names]
    return body, headers


HEADERS = st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=6)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        body, coding_headers = draw(encoded_bodies())
    else:
        body, coding_headers = draw(st.binary(max_size=300) | st.just(PLAIN)), []
    headers = draw(HEADERS) + coding_headers
    headers = draw(st.permutations(headers)) if len(headers) < 8 else headers
    return {
        "version": draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2"]) | TEXT),
        "headers": tuple(headers),
        "body": body,
        "trailers": tuple(draw(st.lists(st.tuples(st.binary(max_size=10),
                                                  st.binary(max_size=10)), max_size=2))),
        "body_truncated": draw(st.booleans()),
    }


@st.composite
def requests(draw: st.DrawFn) -> HttpRequest:
    return HttpRequest(
        method=draw(st.sampled_from(["GET", "POST", "CONNECT", "OPTIONS"]) | TEXT),
        target=draw(st.sampled_from(["/", "/a?b=c&d", "*", "example.test:443",
                                     "http://proxy.test/x", "https://h/", ""])
                    | TEXT | TEXT.map(lambda text: "/" + text)),
        authority=draw(st.none() | st.sampled_from(["example.test", "[::1]:8443"]) | TEXT),
        scheme=draw(st.none() | st.sampled_from(["", "http", "https"]) | TEXT),
        **draw(messages()),
    )


@st.composite
def responses(draw: st.DrawFn) -> HttpResponse:
    return HttpResponse(
        status=draw(U16), reason=draw(TEXT),
        informational=tuple(draw(st.lists(U16, max_size=2))), **draw(messages()),
    )


GRPC = st.builds(GrpcMessage, compressed=st.booleans(), data=st.binary(max_size=40),
                 decoded=st.none() | st.binary(max_size=40))


@st.composite
def exchanges(draw: st.DrawFn) -> HttpExchange:
    started = draw(U64)
    return HttpExchange(
        connection=ConnectionInfo(pid=draw(U32), comm=draw(COMM), uid=draw(U32), fd=draw(I32),
                                  conn_id=draw(U64), client=draw(endpoints()),
                                  server=draw(endpoints())),
        request=draw(st.none() | requests()),
        response=draw(st.none() | responses()),
        started_ns=started,
        # Usually later, sometimes before the start (Python then writes a negative duration).
        finished_ns=draw(st.integers(started, (1 << 64) - 1) | U64),
        stream_id=draw(st.none() | U32),
        grpc_request=tuple(draw(st.lists(GRPC, max_size=2))),
        grpc_response=tuple(draw(st.lists(GRPC, max_size=2))),
        complete=draw(st.booleans()),
    )


@st.composite
def chunks(draw: st.DrawFn) -> TlsData:
    data = draw(st.binary(max_size=600) | st.sampled_from([b"", b"x" * 16384]))
    return TlsData(
        timestamp_ns=draw(U64), pid=draw(U32), tid=draw(U32), uid=draw(U32), comm=draw(COMM),
        conn_id=draw(U64), fd=draw(I32), direction=draw(st.sampled_from(Direction)),
        call_id=draw(U64), call_len=draw(U64), offset=draw(U64), data=data,
        last_chunk=draw(st.booleans()), truncated=draw(st.booleans()),
        local=draw(endpoints()), remote=draw(endpoints()), lost_records=draw(U32),
        lost_bytes=draw(U64), ssl=draw(U64), socket_cookie=draw(st.none() | U64),
    )


CLOSES = st.builds(
    ConnClose, timestamp_ns=U64, pid=U32, tid=st.none() | U32, uid=U32, comm=COMM, conn_id=U64,
    fd=I32, lost_records=U32, lost_bytes=U64, ssl=U64, socket_cookie=st.none() | U64,
    cause=st.sampled_from(CloseCause), deferred=st.booleans(),
)
LOSSES = st.builds(
    Lost, timestamp_ns=U64, reason=st.sampled_from(LossReason), records=U64, bytes=U64,
    pid=st.none() | U32, comm=st.none() | COMM, conn_id=st.none() | U64, fd=st.none() | I32,
)
TSIZE = st.sampled_from([0, 0, 1, 2, 4, 50, 100, 16384]) | st.integers(0, 400)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(chunks() | CLOSES | LOSSES | exchanges(), max_size=6), tsize=TSIZE)
def test_generated_items(items: list[Any], tsize: int) -> None:
    assert_same(items, tsize)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exchange=exchanges(), tsize=TSIZE)
def test_generated_exchanges(exchange: HttpExchange, tsize: int) -> None:
    assert_same([exchange, exchange], tsize)  # a second time: nothing carried over


# --- content decoding alone, with small limits --------------------------------

def _bomb(coding: str) -> bytes:
    zeros = b"\0" * (1 << 20)
    compress = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
                "zstd": zstandard.ZstdCompressor().compress}[coding]
    return compress(zeros)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize("limit", [0, 1, 1000, (1 << 20) - 1, 1 << 20, 64 << 20])
def test_decompression_bombs_stop_at_the_limit(coding: str, limit: int) -> None:
    body = _bomb(coding)
    expected = decode_body(body, coding, limit=limit)
    assert (expected is None) == (limit < 1 << 20)
    assert _native.decode_body(body, coding, limit) == expected


@settings(max_examples=600, deadline=None)
@given(encoded=encoded_bodies(), limit=st.sampled_from([0, 1, 10, 100, 300, 1000, 64 << 20]))
@example(encoded=(b"", [(b"Content-Encoding", b"br")]), limit=10)
@example(encoded=(b"\x28\xb5\x2f\xfd\x20\x00\x01\x00\x00", [(b"Content-Encoding", b"zstd")]),
         limit=10)
def test_decode_body_is_pythons(encoded: tuple[bytes, list[tuple[bytes, bytes]]],
                                limit: int) -> None:
    body, headers = encoded
    value = ", ".join(value.decode("latin-1") for _, value in headers)
    assert _native.decode_body(body, value, limit) == decode_body(body, value, limit=limit)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64),
       coding=st.sampled_from(["gzip", "deflate", "br", "zstd", "gzip, zstd", "br,deflate"]))
def test_decode_body_of_arbitrary_bytes_is_pythons(body: bytes, coding: str) -> None:
    assert _native.decode_body(body, coding, 1000) == decode_body(body, coding, limit=1000)


def test_zstd_frames_larger_than_one_read() -> None:
    # python-zstandard reads its source in blocks of ZSTD_DStreamInSize() bytes.
    import os
    payload = os.urandom(300_000)
    body = zstandard.ZstdCompressor().compress(payload)
    for cut in (len(body), 131_075, 131_076, 200_000, 5):
        assert _native.decode_body(body[:cut], "zstd", 1 << 20) == decode_body(
            body[:cut], "zstd", limit=1 << 20)


# --- what the writer caches between items ---------------------------------------
# It keeps the JSON of what repeats (a data event's fields per thread, direction
# and connection; an HTTP event's per ConnectionInfo; header pairs per shared
# head). Items that share objects, or differ in one field only, must still be
# written exactly as Python writes them.

DATA_FIELDS = {
    "pid": U32, "tid": U32, "uid": U32, "comm": COMM, "conn_id": U64, "fd": I32,
    "direction": st.sampled_from(Direction), "local": endpoints(), "remote": endpoints(),
    "ssl": U64, "socket_cookie": st.none() | U64, "data": st.binary(max_size=20),
    "timestamp_ns": U64,
}


@st.composite
def chunk_variants(draw: st.DrawFn) -> list[TlsData]:
    """A few base chunks, then chunks that change one or two fields of one."""
    import msgspec

    bases = draw(st.lists(chunks(), min_size=1, max_size=3))
    out = []
    for _ in range(draw(st.integers(1, 12))):
        base = draw(st.sampled_from(bases))
        changed = draw(st.lists(st.sampled_from(sorted(DATA_FIELDS)), max_size=2, unique=True))
        out.append(msgspec.structs.replace(base, **{
            field: draw(DATA_FIELDS[field]) for field in changed}))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=chunk_variants(), tsize=TSIZE)
def test_chunks_that_share_fields(items: list[TlsData], tsize: int) -> None:
    assert_same(items, tsize)


@st.composite
def shared_exchanges(draw: st.DrawFn) -> list[HttpExchange]:
    """Exchanges whose heads and connections are the same objects (one Arc
    each on the Rust side) while bodies, codings' bodies and -t differ."""
    import msgspec

    heads = draw(st.lists(st.builds(tuple, HEADERS) | encoded_bodies().map(
        lambda encoded: tuple(encoded[1])), min_size=1, max_size=3))
    pool = draw(st.lists(exchanges(), min_size=1, max_size=3))
    out = []
    for _ in range(draw(st.integers(1, 8))):
        exchange = draw(st.sampled_from(pool))
        request, response = exchange.request, exchange.response
        if request is not None and draw(st.booleans()):
            request = msgspec.structs.replace(request, headers=draw(st.sampled_from(heads)))
        if response is not None and draw(st.booleans()):
            body, _ = draw(encoded_bodies())
            response = msgspec.structs.replace(
                response, headers=draw(st.sampled_from(heads)), body=body,
                body_truncated=draw(st.booleans()))
        out.append(msgspec.structs.replace(
            exchange, request=request, response=response,
            connection=draw(st.sampled_from([exchange.connection, pool[0].connection]))))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=shared_exchanges(), tsize=TSIZE)
def test_exchanges_that_share_heads_and_connections(items: list[HttpExchange],
                                                    tsize: int) -> None:
    assert_same(items, tsize)


def test_heads_too_big_to_keep_are_written_each_time() -> None:
    big = ((b"X-Big", b"\x01" * 5000),)  # 30 000 bytes of JSON escapes
    first = factories.exchange(response=factories.response(headers=big, body=b"one"))
    second = factories.exchange(response=factories.response(headers=big, body=b"two"))
    assert_same([first, second, first], 0)
