"""Connection bookkeeping: keys, roles, bounds, no expiry, pass-through."""

from __future__ import annotations

from ecapture.events import Direction, LossReason, Lost
from ecapture.processor.model import HttpExchange, Unparsed
from ecapture.processor.tracker import ConnectionTracker

from .factories import PID, RECV, SEND, conn_close, exchanges, recording, tls_data
from .traffic import H2Pair, request_headers

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_not_http_is_passed_through_unparsed() -> None:
    tracker = ConnectionTracker()
    first = tls_data(b"EHLO mail.example\r\n", SEND)
    second = tls_data(b"250 OK\r\n", RECV)
    assert tracker.feed(first) == [Unparsed(first, "mid-stream")]
    assert tracker.feed(second) == [Unparsed(second, "mid-stream")]
    # binary from the first byte: the same until the scan budget runs out
    blob = tls_data(b"\x00\x01\x02" * 1000, SEND, conn_id=2)
    items = []
    for _ in range(400):
        items += tracker.feed(blob)
    assert {item.reason for item in items if isinstance(item, Unparsed)} == {
        "mid-stream", "not-http",
    }
    assert items[-1] == Unparsed(blob, "not-http")


def test_parse_http_off_passes_everything_through() -> None:
    tracker = ConnectionTracker(parse_http=False)
    event = tls_data(GET, SEND)
    assert tracker.feed(event) == [Unparsed(event, "not-parsed")]
    reply = tls_data(OK, RECV)
    assert tracker.feed(reply) == [Unparsed(reply, "not-parsed")]
    assert tracker.close(conn_close()) == []


def test_connections_are_keyed_by_pid_and_conn_id() -> None:
    tracker = ConnectionTracker()
    items = []
    for conn_id in (1, 2):
        request = b"GET /%d HTTP/1.1\r\n\r\n" % conn_id
        items += tracker.feed(tls_data(request, SEND, conn_id=conn_id))
    items += tracker.feed(tls_data(GET, SEND, conn_id=1, pid=99))  # another process
    items += tracker.feed(tls_data(OK, RECV, conn_id=2))
    items += tracker.feed(tls_data(OK, RECV, conn_id=1))
    got = exchanges(items)
    assert [(e.connection.conn_id, e.request.target if e.request else None) for e in got] == [
        (2, "/2"), (1, "/1"),
    ]
    assert len(tracker) == 3
    rest = tracker.close(conn_close(conn_id=1, pid=99))
    assert [(e.connection.pid, e.complete) for e in exchanges(rest)] == [(99, False)]


def test_role_from_content_when_the_traced_process_is_the_server() -> None:
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(GET, RECV))  # nginx reads the request
    items += tracker.feed(tls_data(OK, SEND))
    (exchange,) = exchanges(items)
    assert exchange.complete
    assert exchange.connection.client is not None and exchange.connection.client.port == 8443


def test_response_first_capture_marks_the_other_direction_as_client() -> None:
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(OK, RECV))  # joined between request and response
    items += tracker.feed(tls_data(GET, SEND))
    items += tracker.feed(tls_data(OK, RECV))
    got = exchanges(items)
    assert got[0].request is None and got[0].response is not None and not got[0].complete
    assert got[1].complete and got[1].request is not None


def test_least_recently_used_connection_is_evicted_flushed_and_reported() -> None:
    tracker = ConnectionTracker(max_connections=2)
    items = tracker.feed(tls_data(GET, SEND, conn_id=1))
    items += tracker.feed(tls_data(GET, SEND, conn_id=2, fd=9))
    items += tracker.feed(tls_data(b"\r\n", SEND, conn_id=1))  # 1 is used again: 2 is oldest
    assert items == []
    evicted = tracker.feed(tls_data(GET, SEND, conn_id=3, timestamp_ns=5000))
    assert [(e.connection.conn_id, e.complete) for e in exchanges(evicted)] == [(2, False)]
    [lost] = [item for item in evicted if isinstance(item, Lost)]
    assert (lost.reason, lost.conn_id, lost.fd, lost.pid, lost.timestamp_ns) == (
        LossReason.EVICTED, 2, 9, PID, 5000)
    assert len(tracker) == 2


def test_idle_time_never_ends_a_connection() -> None:
    """No timer: the tracker has no clock, only the events' own timestamps;
    an HTTP/2 connection silent for an hour resumes with its HPACK table."""
    pair = H2Pair()
    stream = pair.client.get_next_available_stream_id()
    marker = [("x-marker", "a-value-only-the-dynamic-table-remembers")]
    pair.client.send_headers(stream, request_headers("/first", extra=marker), end_stream=True)
    pair.pump()
    pair.server.send_headers(stream, [(":status", "200")], end_stream=True)
    pair.pump()
    before = len(pair.chunks)
    second = pair.client.get_next_available_stream_id()
    pair.client.send_headers(second, request_headers("/second", extra=marker), end_stream=True)
    pair.pump()
    pair.server.send_headers(second, [(":status", "204")], end_stream=True)
    pair.pump()
    hour = 3600 * 10**9
    tracker = ConnectionTracker()
    items = []
    for index, (direction, data) in enumerate(pair.recorded()):
        later = hour if index >= before else 0  # the second request an hour later
        items += tracker.feed(tls_data(data, direction, timestamp_ns=index + later))
    got = exchanges(items)
    assert [(e.request.target if e.request else None, e.response.status if e.response else None,
             e.complete) for e in got] == [("/first", 200, True), ("/second", 204, True)]
    second_request = got[1].request
    assert second_request is not None
    assert (b"x-marker", b"a-value-only-the-dynamic-table-remembers") in second_request.headers
    # the indexed header of the second request really came from the dynamic table
    assert b"a-value-only" not in b"".join(
        data for index, (_, data) in enumerate(pair.recorded()) if index >= before)
    assert not hasattr(tracker, "expire")


