"""HTTP/2 and gRPC through the tracker, on traffic from h2, nghttp and nginx."""

from __future__ import annotations

import gzip

import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

from ecapture.events import LossReason, Lost
from ecapture.processor.model import HttpExchange, Unparsed
from ecapture.processor.tracker import ConnectionTracker

from .factories import RECV, SEND, conn_close, exchanges, flipped, recording, run, tls_data
from .traffic import H2Pair, request_headers

H2_RECORDINGS = ["h2_three_streams", "h2_grpc_unary", "nghttp_nginx_h2"]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _without_times(items: list[object]) -> list[object]:
    return [
        (item.stream_id, item.request, item.response, item.grpc_request, item.grpc_response,
         item.complete) if isinstance(item, HttpExchange) else item
        for item in items
    ]


@pytest.mark.parametrize("name", H2_RECORDINGS)
@pytest.mark.parametrize("size", [1, 3, 9, 10, 17, 100, 1 << 20])
def test_recording_split_anywhere(name: str, size: int) -> None:
    chunks = recording(name)
    whole = run(chunks)
    assert exchanges(whole) and all(e.complete for e in exchanges(whole))
    assert _without_times(run(chunks, size)) == _without_times(whole)


def test_three_concurrent_streams_with_hpack_reuse() -> None:
    chunks = recording("h2_three_streams")
    # the three requests went out in one write, before any response
    first_send = chunks[0][1]
    assert first_send.startswith(PREFACE) and first_send.count(b"\x01\x05\x00\x00\x00") == 3
    blocks = _header_blocks(first_send[len(PREFACE):])
    # streams 3 and 5 repeat user-agent and x-trace-id from the dynamic table:
    # their blocks are much smaller than the first one
    assert len(blocks) == 3 and max(len(blocks[1]), len(blocks[2])) < len(blocks[0]) // 2
    got = exchanges(run(chunks))
    assert [(e.stream_id, e.request.target if e.request else None) for e in got] == [
        (1, "/one"), (3, "/two"), (5, "/three"),
    ]
    for exchange in got:
        assert exchange.request is not None and exchange.response is not None
        assert (exchange.request.method, exchange.request.scheme) == ("GET", "http")
        assert exchange.request.authority == "127.0.0.1"
        assert dict(exchange.request.headers)[b"x-trace-id"] == b"5f1e0c2a9b"
        assert exchange.response.status == 200 and exchange.response.version == "HTTP/2"
        assert exchange.response.body == b"stream %d says hi\n" % exchange.stream_id


def _header_blocks(frames: bytes) -> list[bytes]:
    blocks = []
    pos = 0
    while pos + 9 <= len(frames):
        frame, length = HeadersFrame.parse_frame_header(memoryview(frames[pos : pos + 9]))
        frame.parse_body(memoryview(frames[pos + 9 : pos + 9 + length]))
        if isinstance(frame, HeadersFrame):
            blocks.append(frame.data)
        pos += 9 + length
    return blocks


def test_grpc_unary_call_messages_are_split_and_gunzipped() -> None:
    (exchange,) = exchanges(run(recording("h2_grpc_unary")))
    assert exchange.request is not None and exchange.response is not None
    assert exchange.request.target == "/helloworld.Greeter/SayHello"
    (request_message,) = exchange.grpc_request
    (response_message,) = exchange.grpc_response
    assert request_message.compressed and request_message.decoded == b"\x0a\x05world"
    assert response_message.compressed and response_message.decoded == b"\x0a\x0bHello world"
    assert dict(exchange.response.trailers)[b"grpc-status"] == b"0"


def test_nginx_server_side_capture() -> None:
    """As nginx would see it: requests are RECV; roles from the preface."""
    chunks = recording("nghttp_nginx_h2")
    as_client = exchanges(run(chunks))
    as_server = exchanges(run(flipped(chunks)))
    assert [(e.stream_id, e.request, e.response) for e in as_server] == [
        (e.stream_id, e.request, e.response) for e in as_client
    ]
    assert [e.request.target for e in as_client if e.request] == [
        "/small.txt", "/index.html", "/big.txt",
    ]


