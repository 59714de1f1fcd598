"""The libnghttp2 and hpack decoders give the same answers on the same blocks."""

from __future__ import annotations

import logging
from collections.abc import Callable

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecapture.processor import hpack_native
from ecapture.processor.hpack_native import (
    CachingDecoder,
    Fields,
    HeaderDecoder,
    HpackDecodeError,
    NativeDecoder,
    PythonDecoder,
    changes_table,
)

needs_native = pytest.mark.skipif(
    not hpack_native.native_available(), reason="libnghttp2 (Debian libnghttp2-14) is not loadable"
)

DECODERS: dict[str, Callable[[], HeaderDecoder]] = {
    "python": PythonDecoder,
    "cached python": lambda: CachingDecoder(PythonDecoder()),
}
if hpack_native.native_available():
    DECODERS |= {"native": NativeDecoder, "cached native": lambda: CachingDecoder(NativeDecoder())}

names = st.sampled_from([":method", ":path", ":status", "user-agent", "cookie", "x-trace-id",
                         "content-type", "date", "etag"]) | st.text("abcxyz-", min_size=1,
                                                                    max_size=12)
values = st.sampled_from(["GET", "/", "200", "h2load", "a=1"]) | st.binary(max_size=300)
field = st.tuples(names, values, st.booleans())  # (name, value, never indexed)
blocks = st.lists(st.lists(field, max_size=8), min_size=1, max_size=12)
table_sizes = st.lists(st.sampled_from([None, 0, 64, 256, 4096, 8192]), min_size=12,
                       max_size=12)


def _outcome(decoder: HeaderDecoder, block: bytes) -> Fields | str:
    try:
        return decoder.decode(block)
    except HpackDecodeError:
        return "error"


@given(blocks, table_sizes)
@settings(max_examples=300, deadline=None)
def test_every_decoder_reads_what_hpack_encoded(
    header_lists: list[list[tuple[str, bytes | str, bool]]], sizes: list[int | None]
) -> None:
    encoder = hpack.Encoder()
    decoders = {name: make() for name, make in DECODERS.items()}
    for decoder in decoders.values():
        decoder.max_allowed_table_size = 8192  # as if the decoder's end announced it
    for fields, size in zip(header_lists, sizes, strict=False):
        if size is not None:
            encoder.header_table_size = size  # a size update opens the next block
        expected = tuple(
            (n.encode(), v.encode() if isinstance(v, str) else v) for n, v, _ in fields
        )
        listed = [
            hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v) for n, v, never in fields
        ]
        for _ in range(2):  # twice: the second reads from the dynamic table (or the cache)
            block = encoder.encode(listed)
            got = {name: decoder.decode(block) for name, decoder in decoders.items()}
            assert set(got.values()) == {expected}, got


@given(blocks, st.data())
@settings(max_examples=300, deadline=None)
def test_damaged_blocks_fail_or_decode_alike(
    header_lists: list[list[tuple[str, bytes | str, bool]]], data: st.DataObject
) -> None:
    encoder = hpack.Encoder()
    decoders = {name: make() for name, make in DECODERS.items()}
    for fields in header_lists:
        block = bytearray(encoder.encode([(n, v) for n, v, _ in fields]))
        if block and data.draw(st.booleans()):
            position = data.draw(st.integers(0, len(block) - 1))
            block[position] = data.draw(st.integers(0, 255))
        if block and data.draw(st.booleans()):
            del block[data.draw(st.integers(0, len(block) - 1)) :]
        outcomes = {name: _outcome(decoder, bytes(block)) for name, decoder in decoders.items()}
        assert len(set(outcomes.values())) == 1, outcomes
        if "error" in outcomes.values():
            return  # the connection would now be desynced: the tables are untrusted


@pytest.mark.parametrize("make", DECODERS.values(), ids=DECODERS.keys())
def test_table_size_update_above_the_allowed_maximum_fails(
    make: Callable[[], HeaderDecoder],
) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 8192
    block = encoder.encode([(":status", "200")])
    assert block[0] & 0xE0 == 0x20  # opens with a size update
    with pytest.raises(HpackDecodeError):
        make().decode(block)
    decoder = make()
    decoder.max_allowed_table_size = 8192
    assert decoder.decode(block) == ((b":status", b"200"),)


