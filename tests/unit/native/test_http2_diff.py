"""The Rust HTTP/2 parser (ecapture._native.Http2TestParser) against the
Python reference (ecapture.processor.http2.Http2Parser): the same chunks in,
the same items out, call by call. Python's Unparsed items have no Rust
counterpart and are left out; whether the connection was given up is
compared instead.

The scenarios are those of tests/unit/processor/test_http2*.py, then
hypothesis drives real HTTP/2 made by the h2 library: many streams
interleaved, padding, priority, CONTINUATION, informational responses,
trailers, gRPC with gzip, SETTINGS changes, resets, bodies past the limit,
re-cut anywhere, with gaps, truncated chunks and garbage mixed in.
"""

from __future__ import annotations

import gzip
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecapture._native import Http2TestParser
from ecapture.events import Direction, Endpoint, TlsData
from ecapture.processor.http2 import Http2Parser
from ecapture.processor.model import ConnectionInfo, ProcessorItem, Unparsed

SEND = Direction.SEND
RECV = Direction.RECV
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
INFO = ConnectionInfo(
    pid=4242, comm="curl", uid=1000, fd=7, conn_id=0x7F00DEAD0000,
    client=Endpoint("127.0.0.1", 40000), server=Endpoint("127.0.0.1", 8443),
)
RECORDINGS = ["h2_three_streams", "h2_grpc_unary", "nghttp_nginx_h2"]
# examples per hypothesis test; raise it for a longer differential run
EXAMPLES = int(os.environ.get("ECAPTURE_DIFF_EXAMPLES", "150"))

Chunks = Sequence[tuple[Direction, bytes]]


@dataclass
class Feed:
    """One chunk (client's view: SEND is client -> server) and what
    happens around it."""

    direction: Direction
    data: bytes
    gap: bool = False  # records were lost just before it
    truncated: bool = False


def _event(feed: Feed, index: int) -> TlsData:
    return TlsData(
        timestamp_ns=1_000 + index, pid=INFO.pid, tid=INFO.pid, uid=INFO.uid, comm=INFO.comm,
        conn_id=INFO.conn_id, fd=INFO.fd, direction=feed.direction, call_id=index,
        call_len=len(feed.data), offset=0, data=feed.data, last_chunk=True,
        truncated=feed.truncated, local=INFO.client, remote=INFO.server,
        lost_records=1 if feed.gap else 0, lost_bytes=0,
    )


def _parsed(items: list[ProcessorItem]) -> list[ProcessorItem]:
    return [item for item in items if not isinstance(item, Unparsed)]


def compare(feeds: Sequence[Feed], *, max_body: int = 1 << 20, closed: bool = True) -> list[
    ProcessorItem
]:
    """Drive both parsers; assert equal items after every call; return them."""
    python = Http2Parser(INFO, max_body_bytes=max_body)
    rust = Http2TestParser(INFO, max_body)
    everything: list[ProcessorItem] = []
    for index, feed in enumerate(feeds):
        event = _event(feed, index)
        expected: list[ProcessorItem] = []
        got: list[ProcessorItem] = []
        if feed.gap:
            python.gap(event, expected)
            got += rust.gap(event)
        python.feed(event, feed.direction is SEND, expected)
        got += rust.feed(event, feed.direction is SEND)
        assert got == _parsed(expected), f"chunk {index} ({feed.direction.label})"
        assert rust.desynced == python._desynced, f"chunk {index}"
        everything += got
    expected = []
    python.finish(10**9, closed, expected)
    got = rust.finish(10**9, closed)
    assert got == _parsed(expected), "finish"
    return everything + got


def feeds(chunks: Chunks, size: int | None = None) -> list[Feed]:
    if size is None:
        return [Feed(direction, data) for direction, data in chunks]
    return [
        Feed(direction, data[start : start + size])
        for direction, data in chunks
        for start in range(0, len(data), size)
    ]


def exchanges(items: list[ProcessorItem]) -> list[object]:
    return [item for item in items if type(item).__name__ == "HttpExchange"]


# -- the Python unit tests' scenarios -------------------------------------------


def _recording(name: str) -> list[tuple[Direction, bytes]]:
    from processor.factories import recording

    return recording(name)


@pytest.mark.parametrize("name", RECORDINGS)
@pytest.mark.parametrize("size", [None, 1, 3, 9, 10, 17, 100])
def test_recordings_split_anywhere(name: str, size: int | None) -> None:
    items = compare(feeds(_recording(name), size))
    assert exchanges(items)