def test_server_settings_captured_before_the_preface() -> None:
    pair = H2Pair(server_first=True)
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_headers(stream_id, request_headers("/first"), end_stream=True)
    pair.pump()
    pair.server.send_headers(stream_id, [(":status", "200")], end_stream=True)
    pair.pump()
    chunks = pair.recorded()
    assert chunks[0][0] is RECV  # the server's SETTINGS came first
    (exchange,) = exchanges(run(chunks))
    assert exchange.complete and exchange.request is not None
    assert exchange.request.target == "/first"


def test_rst_stream_emits_an_incomplete_exchange() -> None:
    pair = H2Pair()
    pair.client.send_headers(1, request_headers("/slow"), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200")])
    pair.server.send_data(1, b"partial")
    pair.server.reset_stream(1)
    pair.pump()
    items = run(pair.recorded(), close=False)
    (exchange,) = exchanges(items)
    assert not exchange.complete and exchange.response is not None
    assert exchange.response.body == b"partial"


def test_push_promise_becomes_its_own_exchange() -> None:
    pair = H2Pair()
    pair.client.send_headers(1, request_headers("/index.html"), end_stream=True)
    pair.pump()
    pair.server.push_stream(1, 2, request_headers("/style.css"))
    pair.server.send_headers(2, [(":status", "200"), ("content-type", "text/css")])
    pair.server.send_data(2, b"body{}", end_stream=True)
    pair.server.send_headers(1, [(":status", "200")])
    pair.server.send_data(1, b"<html>", end_stream=True)
    pair.pump()
    got = exchanges(run(pair.recorded()))
    assert [(e.stream_id, e.request.target if e.request else None, e.complete) for e in got] == [
        (2, "/style.css", True), (1, "/index.html", True),
    ]


def test_headers_split_into_continuation_frames() -> None:
    big = "v" * 40000  # larger than the 16 KiB default frame: HEADERS + CONTINUATION
    pair = H2Pair()
    pair.client.send_headers(1, request_headers("/big", extra=[("x-big", big)]), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "204")], end_stream=True)
    pair.pump()
    chunks = pair.recorded()
    assert b"\x09\x04\x00\x00\x00\x01" in b"".join(d for _, d in chunks)  # a CONTINUATION
    for size in (None, 1000):
        (exchange,) = exchanges(run(chunks, size))
        assert exchange.complete and exchange.request is not None
        assert dict(exchange.request.headers)[b"x-big"] == big.encode()


def _frame(frame: object) -> bytes:
    return frame.serialize()  # type: ignore[attr-defined, no-any-return]


