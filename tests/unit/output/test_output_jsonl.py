from __future__ import annotations

import base64
import gzip
import json
from typing import Any

from ecapture.events import Direction, Endpoint, LossReason
from ecapture.output.jsonl import JsonLinesWriter

from . import factories
from .conftest import MemorySink

COMMON_KEYS = ["type", "module", "ts", "pid", "tid", "comm", "uid"]
DATA_KEYS = [*COMMON_KEYS, "fd", "conn_id", "ssl", "socket_cookie", "direction", "src", "dst",
             "len", "offset", "truncated", "payload_b64"]
CLOSE_KEYS = [*COMMON_KEYS, "fd", "conn_id", "ssl", "socket_cookie", "cause"]
LOST_KEYS = [*COMMON_KEYS, "reason", "records", "bytes", "conn_id", "fd"]
HTTP_KEYS = [*COMMON_KEYS, "fd", "conn_id", "src", "dst", "version", "stream_id", "method",
             "url", "authority", "path", "status", "reason", "duration_ns", "complete",
             "request", "response", "grpc"]
BODY_KEYS = ["headers", "body", "body_b64", "body_len", "body_truncated", "trailers"]


def lines(sink: MemorySink) -> list[dict[str, Any]]:
    text = sink.data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def written(*items: Any, tsize: int = 0) -> tuple[list[dict[str, Any]], JsonLinesWriter]:
    sink = MemorySink()
    writer = JsonLinesWriter("tls", sink, tsize=tsize)
    for item in items:
        writer.write(item)
    writer.flush()
    return lines(sink), writer


def test_data_event_has_exact_keys_and_bytes() -> None:
    payload = bytes(range(256)) * 3
    [event], _ = written(factories.tls_data(data=payload, call_len=70000, offset=16384))
    assert list(event) == DATA_KEYS
    assert event == {
        "type": "data", "module": "tls", "ts": factories.TS, "pid": 4242, "tid": 4243,
        "comm": "curl", "uid": 1000, "fd": 5, "conn_id": factories.CONN_ID,
        "ssl": factories.SSL, "socket_cookie": factories.COOKIE, "direction": "send",
        "src": "127.0.0.1:51234", "dst": "127.0.0.1:8443",
        "len": 70000, "offset": 16384, "truncated": False,
        "payload_b64": base64.b64encode(payload).decode(),
    }
    assert base64.b64decode(event["payload_b64"]) == payload


def test_recv_swaps_src_and_dst_and_unknown_addresses_are_null() -> None:
    [received, unknown], _ = written(
        factories.tls_data(direction=Direction.RECV),
        factories.tls_data(local=None, remote=Endpoint("::1", 443)),
    )
    assert (received["direction"], received["src"], received["dst"]) == (
        "recv", "127.0.0.1:8443", "127.0.0.1:51234")
    assert (unknown["src"], unknown["dst"]) == (None, "[::1]:443")


def test_kernel_truncation_is_reported() -> None:
    [event], writer = written(factories.tls_data(truncated=True, call_len=1 << 30))
    assert event["truncated"] is True and event["len"] == 1 << 30
    assert (writer.cut.records, writer.cut.bytes) == (0, 0)


def test_tsize_cuts_payload_and_counts() -> None:
    big = b"a" * 1000
    events, writer = written(
        factories.tls_data(data=big), factories.tls_data(data=b"short"),
        factories.tls_data(data=big), tsize=100,
    )
    assert [base64.b64decode(event["payload_b64"]) for event in events] == [
        b"a" * 100, b"short", b"a" * 100]
    assert [event["truncated"] for event in events] == [True, False, True]
    assert [event["len"] for event in events] == [1000, 5, 1000]
    assert (writer.cut.records, writer.cut.bytes) == (2, 1800)


def test_close_and_lost_events() -> None:
    events, _ = written(
        factories.conn_close(),
        factories.lost(),
        factories.lost(reason=LossReason.PARSER, pid=7, comm="nginx", conn_id=9, fd=3,
                       records=1, bytes=70),
    )
    close, global_loss, parser_loss = events
    assert list(close) == CLOSE_KEYS
    assert close["type"] == "close" and close["conn_id"] == factories.CONN_ID
    assert (close["ssl"], close["socket_cookie"], close["cause"]) == (
        factories.SSL, factories.COOKIE, "tcp")
    assert list(global_loss) == LOST_KEYS
    assert global_loss == {
        "type": "lost", "module": "tls", "ts": factories.TS, "pid": None, "tid": None,
        "comm": None, "uid": None, "reason": "ring_full", "records": 3, "bytes": 12345,
        "conn_id": None, "fd": None,
    }
    assert (parser_loss["reason"], parser_loss["pid"], parser_loss["conn_id"],
            parser_loss["fd"], parser_loss["bytes"]) == ("parser", 7, 9, 3, 70)