@pytest.mark.parametrize("name", RECORDINGS)
def test_recordings_with_a_small_body_limit(name: str) -> None:
    compare(feeds(_recording(name)), max_body=10)
    compare(feeds(_recording(name)), max_body=0)


def test_gap_and_truncated_chunks_give_up_alike() -> None:
    chunks = _recording("h2_three_streams")
    for index in range(len(chunks)):
        cut = feeds(chunks)
        cut[index].gap = True
        compare(cut)
        cut = feeds(chunks)
        cut[index].truncated = True
        compare(cut)


def test_flush_without_close_keeps_streams_incomplete() -> None:
    chunks = _recording("h2_three_streams")
    compare(feeds(chunks[:2]), closed=False)


class Pair:
    """A client and a server h2 connection handing each other their bytes;
    received data is acknowledged, so bodies may exceed the first window."""

    def __init__(self, *, server_first: bool = False) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.chunks: list[tuple[Direction, bytes]] = []
        if server_first:
            self.server.initiate_connection()
            self.client.initiate_connection()
            self._move(self.server, self.client, RECV)
        else:
            self.client.initiate_connection()
            self.server.initiate_connection()
        self.pump()

    def _move(self, source: h2.connection.H2Connection, target: h2.connection.H2Connection,
              direction: Direction) -> bool:
        data = source.data_to_send()
        if not data:
            return False
        self.chunks.append((direction, data))
        for event in target.receive_data(data):
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                target.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return True

    def pump(self) -> None:
        while True:
            moved = self._move(self.client, self.server, SEND)
            moved = self._move(self.server, self.client, RECV) or moved
            if not moved:
                return