def test_same_ssl_with_a_new_conn_id_is_a_new_connection() -> None:
    """The kernel hands out a new conn_id when an SSL* is reused (SSL_clear,
    or freed and allocated again): two connections, even without a close."""
    tracker = ConnectionTracker()
    ssl = 0x55AA0000
    items = tracker.feed(tls_data(b"GET /one HTTP/1.1\r\n\r\n", SEND, conn_id=1, ssl=ssl))
    items += tracker.feed(tls_data(b"HTTP/1.1 200 OK\r\n", RECV, conn_id=1, ssl=ssl))
    # the close of connection 1 was lost; connection 2 reuses the SSL*
    items += tracker.feed(tls_data(b"GET /two HTTP/1.1\r\n\r\n", SEND, conn_id=2, ssl=ssl,
                                   fd=11))
    items += tracker.feed(tls_data(OK, RECV, conn_id=2, ssl=ssl, fd=11))
    got = exchanges(items)
    assert [(e.connection.conn_id, e.connection.fd, e.request.target if e.request else None,
             e.complete) for e in got] == [(1, 7, "/one", False), (2, 11, "/two", True)]
    assert len(tracker) == 1
    # a close for the first connection arriving late changes nothing
    assert tracker.close(conn_close(conn_id=1)) == []
    assert len(tracker) == 1


def test_same_conn_id_in_two_processes_and_other_ssl_are_kept_apart() -> None:
    tracker = ConnectionTracker()
    tracker.feed(tls_data(GET, SEND, conn_id=1, ssl=0x10))
    tracker.feed(tls_data(GET, SEND, conn_id=2, ssl=0x20))  # another SSL*: both stay open
    tracker.feed(tls_data(GET, SEND, conn_id=3, ssl=0x10, pid=99))  # same SSL*, another process
    assert len(tracker) == 3


def test_flush_at_exit_returns_everything_in_flight() -> None:
    tracker = ConnectionTracker()
    tracker.feed(tls_data(GET, SEND, conn_id=1))
    tracker.feed(tls_data(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", RECV, conn_id=1))
    tracker.feed(tls_data(b"G", SEND, conn_id=2))  # still sniffing
    items = tracker.flush()
    (exchange,) = exchanges(items)
    assert not exchange.complete and exchange.response is not None
    assert exchange.response.body == b"abc"
    assert [item.reason for item in items if isinstance(item, Unparsed)] == ["not-http"]
    assert len(tracker) == 0


def test_close_of_an_unknown_connection_is_harmless() -> None:
    assert ConnectionTracker().close(conn_close(conn_id=12345)) == []


def test_first_line_split_across_events_is_sniffed() -> None:
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(b"GE", SEND))
    items += tracker.feed(tls_data(b"T / HTTP/1.1\r\n\r\n", SEND))
    items += tracker.feed(tls_data(OK, RECV))
    (exchange,) = exchanges(items)
    assert exchange.complete


def test_truncated_event_is_a_gap_after_it() -> None:
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(GET, SEND))
    items += tracker.feed(tls_data(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nxx", RECV,
                                   truncated=True))
    (cut,) = exchanges(items)
    assert not cut.complete
    items = tracker.feed(tls_data(b"yyyy", RECV))  # rest of the lost call: skipped
    assert [item.reason for item in items if isinstance(item, Unparsed)] == ["desync"]
    items = tracker.feed(tls_data(GET, SEND)) + tracker.feed(tls_data(OK, RECV))
    (whole,) = exchanges(items)
    assert whole.complete


def test_tracker_output_types() -> None:
    chunks = recording("h1_keepalive")
    tracker = ConnectionTracker()
    items = []
    for direction, data in chunks:
        items += tracker.feed(tls_data(data, Direction(direction)))
    assert all(isinstance(item, HttpExchange) for item in items)


def test_fd_and_addresses_learned_from_a_later_event() -> None:
    tracker = ConnectionTracker()
    first = tls_data(GET, SEND, fd=-1)
    first = type(first)(**{**{f: getattr(first, f) for f in first.__slots__},
                           "local": None, "remote": None})
    tracker.feed(first)
    (exchange,) = exchanges(tracker.feed(tls_data(OK, RECV, fd=9)))
    assert exchange.connection.fd == 9
    assert exchange.connection.client is not None and exchange.connection.client.port == 40000


def test_requests_without_responses_are_bounded() -> None:
    """Only one direction captured: requests never pair, memory stays bounded."""
    tracker = ConnectionTracker()
    items = []
    for index in range(100):
        items += tracker.feed(tls_data(b"GET /%d HTTP/1.1\r\n\r\n" % index, SEND))
    given_up = exchanges(items)
    assert len(given_up) == 100 - 32
    assert all(not e.complete and e.response is None for e in given_up)
    assert [e.request.target for e in given_up[:2] if e.request] == ["/0", "/1"]
    assert len(exchanges(tracker.flush())) == 32