@pytest.mark.parametrize("make", DECODERS.values(), ids=DECODERS.keys())
def test_lowered_limit_needs_the_encoder_to_shrink(make: Callable[[], HeaderDecoder]) -> None:
    encoder = hpack.Encoder()
    decoder = make()
    static_only = encoder.encode([(":method", "GET"), (":path", "/")])
    assert decoder.decode(static_only) == ((b":method", b"GET"), (b":path", b"/"))
    assert decoder.decode(static_only)  # now remembered by a caching decoder
    decoder.max_allowed_table_size = 256  # acknowledged SETTINGS_HEADER_TABLE_SIZE
    with pytest.raises(HpackDecodeError):  # hpack: the table is still 4096
        decoder.decode(static_only)
    shrinking = make()
    shrinking.max_allowed_table_size = 256
    encoder.header_table_size = 256
    assert shrinking.decode(encoder.encode([(":method", "GET")])) == ((b":method", b"GET"),)


@pytest.mark.parametrize("make", DECODERS.values(), ids=DECODERS.keys())
def test_header_list_above_64_kib_fails(make: Callable[[], HeaderDecoder]) -> None:
    encoder = hpack.Encoder()
    fits = encoder.encode([("x-a", "v" * 30000), ("x-b", "v" * 30000)])
    assert len(make().decode(fits)) == 2
    too_big = encoder.encode([("x-a", "v" * 40000), ("x-b", "w" * 40000)])
    with pytest.raises(HpackDecodeError):
        make().decode(too_big)


def test_changes_table_tells_indexed_from_indexing_blocks() -> None:
    encoder = hpack.Encoder()
    first = encoder.encode([(":method", "GET"), ("user-agent", "h2load")])
    again = encoder.encode([(":method", "GET"), ("user-agent", "h2load")])
    assert changes_table(first)  # user-agent was added to the dynamic table
    assert not changes_table(again)  # both fields are indexed now
    never = encoder.encode([hpack.NeverIndexedHeaderTuple("cookie", "secret")])
    assert not changes_table(never)
    encoder.header_table_size = 100
    assert changes_table(encoder.encode([(":method", "GET")]))  # a size update
    assert changes_table(first[:-1] + b"\x7f")  # cut short: never remembered


def test_cache_forgets_when_the_table_changes() -> None:
    encoder = hpack.Encoder()
    decoder = CachingDecoder(PythonDecoder())
    decoder.decode(encoder.encode([("x-id", "one")]))  # dynamic index 62 = x-id: one
    indexed = encoder.encode([("x-id", "one")])
    assert indexed == b"\xbe" and decoder.decode(indexed) == ((b"x-id", b"one"),)
    decoder.decode(encoder.encode([("x-id", "two")]))  # index 62 is now x-id: two
    assert decoder.decode(b"\xbe") == ((b"x-id", b"two"),)


@needs_native
def test_native_decoder_is_picked_when_the_library_loads() -> None:
    assert hpack_native.decoder_kind() == "libnghttp2"
    decoder = hpack_native.new_decoder()
    assert isinstance(decoder, CachingDecoder)
    assert isinstance(decoder._decoder, NativeDecoder)


def test_missing_library_falls_back_with_a_debug_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hpack_native, "LIBRARY_NAMES", ("libnghttp2-missing.so.99",))
    with caplog.at_level(logging.DEBUG, logger=hpack_native.__name__):
        assert hpack_native._load_library() is None
    assert "falls back to the pure-Python hpack" in caplog.text
    monkeypatch.setattr(hpack_native, "_LIBRARY", None)
    decoder = hpack_native.new_decoder()
    assert isinstance(decoder._decoder, PythonDecoder)  # type: ignore[attr-defined]
    assert hpack_native.decoder_kind() == "hpack (pure Python)"
    with pytest.raises(HpackDecodeError):
        NativeDecoder()
