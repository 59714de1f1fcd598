"""Undo Content-Encoding for display, never trusting the size a body claims.

Each decoder is streaming with an output cap (a decompression bomb of a few
KiB can expand to GiB): more output than `limit` means "cannot decode".
Codings are listed in the order they were applied (RFC 9110 §8.4), so they
are undone from the last to the first.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

# brotli and zstandard are imported by their decoders: only a body in that
# coding needs them, and a capture that never sees one (or writes JSON
# through the native core) does not pay for loading them.

DEFAULT_DECODED_LIMIT = 64 << 20

# zlib wbits: 16 + MAX_WBITS reads a gzip header, MAX_WBITS a zlib header,
# -MAX_WBITS raw deflate (zlib manual, inflateInit2).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


def _inflate(body: bytes, wbits: int, limit: int) -> bytes | None:
    """zlib/gzip/raw deflate; gzip may hold several members (RFC 1952 §2.2)."""
    out = bytearray()
    data = body
    while True:
        decompressor = zlib.decompressobj(wbits)
        try:
            out += decompressor.decompress(data, limit + 1 - len(out))
        except zlib.error:
            return None
        if len(out) > limit or decompressor.unconsumed_tail:
            return None
        if not decompressor.eof:
            return None  # cut short: the stream did not end
        data = decompressor.unused_data
        if wbits != _GZIP_WBITS or not data.strip(b"\0"):
            return bytes(out)


def _gunzip(body: bytes, limit: int) -> bytes | None:
    return _inflate(body, _GZIP_WBITS, limit)


def _deflate(body: bytes, limit: int) -> bytes | None:
    # "deflate" means zlib-wrapped (RFC 9110 §8.4.1.2), but some servers send
    # raw deflate: try both, as browsers do.
    decoded = _inflate(body, _ZLIB_WBITS, limit)
    return decoded if decoded is not None else _inflate(body, _RAW_DEFLATE_WBITS, limit)


def _unbrotli(body: bytes, limit: int) -> bytes | None:
    import brotli

    decompressor = brotli.Decompressor()
    out = bytearray()
    try:
        out += decompressor.process(body, output_buffer_limit=limit + 1)
        while len(out) <= limit and not decompressor.can_accept_more_data():
            chunk = decompressor.process(b"", output_buffer_limit=limit + 1 - len(out))
            if not chunk:
                break
            out += chunk
    except brotli.error:
        return None
    if len(out) > limit or not decompressor.is_finished():
        return None
    return bytes(out)


def _unzstd(body: bytes, limit: int) -> bytes | None:
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    try:
        with decompressor.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            out = reader.read(limit + 1)
    except zstandard.ZstdError:
        return None
    if len(out) > limit or (body and not out and not _zstd_empty_frame(body)):
        return None
    return bytes(out)


def _zstd_empty_frame(body: bytes) -> bool:
    import zstandard

    try:
        return zstandard.frame_content_size(body) == 0
    except zstandard.ZstdError:
        return False


_DECODERS: dict[str, Callable[[bytes, int], bytes | None]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,  # RFC 9110 §8.4.1.3: treat x-gzip as gzip
    "deflate": _deflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}


def decode_body(
    body: bytes, content_encoding: str | None, *, limit: int = DEFAULT_DECODED_LIMIT
) -> bytes | None:
    """The body with every content coding undone; None when it cannot be decoded.

    `content_encoding` is the header value ("gzip", "deflate, br", ...);
    None or "identity" returns the body as is.
    """
    if not content_encoding:
        return body
    data = body
    for coding in reversed(content_encoding.split(",")):
        name = coding.strip().lower()
        if name in ("", "identity"):
            continue
        decoder = _DECODERS.get(name)
        if decoder is None:
            return None
        decoded = decoder(data, limit)
        if decoded is None:
            return None
        data = decoded
    return data
