"""HTTP/1.x through the tracker, on streams recorded from real clients and servers."""

from __future__ import annotations

import gzip

import pytest

from ecapture.events import LossReason, Lost
from ecapture.processor.bodies import decode_body
from ecapture.processor.model import HttpExchange, Unparsed
from ecapture.processor.tracker import ConnectionTracker

from .factories import (
    LOCAL,
    RECV,
    REMOTE,
    SEND,
    conn_close,
    exchanges,
    flipped,
    recording,
    run,
    tls_data,
)
from .oracle import h11_exchanges

H1_RECORDINGS = [
    "h1_keepalive", "h1_chunked_gzip", "h1_head_then_get", "h1_status_codes", "h1_pipelined",
    "curl_nginx_h1",
]
SPLITS = [None, 1, 2, 7, 13, 64, 1 << 20]


def _lower(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.lower(), value) for name, value in headers)


@pytest.mark.parametrize("name", H1_RECORDINGS)
def test_recording_matches_h11(name: str) -> None:
    chunks = recording(name)
    got = exchanges(run(chunks))
    expected = h11_exchanges(chunks)
    assert len(got) == len(expected) > 0
    for exchange, oracle in zip(got, expected, strict=True):
        assert exchange.complete
        request, response = exchange.request, exchange.response
        assert request is not None and response is not None
        assert (request.method, request.target) == (oracle.method, oracle.target)
        assert _lower(request.headers) == oracle.request_headers
        assert request.body == oracle.request_body
        assert (response.status, response.reason) == (oracle.status, oracle.reason)
        assert _lower(response.headers) == oracle.response_headers
        assert response.body == oracle.response_body
        assert _lower(response.trailers) == oracle.trailers
        assert response.informational == oracle.informational


@pytest.mark.parametrize("name", H1_RECORDINGS)
@pytest.mark.parametrize("size", SPLITS[1:])
def test_recording_split_anywhere(name: str, size: int) -> None:
    chunks = recording(name)
    assert _without_times(run(chunks, size)) == _without_times(run(chunks))


def _without_times(items: list[object]) -> list[object]:
    """Exchanges minus timestamps (those follow event boundaries)."""
    return [
        (item.request, item.response, item.complete) if isinstance(item, HttpExchange) else item
        for item in items
    ]


def test_keepalive_three_requests() -> None:
    got = exchanges(run(recording("h1_keepalive")))
    assert [(e.request.method, e.request.target) for e in got if e.request] == [
        ("GET", "/a"), ("POST", "/b"), ("GET", "/c"),
    ]
    assert got[1].request is not None and got[1].request.body == b"x=1&y=2"
    assert [e.response.body for e in got if e.response] == [
        b"hello from /a\n", b"got 7", b"hello from /c\n",
    ]
    assert all(e.connection.client == LOCAL and e.connection.server == REMOTE for e in got)
    assert got[0].request is not None and got[0].request.authority is not None


def test_chunked_gzip_with_trailers() -> None:
    (exchange,) = exchanges(run(recording("h1_chunked_gzip")))
    response = exchange.response
    assert response is not None
    assert response.trailers == ((b"X-Checksum", b"abc123"),)
    # the body stays as on the wire: de-chunked, still gzip
    assert response.body[:2] == b"\x1f\x8b"
    assert decode_body(response.body, "gzip") == b"chunked and gzipped " * 50


def test_head_then_get_on_one_connection() -> None:
    head, get = exchanges(run(recording("h1_head_then_get")))
    assert head.request is not None and head.request.method == "HEAD"
    assert head.response is not None and head.response.body == b""
    assert dict(head.response.headers)[b"Content-Length"] == b"23"
    assert get.response is not None and get.response.body == b"hello from /file\n"


def test_1xx_204_304() -> None:
    upload, no_content, not_modified = exchanges(run(recording("h1_status_codes")))
    assert upload.response is not None
    assert (upload.response.informational, upload.response.status) == ((100,), 201)
    assert no_content.response is not None and no_content.response.status == 204
    assert not_modified.response is not None and not_modified.response.status == 304
    assert not_modified.response.body == no_content.response.body == b""


def test_pipelined_requests_pair_in_order() -> None:
    chunks = recording("h1_pipelined")
    assert sum(1 for direction, _ in chunks if direction is SEND) == 1  # one write, 3 requests
    got = exchanges(run(chunks))
    assert [(e.request.method, e.request.target) for e in got if e.request] == [
        ("GET", "/one"), ("HEAD", "/two"), ("GET", "/three"),
    ]
    assert [e.response.body for e in got if e.response] == [
        b"hello from /one\n", b"", b"hello from /three\n",
    ]