def request_headers(path: str, method: str = "GET",
                    extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [(":method", method), (":authority", "example.test"), (":scheme", "https"),
            (":path", path), *(extra or [])]


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


def test_server_settings_before_the_preface() -> None:
    pair = Pair(server_first=True)
    pair.client.send_headers(1, request_headers("/first"), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200")], end_stream=True)
    pair.pump()
    assert len(exchanges(compare(feeds(pair.chunks)))) == 1


def test_rst_stream_push_promise_goaway() -> None:
    pair = Pair()
    pair.client.send_headers(1, request_headers("/slow"), end_stream=True)
    pair.client.send_headers(3, request_headers("/index.html"), end_stream=True)
    pair.client.send_headers(5, request_headers("/refused"), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200")])
    pair.server.send_data(1, b"partial")
    pair.server.reset_stream(1)
    pair.server.push_stream(3, 2, request_headers("/style.css"))
    pair.server.send_headers(2, [(":status", "200"), ("content-type", "text/css")])
    pair.server.send_data(2, b"body{}", end_stream=True)
    pair.server.send_headers(3, [(":status", "200")])
    pair.server.send_data(3, b"<html>", end_stream=True)
    pair.server.close_connection(last_stream_id=3)
    pair.pump()
    for size in (None, 5):
        got = exchanges(compare(feeds(pair.chunks, size), closed=False))
        assert len(got) == 4


def test_headers_split_into_continuation_frames() -> None:
    pair = Pair()
    big = "v" * 40000
    pair.client.send_headers(1, request_headers("/big", extra=[("x-big", big)]), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "204")], end_stream=True)
    pair.pump()
    for size in (None, 1000):
        assert len(exchanges(compare(feeds(pair.chunks, size)))) == 1


def _table_size_stream(announce: bool) -> list[tuple[Direction, bytes]]:
    client_encoder = hpack.Encoder()
    server_encoder = hpack.Encoder()
    server_encoder.header_table_size = 65536
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


@pytest.mark.parametrize("announce", [True, False])
def test_header_table_size_setting(announce: bool) -> None:
    items = compare(feeds(_table_size_stream(announce)))
    assert len(exchanges(items)) == 1


def test_table_size_lowered_after_the_ack() -> None:
    """The client lowers its table to 0 once the ACK came: the server's
    next block must shrink the table or the connection is given up."""
    encoder = hpack.Encoder()
    first = encoder.encode([(":status", "200"), ("x-a", "b")])
    chunks = [
        (SEND, PREFACE + _settings() + _headers(1, b"\x82\x84\x87\x41\x01a", True)),
        (RECV, _settings() + _settings(ack=True) + _headers(1, first, True)),
        (SEND, _settings({SettingsFrame.HEADER_TABLE_SIZE: 0})
         + _headers(3, b"\x82\x84\x87\x41\x01a", True)),
        (RECV, _settings(ack=True) + _headers(3, b"\x88", True)),  # no size update: refused
    ]
    compare(feeds(chunks))
    shrunk = [*chunks[:3], (RECV, _settings(ack=True) + _headers(3, b"\x20\x88", True))]
    assert len(exchanges(compare(feeds(shrunk)))) == 2


def test_grpc_gzip_messages() -> None:
    pair = Pair()
    grpc = [("content-type", "application/grpc+proto"), ("grpc-encoding", "gzip")]
    pair.client.send_headers(1, request_headers("/svc/Call", "POST", grpc))
    compressed = gzip.compress(b"\x08\x01")
    first = b"\x01" + len(compressed).to_bytes(4, "big") + compressed
    second = b"\x00\x00\x00\x00\x02\x08\x02"
    broken = b"\x01\x00\x00\x00\x03abc"  # flagged compressed, not gzip
    pair.client.send_data(1, first + second + broken, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    pair.server.send_data(1, b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05ab")
    pair.server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    pair.pump()
    (exchange,) = exchanges(compare(feeds(pair.chunks)))
    assert len(exchange.grpc_request) == 3  # type: ignore[attr-defined]


def test_body_beyond_the_limit() -> None:
    pair = Pair()
    pair.client.send_headers(1, request_headers("/big", "POST"))
    pair.client.send_data(1, b"u" * 3000, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200")])
    pair.server.send_data(1, b"z" * 5000, end_stream=True)
    pair.pump()
    items = compare(feeds(pair.chunks), max_body=1000)
    assert [type(item).__name__ for item in items] == ["HttpExchange", "Lost", "Lost"]


def test_frame_sizes_announced_by_the_other_end() -> None:
    too_long = (20000).to_bytes(3, "big") + b"\x00\x01\x00\x00\x00\x01"
    compare(feeds([(SEND, PREFACE + _settings()), (SEND, too_long)]))
    pair = Pair()
    pair.server.update_settings({SettingsFrame.MAX_FRAME_SIZE: 65536})
    pair.pump()
    pair.client.send_headers(1, request_headers("/upload", "POST"))
    pair.client.send_data(1, b"u" * 30000, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "204")], end_stream=True)
    pair.pump()
    assert len(exchanges(compare(feeds(pair.chunks)))) == 1


def test_many_repeated_requests_hit_the_block_cache() -> None:
    pair = Pair()
    for index in range(40):
        stream_id = pair.client.get_next_available_stream_id()
        pair.client.send_headers(stream_id, request_headers(f"/{index % 3}"), end_stream=True)
        pair.pump()
        pair.server.send_headers(stream_id, [(":status", "200"), ("x-n", str(index % 2))],
                                 end_stream=True)
        pair.pump()
    assert len(exchanges(compare(feeds(pair.chunks)))) == 40


@pytest.mark.parametrize("pad", [0, 1, 4, 255])
@pytest.mark.parametrize("priority", [False, True])
def test_padded_frames(pad: int, priority: bool) -> None:
    headers = HeadersFrame(1, data=b"\x82\x84\x87\x41\x01a", pad_length=pad)
    for flag in ["END_HEADERS", "PADDED"] + (["PRIORITY"] if priority else []):
        headers.flags.add(flag)
    body = DataFrame(1, data=b"hello", pad_length=pad)
    body.flags.add("PADDED")
    body.flags.add("END_STREAM")
    compare(feeds([(SEND, PREFACE + _settings() + headers.serialize() + body.serialize())]))


# frames hyperframe refuses or accepts at the edge of its checks
EDGE_FRAMES = [
    b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x05x",  # DATA padded beyond its length
    b"\x00\x00\x00\x00\x08\x00\x00\x00\x01",  # DATA padded with no pad-length byte
    b"\x00\x00\x01\x00\x08\x00\x00\x00\x01\x00",  # DATA: pad length 0, nothing else
    b"\x00\x00\x03\x01\x24\x00\x00\x00\x01\x00\x00\x00",  # HEADERS priority cut short
    b"\x00\x00\x01\x01\x04\x00\x00\x00\x00\x82",  # HEADERS on stream 0
    b"\x00\x00\x07\x01\x2d\x00\x00\x00\x01\x01\x00\x00\x00\x00\x10\x82",  # padding eats block
    b"\x00\x00\x01\x09\x04\x00\x00\x00\x01\x82",  # CONTINUATION with no block open
    b"\x00\x00\x01\x01\x00\x00\x00\x00\x01\x82" + b"\x00\x00\x00\x06\x01\x00\x00\x00\x00"
    + b"\x00" * 8,  # PING inside a header block
    b"\x00\x00\x05\x02\x00\x00\x00\x00\x01\x00\x00\x00\x00\x10",  # PRIORITY
    b"\x00\x00\x04\x02\x00\x00\x00\x00\x01\x00\x00\x00\x00",  # PRIORITY too short
    b"\x00\x00\x05\x03\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00",  # RST_STREAM too long
    b"\x00\x00\x04\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # RST_STREAM on stream 0
    b"\x00\x00\x06\x04\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",  # SETTINGS ACK with body
    b"\x00\x00\x05\x04\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00",  # SETTINGS not 6-byte
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x03",  # SETTINGS on a stream
    b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"\x00" * 8,  # PING
    b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"\x00" * 7,  # PING too short
    b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"\x00" * 8,  # PING on a stream
    b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # GOAWAY
    b"\x00\x00\x07\x07\x00\x00\x00\x00\x00" + b"\x00" * 7,  # GOAWAY too short
    b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x01",  # WINDOW_UPDATE
    b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x00",  # WINDOW_UPDATE of 0
    b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x80\x00\x00\x01",  # WINDOW_UPDATE reserved bit
    b"\x00\x00\x03\x08\x00\x00\x00\x00\x01\x00\x00\x01",  # WINDOW_UPDATE too short
    b"\x00\x00\x04\x0a\x00\x00\x00\x00\x00\x00\x02ab",  # ALTSVC
    b"\x00\x00\x04\x0a\x00\x00\x00\x00\x00\x00\x03ab",  # ALTSVC origin cut short
    b"\x00\x00\x01\x0a\x00\x00\x00\x00\x00\x00",  # ALTSVC with no origin length
    b"\x00\x00\x03\xee\xff\x00\x00\x00\x05abc",  # extension frame
    b"\x00\x00\x05\x05\x04\x00\x00\x00\x01\x00\x00\x00\x02\x82",  # PUSH_PROMISE
    b"\x00\x00\x05\x05\x04\x00\x00\x00\x01\x00\x00\x00\x03\x82",  # PUSH_PROMISE odd id
    b"\x00\x00\x05\x05\x04\x00\x00\x00\x01\x80\x00\x00\x02\x82",  # PUSH_PROMISE reserved bit
    b"\x00\x00\x03\x05\x04\x00\x00\x00\x01\x00\x00\x00",  # PUSH_PROMISE id cut short
    b"\x00\x00\x06\x05\x0c\x00\x00\x00\x01\x03\x00\x00\x00\x02\x82",  # PUSH_PROMISE padding
    b"\x00\x00\x05\x05\x0c\x00\x00\x00\x01\x00\x00\x00\x00\x02",  # PUSH_PROMISE padded, 0 pad
    b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\x88"  # a response-looking request block
    + b"\x00\x00\x04\x01\x05\x00\x00\x00\x01\x08\x03\x31\x30\x33",  # then trailers
]


@pytest.mark.parametrize("frame", EDGE_FRAMES)
def test_edge_frames(frame: bytes) -> None:
    request = _headers(1, b"\x82\x84\x87\x41\x01a", False)
    for chunks in (
        [(SEND, PREFACE + _settings() + frame)],
        [(SEND, PREFACE + _settings() + request), (RECV, frame)],
    ):
        compare(feeds(chunks))
        compare(feeds(chunks, 4))


STATUSES = [b"200", b"204", b"100", b"103", b"1_3", b"12 ", b"1ab", b"2x0", b"", b"1000", b"09"]


@pytest.mark.parametrize("status", STATUSES)
def test_statuses_as_python_reads_them(status: bytes) -> None:
    block = b"\x08" + bytes([len(status)]) + status  # :status, literal value
    request = _headers(1, b"\x82\x84\x87\x41\x01a", True)
    final = _headers(1, b"\x88\x00\x03x-a\x01b", True)
    compare(feeds([(SEND, PREFACE + _settings() + request),
                   (RECV, _settings() + _headers(1, block, False) + final)]))


# -- hypothesis: real HTTP/2 from h2 ----------------------------------------------

NAMES = ["x-trace-id", "user-agent", "accept", "x-a", "cookie", "x-long"]
WORDS = ["a", "b", "gzip", "hello world", "5f1e0c2a9b", "x" * 300]


@dataclass
class Call:
    method: str
    path: str
    headers: list[tuple[str, str]]
    request_body: bytes
    status: int
    interim: bool
    response_body: bytes
    trailers: bool
    grpc: bool
    pad: int
    priority: bool
    reset: bool
    pieces: int  # DATA frames per body
    extra: dict[str, int] = field(default_factory=dict)


calls = st.builds(
    Call,
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.sampled_from(["/", "/a", "/b?q=1", "/" + "p" * 100]),
    headers=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(WORDS)), max_size=5),
    request_body=st.sampled_from([b"", b"hi", b"r" * 1000, b"R" * 20000]),
    status=st.sampled_from([200, 204, 404, 500]),
    interim=st.booleans(),
    response_body=st.sampled_from([b"", b"ok", b"s" * 5000, b"S" * 70000]),
    trailers=st.booleans(),
    grpc=st.booleans(),
    pad=st.sampled_from([0, 0, 1, 17, 255]),
    priority=st.booleans(),
    reset=st.integers(0, 9).map(lambda value: value == 0),
    pieces=st.integers(1, 3),
)


