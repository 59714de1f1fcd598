"""Hostile bytes in HTTP/1 heads: read as captured, framed exactly, losses counted.

llhttp (strict) rejects these heads; a real peer may have accepted them
(Python's http.server and curl both send control bytes in values), so the
parser must neither lose sync nor drop the exchange.
"""

from __future__ import annotations

import pytest

from ecapture.events import LossReason, Lost
from ecapture.processor import http1
from ecapture.processor.model import HttpExchange, ProcessorItem, Unparsed

from .factories import RECV, SEND, Chunks, exchanges, flipped, recording, run

SPLITS = [None, 1, 2, 5, 13, 1 << 20]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _only_exchanges(items: list[ProcessorItem]) -> list[HttpExchange]:
    """The exchanges, after checking nothing else came out: no desync, no loss."""
    others = [item for item in items if not isinstance(item, HttpExchange)]
    assert others == []
    return exchanges(items)


@pytest.mark.parametrize("size", SPLITS)
@pytest.mark.parametrize("view", ["client", "server"])
def test_recorded_curl_and_http_server_exchange(size: int | None, view: str) -> None:
    """curl -H $'X-Ctl: a\\x01b\\x7f\\x1b[0m' against Python's http.server,
    which answers with an ESC in X-Esc and echoes X-Ctl; then a second
    request on the same connection (record_streams.py)."""
    chunks = recording("h1_hostile_headers")
    if view == "server":
        chunks = flipped(chunks)
    escaped, after = _only_exchanges(run(chunks, size))
    assert escaped.complete and after.complete
    assert escaped.request is not None and escaped.response is not None
    assert escaped.request.headers[-1] == (b"X-Ctl", b"a\x01b\x7f\x1b[0m")
    assert (b"X-Esc", b"\x1b[31mred\x1b[0m") in escaped.response.headers
    assert (b"X-Echo-Ctl", b"a\x01b\x7f\x1b[0m") in escaped.response.headers
    assert escaped.response.body == b"escaped\n"
    assert after.request is not None and after.request.target == "/after"
    assert after.response is not None and after.response.body == b"hello from /after\n"


