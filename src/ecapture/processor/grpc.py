"""gRPC messages inside an HTTP/2 body.

Each message is a Length-Prefixed-Message: a 1-byte compressed flag, a
4-byte big-endian length, then the message (grpc/grpc doc/PROTOCOL-HTTP2.md).
"""

from __future__ import annotations

from ecapture.processor.bodies import decode_body
from ecapture.processor.model import GrpcMessage, Headers

_PREFIX = 5


def is_grpc(content_type: bytes | None) -> bool:
    """application/grpc, application/grpc+proto, application/grpc-web, ..."""
    return content_type is not None and content_type.lower().startswith(b"application/grpc")


def split_grpc_messages(body: bytes, encoding: bytes | None) -> tuple[GrpcMessage, ...]:
    """The complete messages of `body`; a cut-off last message is left out.

    `encoding` is the grpc-encoding header ("gzip", "deflate", "identity").
    """
    messages = []
    pos = 0
    coding = encoding.decode("latin-1") if encoding else None
    while len(body) - pos >= _PREFIX:
        compressed = body[pos] & 1 == 1
        length = int.from_bytes(body[pos + 1 : pos + _PREFIX], "big")
        start = pos + _PREFIX
        if len(body) - start < length:
            break
        data = body[start : start + length]
        pos = start + length
        if not compressed:
            messages.append(GrpcMessage(compressed=False, data=data, decoded=data))
        elif coding is None or coding == "identity":
            messages.append(GrpcMessage(compressed=True, data=data))
        else:
            messages.append(GrpcMessage(True, data, decode_body(data, coding)))
    return tuple(messages)


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
