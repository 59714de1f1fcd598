"""HPACK header-block decoding (RFC 7541) for the HTTP/2 observer.

Three layers, each with one job:
- NativeDecoder: libnghttp2's inflater through ctypes (libnghttp2-14, the
  library curl uses); ~10x cheaper per field than hpack's pure Python.
- PythonDecoder: the hpack package; the fallback when libnghttp2 cannot be
  loaded.
- CachingDecoder: a block that neither adds to nor resizes the dynamic table
  decodes to the same list for as long as the table is unchanged, so such
  blocks (a client repeating a request, a server repeating a response) are
  answered from a dict instead of being decoded again.

Both decoders follow hpack's rules, so switching never changes what is
accepted: a dynamic table size update may not exceed `max_allowed_table_size`
(RFC 7541 §6.3), the table may not be left above it at the end of a block
(§4.2), and a decoded list may not exceed 64 KiB counted as in §4.1 (hpack's
DEFAULT_MAX_HEADER_LIST_SIZE). Any failure raises HpackDecodeError; the
caller then stops trusting the connection, so the decoder is not used again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Protocol

import hpack
import hpack.exceptions

from ecapture.errors import ProtocolError

log = logging.getLogger(__name__)

Fields = tuple[tuple[bytes, bytes], ...]

MAX_HEADER_LIST_SIZE = 1 << 16  # hpack's DEFAULT_MAX_HEADER_LIST_SIZE
ENTRY_OVERHEAD = 32  # RFC 7541 §4.1: an entry's size is name + value + 32
DEFAULT_TABLE_SIZE = 4096  # RFC 9113 §6.5.2 SETTINGS_HEADER_TABLE_SIZE initial value
CACHE_ENTRIES = 256  # blocks remembered per decoder; cleared whole when full
LIBRARY_NAMES = ("libnghttp2.so.14", "nghttp2")

# nghttp2.h (v1.52): nghttp2_hd_inflate_flag
_INFLATE_FINAL = 0x01
_INFLATE_EMIT = 0x02
_ANY_TABLE_SIZE = 0xFFFFFFFF  # size checks are ours (hpack's rules), not nghttp2's

_HPACK_ERRORS = (hpack.exceptions.HPACKError, ValueError, IndexError, UnicodeDecodeError)


class HpackDecodeError(ProtocolError):
    """A header block that cannot be decoded with this connection's table."""


class HeaderDecoder(Protocol):
    """One direction's HPACK decoder."""

    # the most recent SETTINGS_HEADER_TABLE_SIZE the decoder must honour
    max_allowed_table_size: int

    def decode(self, block: bytes) -> Fields: ...


class _NameValue(ctypes.Structure):
    # nghttp2.h nghttp2_nv: uint8_t *name, *value; size_t namelen, valuelen; uint8_t flags
    _fields_ = [("name", ctypes.c_void_p), ("value", ctypes.c_void_p),
                ("namelen", ctypes.c_size_t), ("valuelen", ctypes.c_size_t),
                ("flags", ctypes.c_uint8)]


def _load_library() -> ctypes.CDLL | None:
    for name in LIBRARY_NAMES:
        path = ctypes.util.find_library(name) if "." not in name else name
        if path is None:
            continue
        try:
            library = ctypes.CDLL(path)
            library.nghttp2_hd_inflate_hd2  # noqa: B018 (added in nghttp2 1.10)
        except (OSError, AttributeError) as error:
            log.debug("libnghttp2 not usable as %s: %s", path, error)
            continue
        library.nghttp2_hd_inflate_new.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        library.nghttp2_hd_inflate_new.restype = ctypes.c_int
        library.nghttp2_hd_inflate_del.argtypes = [ctypes.c_void_p]
        library.nghttp2_hd_inflate_del.restype = None
        library.nghttp2_hd_inflate_change_table_size.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        library.nghttp2_hd_inflate_change_table_size.restype = ctypes.c_int
        library.nghttp2_hd_inflate_hd2.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(_NameValue), ctypes.POINTER(ctypes.c_int),
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
        ]
        library.nghttp2_hd_inflate_hd2.restype = ctypes.c_ssize_t
        library.nghttp2_hd_inflate_end_headers.argtypes = [ctypes.c_void_p]
        library.nghttp2_hd_inflate_end_headers.restype = ctypes.c_int
        return library
    log.debug("libnghttp2 cannot be loaded (%s): HPACK falls back to the pure-Python hpack "
              "package", ", ".join(LIBRARY_NAMES))
    return None


_LIBRARY = _load_library()


def native_available() -> bool:
    return _LIBRARY is not None


def decoder_kind() -> str:
    return "libnghttp2" if _LIBRARY is not None else "hpack (pure Python)"


def _read_integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 §5.1 integer at `pos`: (value, position after it)."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def changes_table(block: bytes) -> bool:
    """Whether a (well-formed) block may add to or resize the dynamic table:
    a literal with incremental indexing (0b01......) or a size update
    (0b001.....), RFC 7541 §6.2.1, §6.3. Indexed fields and literals without
    or never indexing leave it as it was."""
    pos = 0
    size = len(block)
    try:
        while pos < size:
            first = block[pos]
            if first & 0x80:
                _, pos = _read_integer(block, pos, 7)
            elif first & 0x60:
                return True
            else:
                name_index, pos = _read_integer(block, pos, 4)
                if name_index == 0:
                    length, pos = _read_integer(block, pos, 7)
                    pos += length
                length, pos = _read_integer(block, pos, 7)
                pos += length
    except IndexError:
        return True  # cut short: never remembered
    return False