@pytest.mark.parametrize("size", SPLITS)
@pytest.mark.parametrize("view", ["client", "server"])
def test_control_bytes_in_values_at_both_ends(size: int | None, view: str) -> None:
    # what curl -H $'X-Ctl: a\x01b\x7f' sends, and an http.server answer with an ESC
    chunks: Chunks = [
        (SEND, b"GET /ctl HTTP/1.1\r\nHost: h\r\nX-Ctl: a\x01b\x7f\r\nX-Nul: \x00\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 OK\r\nX-Esc: \x1b[31mred\x1b[0m\r\nContent-Length: 3\r\n\r\nabc"),
        (SEND, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"),
        (RECV, OK),
    ]
    if view == "server":
        chunks = flipped(chunks)
    first, second = _only_exchanges(run(chunks, size))
    assert first.complete and second.complete
    assert first.request is not None and first.response is not None
    assert first.request.headers == (
        (b"Host", b"h"), (b"X-Ctl", b"a\x01b\x7f"), (b"X-Nul", b"\x00"),
    )
    assert first.response.headers == (
        (b"X-Esc", b"\x1b[31mred\x1b[0m"), (b"Content-Length", b"3"),
    )
    assert first.response.body == b"abc"
    assert second.request is not None and second.request.target == "/next"
    assert second.response is not None and second.response.body == b"ok"


@pytest.mark.parametrize("size", SPLITS)
@pytest.mark.parametrize(("lines", "expected"), [
    # any byte in a name, whitespace before the colon, no colon at all
    (b"X(y)\x1b\xff: v\r\n", ((b"X(y)\x1b\xff", b"v"),)),
    (b"X-A : v\r\n", ((b"X-A ", b"v"),)),
    (b"no colon here\r\n", ((b"no colon here", b""),)),
    (b": empty name\r\n", ((b"", b"empty name"),)),
    # 8-bit and odd whitespace in values; a lone CR stays a byte of the value
    (b"X-A: \xc3\xa9\xff\x0b\x0c \r\n", ((b"X-A", b"\xc3\xa9\xff\x0b\x0c"),)),
    (b"X-A: a\rb\r\n", ((b"X-A", b"a\rb"),)),
    # obs-fold: one SP after what the line before kept (RFC 9112 §5.2, as h11)
    (b"X-A: a \r\n\t  b\r\n c\r\n", ((b"X-A", b"a  b c"),)),
    # a whitespace-preceded first line is kept, unfolded, its name as sent
    (b" X-A: a\r\n", ((b" X-A", b"a"),)),
    # bare LF line ends (RFC 9112 §2.2), mixed with CRLF
    (b"X-A: a\nX-B: \x1b\r\n", ((b"X-A", b"a"), (b"X-B", b"\x1b"))),
])
def test_field_lines_kept_as_captured(
    size: int | None, lines: bytes, expected: tuple[tuple[bytes, bytes], ...]
) -> None:
    end = b"\n" if lines.endswith(b"\n") and not lines.endswith(b"\r\n") else b"\r\n"
    chunks: Chunks = [(SEND, b"GET / HTTP/1.1\r\n" + lines + end), (RECV, b"HTTP/1.1 200 OK\r\n"
                      + lines + b"Content-Length: 2\r\n\r\nok"), (SEND, b"GET /2 HTTP/1.1\r\n\r\n"),
                      (RECV, OK)]
    first, second = _only_exchanges(run(chunks, size))
    assert first.request is not None and first.request.headers == expected
    assert first.response is not None
    assert first.response.headers == (*expected, (b"Content-Length", b"2"))
    assert first.response.body == b"ok" and first.complete
    assert second.request is not None and second.request.target == "/2" and second.complete


@pytest.mark.parametrize("size", SPLITS)
def test_bare_lf_heads_and_body_containing_crlfcrlf(size: int | None) -> None:
    body = b"x\r\n\r\ny"  # a CRLF CRLF after a bare-LF head must not end the head
    chunks: Chunks = [
        (SEND, b"POST /lf HTTP/1.1\nContent-Length: 6\n\n" + body),
        (RECV, b"HTTP/1.1 200 OK\nX-Esc: \x1b\nContent-Length: 2\n\nok"),
        (SEND, b"\nGET /after HTTP/1.1\n\n"),  # an empty line before a start is skipped
        (RECV, b"HTTP/1.1 204 No Content\n\n"),
    ]
    first, second = _only_exchanges(run(chunks, size))
    assert first.request is not None and first.request.body == body
    assert first.response is not None and first.response.headers[0] == (b"X-Esc", b"\x1b")
    assert first.response.body == b"ok"
    assert second.request is not None and second.request.target == "/after"
    assert second.response is not None and second.response.status == 204
    assert first.complete and second.complete


@pytest.mark.parametrize("size", SPLITS)
@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_no_body_responses_keep_their_framing(size: int | None, method: str) -> None:
    """HEAD, 1xx, 204, 304 with hostile fields: still no body (RFC 9112 §6.3)."""
    hostile = b"X-\x01: \x1b\r\nContent-Length: 5\r\nContent-Length: 5\r\n"
    chunks: Chunks = [
        (SEND, b"%s /a HTTP/1.1\r\n\r\n" % method.encode()),
        (RECV, b"HTTP/1.1 100 Continue\r\nX: \x00\r\n\r\n"
         + b"HTTP/1.1 304 Not Modified\r\n" + hostile + b"\r\n"),
        (SEND, b"GET /b HTTP/1.1\r\n\r\n"),
        (RECV, b"HTTP/1.1 204 No Content\r\n" + hostile + b"\r\n"),
        (SEND, b"GET /c HTTP/1.1\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 OK\r\n" + hostile + b"\r\nhello"),
    ]
    got = _only_exchanges(run(chunks, size))
    assert [(e.response.status, e.response.body) for e in got if e.response] == [
        (304, b""), (204, b""), (200, b"hello"),
    ]
    assert got[0].response is not None and got[0].response.informational == (100,)
    assert all(e.complete for e in got)


@pytest.mark.parametrize("size", SPLITS)
@pytest.mark.parametrize("lengths", [
    b"Content-Length: 4\r\nContent-Length: 4\r\n", b"Content-Length: 4, 4\r\n",
    b"Content-Length: 4,\r\n", b"Content-Length:  004 \r\n",
])
def test_repeated_equal_lengths_are_one_length(size: int | None, lengths: bytes) -> None:
    """RFC 9110 §8.6: a list or repeat of one number is that number."""
    chunks: Chunks = [
        (SEND, b"POST / HTTP/1.1\r\n" + lengths + b"\r\nbody"),
        (RECV, b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\nokok"),
        (SEND, b"GET /2 HTTP/1.1\r\n\r\n"),
        (RECV, OK),
    ]
    first, second = _only_exchanges(run(chunks, size))
    assert first.request is not None and first.request.body == b"body"
    assert first.response is not None and first.response.body == b"okok"
    assert second.request is not None and second.request.target == "/2" and second.complete


@pytest.mark.parametrize("size", SPLITS)
@pytest.mark.parametrize("lengths", [
    b"Content-Length: 4\r\nContent-Length: 5\r\n", b"Content-Length: 4, 5\r\n",
    b"Content-Length: abc\r\n", b"Content-Length: -4\r\n", b"Content-Length: +4\r\n",
    b"Content-Length: 0x4\r\n", b"Content-Length:\r\n", b"Content-Length: 4\x00\r\n",
])
@pytest.mark.parametrize("view", ["client", "server"])
def test_invalid_request_length_reports_head_and_counts_the_rest(
    size: int | None, lengths: bytes, view: str
) -> None:
    """RFC 9112 §6.3 item 5: the server answers 400 and closes; the request
    head is reported, its exchange incomplete, what follows it counted lost."""
    after = b"body bytes of unknown length"
    chunks: Chunks = [
        (SEND, b"POST /bad HTTP/1.1\r\nHost: h\r\n" + lengths + b"\r\n" + after),
        (RECV, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    ]
    if view == "server":
        chunks = flipped(chunks)
    items = run(chunks, size)
    (exchange,) = exchanges(items)
    assert exchange.request is not None and exchange.request.target == "/bad"
    assert exchange.request.body == b""
    assert exchange.response is not None and exchange.response.status == 400
    assert not exchange.complete
    losses = [item for item in items if isinstance(item, Lost)]
    assert [(lost.reason, lost.bytes) for lost in losses] == [(LossReason.PARSER, len(after))]
    assert losses[0].conn_id == exchange.connection.conn_id
    assert losses[0].fd == exchange.connection.fd
    assert all(item.reason == "desync" for item in items if isinstance(item, Unparsed))


@pytest.mark.parametrize("size", SPLITS)
def test_invalid_response_length_then_the_next_response_resyncs(size: int | None) -> None:
    chunks: Chunks = [
        (SEND, b"GET /1 HTTP/1.1\r\n\r\n"),
        (RECV, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
        (SEND, b"GET /2 HTTP/1.1\r\n\r\n"),
        (RECV, OK),
    ]
    items = run(chunks, size)
    first, second = exchanges(items)
    assert first.response is not None and first.response.status == 200
    assert not first.complete and first.response.body == b""
    assert second.complete and second.response is not None and second.response.body == b"ok"
    assert [lost.bytes for lost in items if isinstance(lost, Lost)] == [3]


@pytest.mark.parametrize("size", SPLITS)
def test_transfer_encoding_overrides_content_length(size: int | None) -> None:
    """RFC 9112 §6.3 item 3 (llhttp refuses both at once; the peer may not)."""
    chunks: Chunks = [
        (SEND, b"POST / HTTP/1.1\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n0\r\nX-T: \x1b\r\n\r\n"),
        (RECV, OK),
    ]
    (exchange,) = _only_exchanges(run(chunks, size))
    assert exchange.request is not None and exchange.request.body == b"abc"
    assert exchange.request.trailers == ((b"X-T", b"\x1b"),)
    assert exchange.complete


def test_request_transfer_coding_not_chunked_is_unframed() -> None:
    """RFC 9112 §6.3 item 4: a request's length cannot be known."""
    chunks: Chunks = [
        (SEND, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08"),
        (RECV, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
    ]
    items = run(chunks)
    (exchange,) = exchanges(items)
    assert exchange.response is not None and exchange.response.status == 400
    assert not exchange.complete
    assert [lost.bytes for lost in items if isinstance(lost, Lost)] == [3]


def test_a_head_cut_by_the_close_is_counted() -> None:
    head = b"GET /cut HTTP/1.1\r\nX-A: \x1b"
    items = run([(SEND, b"GET / HTTP/1.1\r\n\r\n"), (RECV, OK), (SEND, head)])
    assert len(exchanges(items)) == 1
    assert [(lost.reason, lost.bytes) for lost in items if isinstance(lost, Lost)] == [
        (LossReason.PARSER, len(head)),
    ]


def test_start_lines_that_are_not_http_still_desync() -> None:
    for head, is_request in [
        (b"G\x00T / HTTP/1.1\r\n\r\n", True), (b"GET / HTTP/1.2\r\n\r\n", True),
        (b"GET HTTP/1.1\r\n\r\n", True), (b"HTTP/1.1 20 OK\r\n\r\n", False),
        (b"HTTP/2 200 OK\r\n\r\n", False), (b"\r\n\r\n", True),
    ]:
        assert http1._parse_head(head, is_request) is None, head


def test_lenient_reader_agrees_with_llhttp_where_llhttp_accepts() -> None:
    heads = [
        b"GET /a?b=c HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nX-Empty:\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 3\r\nX-Y:  z \t\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 \xff\x1b\r\nX: \xff\r\n\r\n",
    ]
    for head in heads:
        is_request = not head.startswith(b"HTTP/")
        strict = http1._parse_head(head, is_request)
        assert strict is not None
        assert http1._lenient_head(head, is_request) == strict