def _settings(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    frame = SettingsFrame(0, settings=values or {})
    if ack:
        frame.flags.add("ACK")
    return _frame(frame)


def _headers(stream_id: int, block: bytes, end_stream: bool) -> bytes:
    frame = HeadersFrame(stream_id, data=block)
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return _frame(frame)


def _table_size_stream(announce: bool) -> list[tuple[object, bytes]]:
    """A server encoder grows its table to 65536 (RFC 7541 §6.3 size update);
    that is legal only if the client announced SETTINGS_HEADER_TABLE_SIZE."""
    client_encoder = hpack.Encoder()
    server_encoder = hpack.Encoder()
    server_encoder.header_table_size = 65536  # emits a size update in the next block
    client_settings = {SettingsFrame.HEADER_TABLE_SIZE: 65536} if announce else {}
    request = client_encoder.encode([(":method", "GET"), (":scheme", "https"),
                                     (":path", "/"), (":authority", "a")])
    response = server_encoder.encode([(":status", "200"), ("x-big-table", "yes")])
    body = DataFrame(1, data=b"ok")
    body.flags.add("END_STREAM")
    return [
        (SEND, PREFACE + _settings(client_settings) + _headers(1, request, True)),
        (RECV, _settings() + _settings(ack=True) + _headers(1, response, False) + _frame(body)),
        (SEND, _settings(ack=True)),
    ]


def test_header_table_size_setting_applies_to_the_other_direction() -> None:
    (exchange,) = exchanges(run(_table_size_stream(announce=True)))
    assert exchange.complete and exchange.response is not None
    assert dict(exchange.response.headers)[b"x-big-table"] == b"yes"
    # without the client's SETTINGS the same response block is a protocol
    # error: the observer goes raw instead of guessing
    items = run(_table_size_stream(announce=False))
    assert not any(e.complete for e in exchanges(items))
    assert any(isinstance(item, Unparsed) and item.reason == "desync" for item in items)


def test_gap_makes_http2_fall_back_to_raw() -> None:
    chunks = recording("h2_three_streams")
    tracker = ConnectionTracker()
    items = tracker.feed(tls_data(chunks[0][1], chunks[0][0]))
    items += tracker.feed(tls_data(chunks[1][1], chunks[1][0], lost_records=1))
    for direction, data in chunks[2:]:
        items += tracker.feed(tls_data(data, direction))
    items += tracker.close(conn_close())
    # the three streams were open at the gap: emitted incomplete, then raw
    assert [(e.stream_id, e.complete) for e in exchanges(items)] == [
        (1, False), (3, False), (5, False),
    ]
    unparsed = [item for item in items if isinstance(item, Unparsed)]
    assert len(unparsed) == len(chunks) - 1
    assert {item.reason for item in unparsed} == {"desync"}


def test_grpc_gzip_message_built_by_hand() -> None:
    """Two messages in one DATA frame, one compressed, one not."""
    pair = H2Pair()
    grpc = [("content-type", "application/grpc+proto"), ("grpc-encoding", "gzip")]
    pair.client.send_headers(1, request_headers("/svc/Call", "POST", grpc))
    compressed = gzip.compress(b"\x08\x01")
    first = b"\x01" + len(compressed).to_bytes(4, "big") + compressed
    second = b"\x00\x00\x00\x00\x02\x08\x02"
    pair.client.send_data(1, first + second, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    pair.server.send_data(1, b"\x00\x00\x00\x00\x00")
    pair.server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    pair.pump()
    (exchange,) = exchanges(run(pair.recorded()))
    assert [(m.compressed, m.decoded) for m in exchange.grpc_request] == [
        (True, b"\x08\x01"), (False, b"\x08\x02"),
    ]
    assert [(m.compressed, m.data) for m in exchange.grpc_response] == [(False, b"")]


def test_goaway_flushes_streams_above_the_last_processed_one() -> None:
    pair = H2Pair()
    pair.client.send_headers(1, request_headers("/kept"), end_stream=True)
    pair.client.send_headers(3, request_headers("/refused"), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200")])
    pair.server.close_connection(last_stream_id=1)
    pair.pump()
    items = run(pair.recorded(), close=False)
    got = exchanges(items)
    assert [(e.stream_id, e.complete) for e in got] == [(3, False), (1, False)]
    assert got[0].response is None


def test_http2_body_beyond_the_limit_is_counted_as_lost() -> None:
    pair = H2Pair()
    pair.client.send_headers(1, request_headers("/big"), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200")])
    pair.server.send_data(1, b"z" * 5000, end_stream=True)
    pair.pump()
    items = run(pair.recorded(), tracker=ConnectionTracker(max_body_bytes=1000))
    (exchange,) = exchanges(items)
    assert exchange.complete and exchange.response is not None
    assert exchange.response.body == b"z" * 1000 and exchange.response.body_truncated
    (lost,) = [item for item in items if isinstance(item, Lost)]
    assert (lost.reason, lost.bytes) == (LossReason.PARSER, 4000)
    assert lost.conn_id == exchange.connection.conn_id


def test_frame_longer_than_the_announced_maximum_is_a_desync() -> None:
    too_long = (20000).to_bytes(3, "big") + b"\x00\x01\x00\x00\x00\x01"  # DATA, 20000 bytes
    items = run([(SEND, PREFACE + _settings()), (SEND, too_long)])
    assert [item.reason for item in items if isinstance(item, Unparsed)] == ["desync"]
    # announced by the server, the same length is fine for the client
    pair = H2Pair()
    pair.server.update_settings({SettingsFrame.MAX_FRAME_SIZE: 65536})
    pair.pump()
    pair.client.send_headers(1, request_headers("/upload", "POST"))
    pair.client.send_data(1, b"u" * 30000, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "204")], end_stream=True)
    pair.pump()
    chunks = pair.recorded()
    assert any(b"\x00\x75\x30\x00" in data for _, data in chunks)  # one 30000-byte DATA frame
    (exchange,) = exchanges(run(chunks))
    assert exchange.complete and exchange.request is not None
    assert exchange.request.body == b"u" * 30000