def _grpc_body(data: bytes, compressed: bool) -> bytes:
    payload = gzip.compress(data) if compressed else data
    return bytes([compressed]) + len(payload).to_bytes(4, "big") + payload


def _send_body(pair: Pair, connection: h2.connection.H2Connection, stream_id: int,
               body: bytes, call: Call, *, end_stream: bool) -> None:
    step = max(1, -(-len(body) // call.pieces))
    limit = connection.max_outbound_frame_size - call.pad - 1
    pieces = [body[start : start + step] for start in range(0, len(body), step)] or [b""]
    for index, piece in enumerate(pieces):
        for start in range(0, max(1, len(piece)), limit):
            part = piece[start : start + limit]
            last = index == len(pieces) - 1 and start + limit >= len(piece)
            if connection.local_flow_control_window(stream_id) < len(part) + call.pad + 1:
                pair.pump()  # the peer's WINDOW_UPDATEs
            connection.send_data(stream_id, part, end_stream=end_stream and last,
                                 pad_length=call.pad or None)


def _traffic(calls_: list[Call], seed: int, table_size: int | None,
             frame_size: int | None) -> list[tuple[Direction, bytes]]:
    shuffle = random.Random(seed)
    client_settings = {}
    if table_size is not None:
        client_settings[h2.settings.SettingCodes.HEADER_TABLE_SIZE] = table_size
    server_settings = {}
    if frame_size is not None:
        server_settings[h2.settings.SettingCodes.MAX_FRAME_SIZE] = frame_size
    pair = Pair(server_first=seed % 2 == 1)
    if client_settings:
        pair.client.update_settings(client_settings)
    if server_settings:
        pair.server.update_settings(server_settings)
    pair.pump()
    streams = []
    for call in calls_:
        stream_id = pair.client.get_next_available_stream_id()
        extra = list(call.headers)
        if call.grpc:
            extra += [("content-type", "application/grpc"), ("grpc-encoding", "gzip")]
        body = call.request_body
        if call.grpc:
            body = _grpc_body(body, True) + _grpc_body(b"plain", False)
        priority = {"priority_weight": 32, "priority_depends_on": 0} if call.priority else {}
        pair.client.send_headers(stream_id, request_headers(call.path, call.method, extra),
                                 end_stream=not body, **priority)
        if body:
            _send_body(pair, pair.client, stream_id, body, call, end_stream=True)
        streams.append((stream_id, call))
        if shuffle.random() < 0.3:
            pair.pump()
    pair.pump()
    shuffle.shuffle(streams)
    for stream_id, call in streams:
        if call.reset:
            pair.server.reset_stream(stream_id)
            continue
        if call.interim:
            pair.server.send_headers(stream_id, [(":status", "100")])
        response = [(":status", str(call.status)), ("server", "h2")]
        if call.grpc:
            response.append(("content-type", "application/grpc"))
        body = _grpc_body(call.response_body, False) if call.grpc else call.response_body
        pair.server.send_headers(stream_id, response, end_stream=not body and not call.trailers)
        if body:
            _send_body(pair, pair.server, stream_id, body, call, end_stream=not call.trailers)
        if call.trailers:
            pair.server.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        if shuffle.random() < 0.5:
            pair.pump()
    pair.pump()
    return pair.chunks


def _recut(chunks: list[tuple[Direction, bytes]], cuts: list[int]) -> list[Feed]:
    """Each chunk cut at positions drawn from `cuts` (cycled)."""
    out = []
    position = 0
    for direction, data in chunks:
        start = 0
        while start < len(data):
            size = cuts[position % len(cuts)] if cuts else len(data)
            position += 1
            out.append(Feed(direction, data[start : start + size]))
            start += size
    return out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls_=st.lists(calls, min_size=1, max_size=6),
    seed=st.integers(0, 1 << 16),
    table_size=st.sampled_from([None, 0, 256, 65536]),
    frame_size=st.sampled_from([None, 65536]),
    cuts=st.lists(st.integers(1, 20000), max_size=8),
    max_body=st.sampled_from([0, 100, 10000, 1 << 20]),
)
def test_h2_traffic(*, calls_: list[Call], seed: int, table_size: int | None,
                    frame_size: int | None, cuts: list[int], max_body: int) -> None:
    chunks = _traffic(calls_, seed, table_size, frame_size)
    items = compare(_recut(chunks, cuts), max_body=max_body)
    assert exchanges(items)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls_=st.lists(calls, min_size=1, max_size=4),
    seed=st.integers(0, 1 << 16),
    cuts=st.lists(st.integers(1, 5000), max_size=6),
    damage=st.lists(
        st.tuples(st.sampled_from(["gap", "truncated", "garbage", "flip", "drop"]),
                  st.integers(0, 10_000), st.binary(min_size=1, max_size=12)),
        min_size=1, max_size=3,
    ),
)
def test_h2_traffic_with_damage(calls_: list[Call], seed: int, cuts: list[int],
                                damage: list[tuple[str, int, bytes]]) -> None:
    feeds_ = _recut(_traffic(calls_, seed, None, None), cuts)
    for kind, where, garbage in damage:
        index = where % len(feeds_)
        feed = feeds_[index]
        if kind == "gap":
            feed.gap = True
        elif kind == "truncated":
            feed.truncated = True
        elif kind == "garbage":
            feeds_.insert(index, Feed(feed.direction, garbage))
        elif kind == "flip" and feed.data:
            at = where % len(feed.data)
            feed.data = feed.data[:at] + bytes([feed.data[at] ^ garbage[0]]) + feed.data[at + 1 :]
        elif kind == "drop":
            del feeds_[index]
            if not feeds_:
                return
    compare(feeds_)


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(
    chunks=st.lists(st.tuples(st.sampled_from([SEND, RECV]), st.binary(max_size=64)),
                    max_size=8),
    start=st.booleans(),
)
def test_garbage(chunks: list[tuple[Direction, bytes]], start: bool) -> None:
    """Arbitrary bytes, after a real preface and SETTINGS or not."""
    if start:
        chunks = [(SEND, PREFACE + _settings()), *chunks]
    compare(feeds(chunks))


