"""Content-Encoding undone for display, with an output cap."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from ecapture.processor.bodies import decode_body

TEXT = b"The quick brown fox jumps over the lazy dog. " * 40


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(("encoded", "coding"), [
    (gzip.compress(TEXT), "gzip"),
    (gzip.compress(TEXT), "x-gzip"),
    (gzip.compress(TEXT[:100]) + gzip.compress(TEXT[100:]), "gzip"),  # two members
    (zlib.compress(TEXT), "deflate"),
    (_raw_deflate(TEXT), "deflate"),
    (brotli.compress(TEXT), "br"),
    (zstandard.ZstdCompressor().compress(TEXT), "zstd"),
    (brotli.compress(gzip.compress(TEXT)), "gzip, br"),  # applied gzip first, then br
    (gzip.compress(TEXT), " GZIP , identity"),
    (TEXT, "identity"),
    (TEXT, None),
    (TEXT, ""),
])
def test_decodes(encoded: bytes, coding: str | None) -> None:
    assert decode_body(encoded, coding) == TEXT


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "compress", "gzip, br"])
def test_undecodable_is_none(coding: str) -> None:
    assert decode_body(b"definitely not compressed \x00\xff", coding) is None


def test_truncated_stream_is_none() -> None:
    assert decode_body(gzip.compress(TEXT)[:-10], "gzip") is None
    assert decode_body(brotli.compress(TEXT)[:-4], "br") is None


@pytest.mark.parametrize("compress", [
    gzip.compress, zlib.compress, brotli.compress, zstandard.ZstdCompressor().compress,
])
def test_output_cap_stops_a_bomb(compress: object) -> None:
    bomb = compress(b"\0" * (4 << 20))  # type: ignore[operator]
    coding = {gzip.compress: "gzip", zlib.compress: "deflate", brotli.compress: "br"}.get(
        compress, "zstd"  # type: ignore[call-overload]
    )
    assert len(bomb) < 100_000
    assert decode_body(bomb, coding, limit=1 << 20) is None
    assert decode_body(bomb, coding, limit=4 << 20) == b"\0" * (4 << 20)