def test_unparsed_is_not_written() -> None:
    events, _ = written(factories.unparsed(), factories.conn_close())
    assert [event["type"] for event in events] == ["close"]


def test_http_exchange() -> None:
    [event], _ = written(factories.exchange())
    assert list(event) == HTTP_KEYS
    assert list(event["request"]) == BODY_KEYS
    assert list(event["response"]) == [*BODY_KEYS, "status"]
    assert event["type"] == "http"
    assert event["url"] == "https://example.test/index.html?q=1&lang=en"
    assert event["path"] == "/index.html?q=1&lang=en"
    assert (event["method"], event["status"], event["reason"]) == ("GET", 200, "OK")
    assert event["duration_ns"] == 2_500_000 and event["complete"] is True
    assert (event["src"], event["dst"]) == ("127.0.0.1:51234", "127.0.0.1:8443")
    assert event["request"]["headers"][0] == ["Host", "example.test"]
    assert event["response"]["body"] == "hello" and event["response"]["body_b64"] is None
    assert event["response"]["body_len"] == 5
    assert event["grpc"] is None


def test_http_body_gzip_is_decoded_and_binary_is_base64() -> None:
    text = "héllo wörld " * 50
    compressed = gzip.compress(text.encode())
    binary = bytes(range(200, 256))
    [decoded, raw], _ = written(
        factories.exchange(response=factories.response(
            body=compressed, headers=((b"Content-Encoding", b"gzip"),))),
        factories.exchange(response=factories.response(body=binary)),
    )
    assert decoded["response"]["body"] == text
    assert decoded["response"]["body_len"] == len(compressed)
    assert raw["response"]["body"] is None
    assert base64.b64decode(raw["response"]["body_b64"]) == binary


def test_http_body_that_cannot_be_decoded_is_shown_as_captured() -> None:
    corrupt = b"\x1f\x8b not really gzip"
    [event], _ = written(factories.exchange(response=factories.response(
        body=corrupt, headers=((b"content-encoding", b"gzip"),))))
    assert base64.b64decode(event["response"]["body_b64"]) == corrupt


def test_http_body_tsize() -> None:
    [event], writer = written(
        factories.exchange(response=factories.response(body=b"z" * 500)), tsize=100)
    assert event["response"]["body"] == "z" * 100
    assert event["response"]["body_truncated"] is True
    assert event["response"]["body_len"] == 500
    assert (writer.cut.records, writer.cut.bytes) == (1, 400)


def test_http_without_request_or_response() -> None:
    [no_request, no_response], _ = written(
        factories.exchange(request=None, complete=False),
        factories.exchange(response=None),
    )
    assert no_request["request"] is None and no_request["method"] is None
    assert no_request["version"] == "HTTP/1.1" and no_request["complete"] is False
    assert no_response["response"] is None and no_response["status"] is None


def test_grpc_messages() -> None:
    [event], _ = written(factories.grpc_exchange())
    assert event["stream_id"] == 1 and event["version"] == "HTTP/2"
    assert event["url"] == "https://example.test/helloworld.Greeter/SayHello"
    assert event["response"]["trailers"] == [["grpc-status", "0"]]
    [request] = event["grpc"]["request"]
    [response] = event["grpc"]["response"]
    assert request == {"compressed": False, "len": 3, "decoded": False,
                       "data_b64": base64.b64encode(b"\x0a\x01x").decode()}
    assert response["compressed"] is True and response["decoded"] is True
    assert base64.b64decode(response["data_b64"]) == b"\x0a\x00"
    assert response["len"] == len(b"\x1f\x8b...")


def test_one_sink_write_per_flush_and_close_is_idempotent() -> None:
    sink = MemorySink()
    writer = JsonLinesWriter("tls", sink)
    for _ in range(10):
        writer.write(factories.tls_data())
    assert sink.data == b""  # nothing leaves before the batch ends
    writer.flush()
    assert len(lines(sink)) == 10 and sink.flushes == 1
    writer.close()
    writer.close()
    assert sink.flushes == 2 and not sink.closed  # the sink belongs to the caller
