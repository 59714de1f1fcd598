"""The HTTP/2 parser gives the same items with either HPACK decoder, and its
own frame-header reading keeps hyperframe's checks (padding, priority)."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from ecapture.processor import http2
from ecapture.processor.hpack_native import CachingDecoder, PythonDecoder
from ecapture.processor.model import Unparsed

from .factories import SEND, exchanges, recording, run
from .test_http2 import H2_RECORDINGS, PREFACE, _settings, _without_times
from .traffic import H2Pair, request_headers


@pytest.mark.parametrize("name", H2_RECORDINGS)
@pytest.mark.parametrize("size", [None, 7])
def test_python_fallback_gives_the_same_items(
    name: str, size: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = recording(name)
    default = run(chunks, size)
    monkeypatch.setattr(http2, "new_decoder", lambda: CachingDecoder(PythonDecoder()))
    assert _without_times(run(chunks, size)) == _without_times(default)
    assert exchanges(default) and all(e.complete for e in exchanges(default))


def test_many_repeated_requests_decode_from_the_cache() -> None:
    pair = H2Pair()
    for index in range(40):
        stream_id = pair.client.get_next_available_stream_id()
        pair.client.send_headers(stream_id, request_headers(f"/{index % 3}"), end_stream=True)
        pair.pump()
        pair.server.send_headers(stream_id, [(":status", "200"), ("x-n", str(index % 2))],
                                 end_stream=True)
        pair.pump()
    got = exchanges(run(pair.recorded()))
    assert [(e.request.target, e.response.headers) for e in got if e.request and e.response] == [
        (f"/{index % 3}", ((b"x-n", str(index % 2).encode()),)) for index in range(40)
    ]


def _padded_stream(pad: int, priority: bool) -> list[tuple[object, bytes]]:
    headers = HeadersFrame(1, data=b"\x82\x84\x87\x41\x01a", pad_length=pad)  # GET / https a
    for flag in ["END_HEADERS", "PADDED"] + (["PRIORITY"] if priority else []):
        headers.flags.add(flag)
    body = DataFrame(1, data=b"hello", pad_length=pad)
    body.flags.add("PADDED")
    body.flags.add("END_STREAM")
    return [(SEND, PREFACE + _settings() + headers.serialize() + body.serialize())]


@pytest.mark.parametrize("priority", [False, True])
def test_padded_frames_lose_their_padding(priority: bool) -> None:
    (exchange,) = exchanges(run(_padded_stream(4, priority)))
    assert exchange.request is not None
    assert (exchange.request.method, exchange.request.target) == ("GET", "/")
    assert exchange.request.authority == "a" and exchange.request.body == b"hello"


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x05x",  # DATA padded beyond its length
        b"\x00\x00\x00\x00\x08\x00\x00\x00\x01",  # DATA padded with no pad-length byte
        b"\x00\x00\x03\x01\x24\x00\x00\x00\x01\x00\x00\x00",  # HEADERS priority cut short
        b"\x00\x00\x01\x01\x04\x00\x00\x00\x00\x82",  # HEADERS on stream 0
        b"\x00\x00\x01\x09\x04\x00\x00\x00\x01\x82",  # CONTINUATION with no block open
    ],
)
def test_malformed_fast_frames_desync(frame: bytes) -> None:
    items = run([(SEND, PREFACE + _settings() + frame)])
    assert [item.reason for item in items if isinstance(item, Unparsed)] == ["desync"]
