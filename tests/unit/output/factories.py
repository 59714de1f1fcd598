"""Build output items in one line, with realistic defaults (mitmproxy's tflow idea)."""

from __future__ import annotations

from typing import Any

from ecapture.events import ConnClose, Direction, Endpoint, LossReason, Lost, TlsData
from ecapture.processor.model import (
    ConnectionInfo,
    GrpcMessage,
    HttpExchange,
    HttpRequest,
    HttpResponse,
    Unparsed,
)

TS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
CLIENT = Endpoint("127.0.0.1", 51234)
SERVER = Endpoint("127.0.0.1", 8443)
CONN_ID = 0x7F00DEADBEEF
SSL = 0x55D0C0FFEE00
COOKIE = 4097


def tls_data(**overrides: Any) -> TlsData:
    data = overrides.pop("data", b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
    fields: dict[str, Any] = {
        "timestamp_ns": TS, "pid": 4242, "tid": 4243, "uid": 1000, "comm": "curl",
        "conn_id": CONN_ID, "fd": 5, "direction": Direction.SEND, "call_id": 1,
        "call_len": len(data), "offset": 0, "data": data, "last_chunk": True,
        "truncated": False, "local": CLIENT, "remote": SERVER, "lost_records": 0,
        "lost_bytes": 0, "ssl": SSL, "socket_cookie": COOKIE,
    }
    fields.update(overrides)
    return TlsData(**fields)


def conn_close(**overrides: Any) -> ConnClose:
    fields: dict[str, Any] = {
        "timestamp_ns": TS, "pid": 4242, "tid": 4243, "uid": 1000, "comm": "curl",
        "conn_id": CONN_ID, "fd": 5, "lost_records": 0, "lost_bytes": 0, "ssl": SSL,
        "socket_cookie": COOKIE,
    }
    fields.update(overrides)
    return ConnClose(**fields)


def lost(**overrides: Any) -> Lost:
    fields: dict[str, Any] = {
        "timestamp_ns": TS, "reason": LossReason.RING_FULL, "records": 3, "bytes": 12345,
    }
    fields.update(overrides)
    return Lost(**fields)


def connection(**overrides: Any) -> ConnectionInfo:
    fields: dict[str, Any] = {
        "pid": 4242, "comm": "curl", "uid": 1000, "fd": 5, "conn_id": CONN_ID,
        "client": CLIENT, "server": SERVER,
    }
    fields.update(overrides)
    return ConnectionInfo(**fields)


def request(**overrides: Any) -> HttpRequest:
    fields: dict[str, Any] = {
        "method": "GET", "target": "/index.html?q=1&lang=en", "authority": "example.test",
        "scheme": None, "version": "HTTP/1.1",
        "headers": ((b"Host", b"example.test"), (b"User-Agent", b"curl/7.88.1"),
                    (b"Cookie", b"session=abc; theme=dark")),
        "body": b"",
    }
    fields.update(overrides)
    return HttpRequest(**fields)


def response(**overrides: Any) -> HttpResponse:
    body = overrides.pop("body", b"hello")
    fields: dict[str, Any] = {
        "status": 200, "reason": "OK", "version": "HTTP/1.1",
        "headers": ((b"Content-Type", b"text/plain"),
                    (b"Content-Length", str(len(body)).encode())),
        "body": body,
    }
    fields.update(overrides)
    return HttpResponse(**fields)


def exchange(**overrides: Any) -> HttpExchange:
    fields: dict[str, Any] = {
        "connection": connection(), "request": request(), "response": response(),
        "started_ns": TS, "finished_ns": TS + 2_500_000,
    }
    fields.update(overrides)
    return HttpExchange(**fields)


def grpc_exchange() -> HttpExchange:
    return exchange(
        request=request(method="POST", target="/helloworld.Greeter/SayHello",
                        scheme="https", version="HTTP/2",
                        headers=((b":method", b"POST"), (b"content-type", b"application/grpc")),
                        body=b"\x00\x00\x00\x00\x03\x0a\x01x"),
        response=response(version="HTTP/2", body=b"\x00\x00\x00\x00\x02\x0a\x00",
                          headers=((b":status", b"200"),
                                   (b"content-type", b"application/grpc")),
                          trailers=((b"grpc-status", b"0"),)),
        stream_id=1,
        grpc_request=(GrpcMessage(compressed=False, data=b"\x0a\x01x"),),
        grpc_response=(GrpcMessage(compressed=True, data=b"\x1f\x8b...",
                                   decoded=b"\x0a\x00"),),
    )


def unparsed(**overrides: Any) -> Unparsed:
    return Unparsed(event=tls_data(**overrides), reason="not-http")