def _compressed_payloads() -> list[tuple[str, bytes]]:
    import io
    import zlib

    import brotli
    import zstandard

    text = b"hello grpc " * 20
    raw = zlib.compressobj(wbits=-15)
    deflated = raw.compress(text) + raw.flush()
    zstd = zstandard.ZstdCompressor().compress(text)
    named = io.BytesIO()
    with gzip.GzipFile("message.bin", "wb", fileobj=named, mtime=7) as file:
        file.write(text)
    # FLG.FHCRC set with a header CRC16 (RFC 1952 §2.3.1), then the deflate data
    plain = gzip.compress(text, mtime=0)
    header = bytearray(plain[:10])
    header[3] |= 0x02
    crc = zlib.crc32(bytes(header)) & 0xFFFF
    hcrc = bytes(header) + crc.to_bytes(2, "little") + plain[10:]
    bad_hcrc = bytes(header) + (crc ^ 1).to_bytes(2, "little") + plain[10:]
    cases = [
        ("gzip", gzip.compress(text)), ("x-gzip", gzip.compress(text)),
        ("GZIP", gzip.compress(text)), ("gzip", gzip.compress(text) + gzip.compress(b"2")),
        ("gzip", gzip.compress(text) + b"\0\0"), ("gzip", gzip.compress(text) + b"junk"),
        ("gzip", named.getvalue()), ("gzip", hcrc), ("gzip", bad_hcrc),
        ("gzip", gzip.compress(text)[:-3]), ("gzip", b""), ("gzip", b"not gzip"),
        ("deflate", zlib.compress(text)), ("deflate", deflated), ("deflate", deflated[:-2]),
        ("deflate", zlib.compress(text) + b"tail"), ("br", brotli.compress(text)),
        ("br", brotli.compress(text)[:-2]), ("zstd", zstd), ("zstd", zstd + zstd),
        ("zstd", zstd[:-2]),
        ("zstd", zstd + b"junk"), ("br", brotli.compress(text) + b"junk"),
        ("identity", text), ("snappy", text), ("gzip, identity", gzip.compress(text)),
        ("identity, gzip", gzip.compress(text)), ("", text),
    ]
    return cases