def test_server_side_capture_gives_the_same_exchanges() -> None:
    """nginx sees requests as RECV: roles come from content, not direction."""
    chunks = recording("curl_nginx_h1")
    as_client = exchanges(run(chunks))
    as_server = exchanges(run(flipped(chunks)))
    assert [(e.request, e.response) for e in as_server] == [
        (e.request, e.response) for e in as_client
    ]
    # the traced process is now the server: client is the remote end
    assert as_server[0].connection.client == REMOTE
    assert as_server[0].connection.server == LOCAL


def test_body_until_close_completes_at_close_only() -> None:
    chunks = [
        (SEND, b"GET /stream HTTP/1.0\r\n\r\n"),
        (RECV, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, "),
        (RECV, b"part two"),
    ]
    (closed,) = exchanges(run(chunks, close=True))
    assert closed.complete and closed.response is not None
    assert closed.response.body == b"part one, part two"
    (flushed,) = exchanges(run(chunks, close=False))
    assert not flushed.complete
    assert flushed.response is not None and flushed.response.body == b"part one, part two"


def test_request_without_response_is_flushed_incomplete_at_close() -> None:
    (exchange,) = exchanges(run([(SEND, b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")]))
    assert not exchange.complete and exchange.response is None
    assert exchange.request is not None and exchange.request.body == b"ab"


def test_no_timer_ends_a_message() -> None:
    tracker = ConnectionTracker()
    out = tracker.feed(tls_data(b"GET / HTTP/1.1\r\n\r\n", SEND, timestamp_ns=1))
    out += tracker.feed(tls_data(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", RECV,
                                 timestamp_ns=2))
    assert out == []  # a long silence follows: the tracker has no timer
    out = tracker.feed(tls_data(b"cd", RECV, timestamp_ns=10**11 + 5))
    (exchange,) = exchanges(out)
    assert exchange.complete and exchange.response is not None
    assert exchange.response.body == b"abcd"
    assert (exchange.started_ns, exchange.finished_ns) == (1, 10**11 + 5)


def test_connect_tunnel_is_passed_through() -> None:
    chunks = [
        (SEND, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 Connection Established\r\n\r\n"),
        (SEND, b"\x16\x03\x01\x00\x05hello"),
        (RECV, b"\x16\x03\x03\x00\x02hi"),
    ]
    items = run(chunks)
    (exchange,) = exchanges(items)
    assert exchange.complete and exchange.request is not None
    assert exchange.request.method == "CONNECT"
    tunnel = [item for item in items if isinstance(item, Unparsed)]
    assert [(item.reason, item.event.data) for item in tunnel] == [
        ("tunnel", chunks[2][1]), ("tunnel", chunks[3][1]),
    ]


def test_upgrade_101_switches_to_tunnel() -> None:
    chunks = [
        (SEND, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        (RECV, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"),
    ]
    items = run(chunks)
    (exchange,) = exchanges(items)
    assert exchange.response is not None and exchange.response.status == 101
    assert [item.reason for item in items if isinstance(item, Unparsed)] == ["tunnel"]


def test_body_beyond_the_limit_is_counted_as_lost() -> None:
    body = b"x" * 1000
    chunks = [
        (SEND, b"GET / HTTP/1.1\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + body),
    ]
    items = run(chunks, tracker=ConnectionTracker(max_body_bytes=100))
    (exchange,) = exchanges(items)
    assert exchange.complete and exchange.response is not None
    assert exchange.response.body == body[:100] and exchange.response.body_truncated
    lost = [item for item in items if isinstance(item, Lost)]
    assert [(item.reason, item.bytes, item.conn_id, item.fd) for item in lost] == [
        (LossReason.PARSER, 900, exchange.connection.conn_id, 7),
    ]


def test_gap_flushes_and_resyncs_at_next_request() -> None:
    keepalive = recording("h1_keepalive")
    tracker = ConnectionTracker()
    items = []
    for index, (direction, data) in enumerate(keepalive):
        if index == 4:  # the head of the POST's response is lost, its body follows
            continue
        lost = 1 if index == 5 else 0
        items += tracker.feed(tls_data(data, direction, timestamp_ns=index, lost_records=lost))
    items += tracker.close(conn_close())
    got = exchanges(items)
    assert got[0].complete and got[0].request is not None and got[0].request.target == "/a"
    # whatever was cut by the gap is incomplete; /c is whole again
    assert got[-1].complete and got[-1].request is not None and got[-1].request.target == "/c"
    assert got[-1].response is not None and got[-1].response.body == b"hello from /c\n"
    assert all(not e.complete for e in got[1:-1])
    assert any(isinstance(item, Unparsed) and item.reason == "desync" for item in items)


def test_gap_inside_a_body_resyncs_on_the_next_start_line() -> None:
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 40
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(b"GET /1 HTTP/1.1\r\n\r\n", SEND))
    items += tracker.feed(tls_data(first, RECV))
    items += tracker.feed(tls_data(b"GET /2 HTTP/1.1\r\n\r\n", SEND, lost_records=2))
    items += tracker.feed(tls_data(b"a" * 20 + second, RECV))
    got = exchanges(items)
    assert not got[0].complete and got[0].response is not None
    assert got[0].response.body == b"a" * 40
    assert got[1].complete and got[1].request is not None and got[1].request.target == "/2"
    assert got[1].response is not None and got[1].response.body == b"ok"


def test_joined_mid_stream_waits_for_a_message_start() -> None:
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(b"ody of an earlier response\r\nmore body", RECV))
    items += tracker.feed(tls_data(b" and more\n", RECV))
    assert [item.reason for item in items if isinstance(item, Unparsed)] == ["mid-stream"] * 2
    keepalive = recording("h1_keepalive")
    for direction, data in keepalive:
        items += tracker.feed(tls_data(data, direction))
    items += tracker.close(conn_close())
    assert [e.request.target for e in exchanges(items) if e.request] == ["/a", "/b", "/c"]
    assert all(e.complete for e in exchanges(items))


def test_joined_mid_stream_start_line_split_across_events() -> None:
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(b"tail of a body\r\nGET /x HT", SEND))
    items += tracker.feed(tls_data(b"TP/1.1\r\nHost: a\r\n\r\n", SEND))
    items += tracker.feed(tls_data(b"HTTP/1.1 204 No Content\r\n\r\n", RECV))
    (exchange,) = exchanges(items)
    assert exchange.complete and exchange.request is not None
    assert exchange.request.target == "/x"
    assert [item.reason for item in items if isinstance(item, Unparsed)] == ["mid-stream"]


def test_garbage_head_desyncs_then_recovers() -> None:
    garbage = b"\x00\x01 not a request line\r\n\r\n"
    chunks = [
        (SEND, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        (SEND, garbage + b"GET /next HTTP/1.1\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
    items = run(chunks)
    got = exchanges(items)
    assert [e.request.target for e in got if e.request is not None] == ["/", "/next"]
    assert len(got) == 2 and all(e.complete for e in got)
    assert any(isinstance(item, Unparsed) and item.reason == "desync" for item in items)
    # what could not be framed is counted, on its connection
    (lost,) = [item for item in items if isinstance(item, Lost)]
    assert lost.reason is LossReason.PARSER and lost.bytes == len(garbage)
    assert (lost.conn_id, lost.fd) == (got[0].connection.conn_id, got[0].connection.fd)


def test_gzip_response_decodes_for_display() -> None:
    payload = gzip.compress(b"hello " * 10)
    chunks = [
        (SEND, b"GET / HTTP/1.1\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
         % (len(payload), payload)),
    ]
    (exchange,) = exchanges(run(chunks))
    assert exchange.response is not None and exchange.response.body == payload
    assert decode_body(exchange.response.body, "gzip") == b"hello " * 10


def test_resync_finds_a_start_split_after_a_long_line() -> None:
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(b"GET /1 HTTP/1.1\r\n\r\n", SEND))
    items += tracker.feed(tls_data(b"GET /2 HTTP/1.1\r\n\r\n", SEND, lost_records=1))
    items += tracker.feed(tls_data(b"\xff" * 20000 + b"HTTP/1.1 2", RECV))  # no line end
    items += tracker.feed(tls_data(b"00 OK\r\nContent-Length: 2\r\n\r\nok", RECV))
    got = exchanges(items)
    assert got[-1].complete and got[-1].request is not None and got[-1].request.target == "/2"
    assert got[-1].response is not None and got[-1].response.body == b"ok"