class NativeDecoder:
    """libnghttp2's HPACK inflater with hpack's size rules checked here."""

    __slots__ = ("_flags", "_inflater", "_name_value", "_table_size", "max_allowed_table_size")

    def __init__(self) -> None:
        if _LIBRARY is None:
            raise HpackDecodeError("libnghttp2 is not loaded")
        inflater = ctypes.c_void_p()
        if _LIBRARY.nghttp2_hd_inflate_new(ctypes.byref(inflater)) != 0:
            raise HpackDecodeError("nghttp2_hd_inflate_new failed")
        self._inflater = inflater
        # nghttp2 would also shrink its table when told a smaller setting;
        # hpack instead waits for the encoder's size update (and fails the
        # block if none comes), so nghttp2 is told "anything" and the limit is
        # checked in decode()
        _LIBRARY.nghttp2_hd_inflate_change_table_size(inflater, _ANY_TABLE_SIZE)
        self._name_value = _NameValue()
        self._flags = ctypes.c_int()
        self._table_size = DEFAULT_TABLE_SIZE
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE

    def __del__(self) -> None:
        inflater = getattr(self, "_inflater", None)
        if inflater is not None and _LIBRARY is not None:
            _LIBRARY.nghttp2_hd_inflate_del(inflater)

    def _size_updates(self, block: bytes) -> None:
        """Apply hpack's checks to the size updates that open a block (they
        may appear nowhere else; nghttp2 refuses them later on as hpack does)."""
        pos = 0
        try:
            while pos < len(block) and block[pos] & 0xE0 == 0x20:
                size, pos = _read_integer(block, pos, 5)
                if size > self.max_allowed_table_size:
                    raise HpackDecodeError("table size update above the allowed maximum")
                self._table_size = size
        except IndexError as error:
            raise HpackDecodeError("truncated table size update") from error

    def decode(self, block: bytes) -> Fields:
        assert _LIBRARY is not None
        self._size_updates(block)
        inflate = _LIBRARY.nghttp2_hd_inflate_hd2
        string_at = ctypes.string_at
        name_value = self._name_value
        flags = self._flags
        inflater = self._inflater
        start = ctypes.cast(ctypes.c_char_p(block), ctypes.c_void_p).value or 0
        remaining = len(block)
        fields = []
        list_size = 0
        while True:
            consumed = inflate(inflater, name_value, flags, start, remaining, 1)
            if consumed < 0:
                raise HpackDecodeError(f"nghttp2_hd_inflate_hd2 failed ({consumed})")
            start += consumed
            remaining -= consumed
            emitted = flags.value
            if emitted & _INFLATE_EMIT:
                name = string_at(name_value.name, name_value.namelen)
                value = string_at(name_value.value, name_value.valuelen)
                fields.append((name, value))
                list_size += len(name) + len(value) + ENTRY_OVERHEAD
                if list_size > MAX_HEADER_LIST_SIZE:
                    raise HpackDecodeError("header list above 64 KiB")
            if emitted & _INFLATE_FINAL:
                _LIBRARY.nghttp2_hd_inflate_end_headers(inflater)
                break
            if not emitted and consumed == 0:
                raise HpackDecodeError("nghttp2 made no progress")  # never expected
        if self._table_size > self.max_allowed_table_size:
            raise HpackDecodeError("encoder did not shrink the table to the allowed maximum")
        return tuple(fields)


class PythonDecoder:
    """The hpack package's decoder, giving plain byte tuples."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()

    @property
    def max_allowed_table_size(self) -> int:
        return self._decoder.max_allowed_table_size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, size: int) -> None:
        self._decoder.max_allowed_table_size = size

    def decode(self, block: bytes) -> Fields:
        try:
            decoded = self._decoder.decode(block, raw=True)
        except _HPACK_ERRORS as error:
            raise HpackDecodeError(str(error)) from error
        # raw=True yields HeaderTuples of bytes; plain tuples keep records simple
        return tuple((bytes(name), bytes(value)) for name, value in decoded)


class CachingDecoder:
    """Remembers blocks that leave the dynamic table as it was."""

    __slots__ = ("_cache", "_decoder", "_table_size")

    def __init__(self, decoder: HeaderDecoder) -> None:
        self._decoder = decoder
        self._cache: dict[bytes, Fields] = {}
        self._table_size = DEFAULT_TABLE_SIZE  # the size the last size update set

    @property
    def max_allowed_table_size(self) -> int:
        return self._decoder.max_allowed_table_size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, size: int) -> None:
        self._decoder.max_allowed_table_size = size

    def decode(self, block: bytes) -> Fields:
        fields = self._cache.get(block)
        if fields is not None:
            # the one rule that depends on more than the table: a limit
            # lowered since must still be met (hpack checks it every block)
            if self._table_size > self._decoder.max_allowed_table_size:
                raise HpackDecodeError("encoder did not shrink the table to the allowed maximum")
            return fields
        fields = self._decoder.decode(block)
        if changes_table(block):
            self._cache.clear()
            self._note_size_updates(block)
        else:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[block] = fields
        return fields

    def _note_size_updates(self, block: bytes) -> None:
        pos = 0
        while pos < len(block) and block[pos] & 0xE0 == 0x20:
            self._table_size, pos = _read_integer(block, pos, 5)


def new_decoder() -> HeaderDecoder:
    """libnghttp2 when it loaded, else hpack; cached either way."""
    return CachingDecoder(NativeDecoder() if _LIBRARY is not None else PythonDecoder())