@pytest.mark.parametrize(("encoding", "payload"), _compressed_payloads())
def test_grpc_encodings(encoding: str, payload: bytes) -> None:
    pair = Pair()
    grpc = [("content-type", "application/grpc"), ("grpc-encoding", encoding)]
    pair.client.send_headers(1, request_headers("/svc/Call", "POST", grpc))
    message = b"\x01" + len(payload).to_bytes(4, "big") + payload
    _send_body(pair, pair.client, 1, message + b"\x00\x00\x00\x00\x01x", Call(
        method="POST", path="/", headers=[], request_body=b"", status=200, interim=False,
        response_body=b"", trailers=False, grpc=True, pad=0, priority=False, reset=False,
        pieces=1,
    ), end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")],
                             end_stream=True)
    pair.pump()
    (exchange,) = exchanges(compare(feeds(pair.chunks)))
    assert len(exchange.grpc_request) == 2  # type: ignore[attr-defined]


def _raw_frame(kind: int, flags: int, stream_id: int, body: bytes) -> bytes:
    return len(body).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + body


# bodies that the frame types' checks and HPACK find interesting: real
# header blocks (static and literal fields, Huffman, size updates), SETTINGS
# entries, stream ids, or any bytes
_blocks = st.sampled_from([
    b"\x82\x84\x87\x41\x01a", b"\x88", b"\x89\x5f\x10application/grpc", b"\x08\x03103",
    b"\x20\x88", b"\x3f\xe1\x1f\x88", b"\x40\x03x-a\x01b", b"\xbe", b"\x41\x8c\xf1\xe3\xc2\xe5"
    b"\xf2\x3a\x6b\xa0\xab\x90\xf4\xff", b"\x00\x0ccontent-type\x10application/grpc",
    b"\x00\x00\x00\x00\x02hi", b"\x00\x01\x00\x01\x00\x00", b"\x00\x05\x00\x01\x00\x00",
    b"\x00\x01\x00\x00\x00\x00", b"\x00\x00\x00\x02", b"\x00\x00\x00\x03\x00\x00\x00\x00",
])
_bodies = st.one_of(_blocks, st.binary(max_size=24),
                    st.tuples(st.binary(max_size=6), _blocks).map(lambda pair: pair[0] + pair[1]))
_frames = st.tuples(
    st.sampled_from([SEND, RECV]),
    st.one_of(st.integers(0, 10), st.just(0xEE)),
    st.sampled_from([0, 0x01, 0x04, 0x05, 0x08, 0x0C, 0x20, 0x24, 0x2D, 0xFF]),
    st.sampled_from([0, 1, 2, 3, 4, 0x80000001]),
    _bodies,
)


@settings(max_examples=3 * EXAMPLES, deadline=None)
@given(frames=st.lists(_frames, max_size=12), size=st.sampled_from([None, 1, 5]))
def test_random_frames(frames: list[tuple[Direction, int, int, int, bytes]],
                       size: int | None) -> None:
    """Well-framed frames of any type, flags, stream and body, after a real start."""
    chunks = [(SEND, PREFACE + _settings()), (RECV, _settings())]
    chunks += [(direction, _raw_frame(kind, flags, stream_id, body))
               for direction, kind, flags, stream_id, body in frames]
    compare(feeds(chunks, size))
