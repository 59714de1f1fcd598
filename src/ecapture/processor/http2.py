"""HTTP/2 observed from outside: frames read here (and by hyperframe), HPACK by hpack_native.

h2 implements a peer and rejects what a peer would (stream ids, flow
control); an observer must follow both directions as they were sent. Each
direction has its own HPACK decoder (RFC 7541 §2.2: one dynamic table per
direction); SETTINGS_HEADER_TABLE_SIZE sent by one end bounds the table of
the other end's encoder, so it changes the decoder of the OTHER direction
(RFC 9113 §6.5.2). Once bytes are lost the HPACK tables are untrusted, so
the connection is then passed through raw ("desync").
"""

from __future__ import annotations

import struct
from collections import deque

from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    Frame,
    GoAwayFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from ecapture.errors import ProtocolError
from ecapture.events import TlsData
from ecapture.processor.base import BodyBuffer, body_lost
from ecapture.processor.grpc import header_value, is_grpc, split_grpc_messages
from ecapture.processor.hpack_native import HeaderDecoder, HpackDecodeError, new_decoder
from ecapture.processor.model import (
    ConnectionInfo,
    GrpcMessage,
    Headers,
    HttpExchange,
    HttpRequest,
    HttpResponse,
    ProcessorItem,
    Unparsed,
)
from ecapture.processor.sniff import HTTP2_PREFACE

FRAME_HEADER_SIZE = 9
DEFAULT_MAX_FRAME_SIZE = 16384  # RFC 9113 §6.5.2 SETTINGS_MAX_FRAME_SIZE initial value
MAX_HEADER_BLOCK = 1 << 20  # HEADERS + CONTINUATION backlog kept per direction
MAX_STREAMS = 4096  # open streams kept per connection; the oldest is flushed beyond
DEFAULT_HEADER_TABLE_SIZE = 4096  # RFC 9113 §6.5.2
MAX_SPLITS = 256  # header blocks whose pseudo/regular split is remembered per direction

_FRAME_ERRORS = (HyperframeError, ValueError, struct.error)

# RFC 9113 §4.1 frame header: 24-bit length, type, flags, R + 31-bit stream id
_FRAME_HEADER = struct.Struct(">HBBBL")
# DATA, HEADERS and CONTINUATION are nearly every frame of a busy connection:
# they are read here (hyperframe builds an object and a flag set per frame,
# ~3 us of the 8 us a frame cost). The checks are hyperframe's: a stream id
# is required, a PADDED frame needs its pad-length byte and more body than
# padding, a PRIORITY block needs its 5 bytes. Other frames stay hyperframe's.
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_FAST_FRAMES = (_DATA, _HEADERS, _CONTINUATION)
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x01, 0x04, 0x08, 0x20
_PRIORITY_FIELDS = 5  # stream dependency (4) + weight (1), RFC 9113 §6.2


class _DesyncError(ProtocolError):
    """Internal: the connection cannot be followed any more."""


class _HalfStream:
    """One direction of a stream: headers, body, trailers."""

    __slots__ = ("body", "ended", "headers", "informational", "pseudo", "regular", "trailers")

    def __init__(self, limit: int) -> None:
        self.headers: Headers | None = None
        # `headers` split once, when they arrive
        self.pseudo: dict[bytes, bytes] = {}
        self.regular: Headers = ()
        self.trailers: Headers = ()
        self.body = BodyBuffer(limit)
        self.ended = False
        self.informational: list[int] = []


class _Stream:
    __slots__ = ("request", "response", "started_ns", "stream_id")

    def __init__(self, stream_id: int, started_ns: int, limit: int) -> None:
        self.stream_id = stream_id
        self.started_ns = started_ns
        self.request = _HalfStream(limit)
        self.response = _HalfStream(limit)


class _Direction:
    """One direction's byte buffer, HPACK decoder and header-block backlog."""

    __slots__ = (
        "block", "block_end_stream", "block_frame", "block_is_push", "block_stream", "buffer",
        "decoder", "expect_preface", "is_client", "max_frame", "pending_table_sizes", "splits",
    )

    def __init__(self, is_client: bool) -> None:
        self.is_client = is_client
        self.buffer = bytearray()
        self.expect_preface = is_client
        self.decoder: HeaderDecoder = new_decoder()
        # block bytes -> (fields, pseudo, regular): a repeated block decodes to
        # the very same fields object (hpack_native.CachingDecoder), so its
        # split is reused when `fields` is that object
        self.splits: dict[bytes, tuple[Headers, dict[bytes, bytes], Headers]] = {}
        # the largest frame this direction may send: what the OTHER end
        # announced (RFC 9113 §4.2); a longer length means we lost framing
        self.max_frame = DEFAULT_MAX_FRAME_SIZE
        # header block being assembled: HEADERS or PUSH_PROMISE + CONTINUATIONs
        self.block: bytearray | None = None
        self.block_stream = 0  # the stream the block is for (promised, for PUSH_PROMISE)
        self.block_frame = 0  # the stream its frames arrive on
        self.block_end_stream = False
        self.block_is_push = False
        # SETTINGS_HEADER_TABLE_SIZE values this direction sent, not yet ACKed
        self.pending_table_sizes: deque[int] = deque()


def _split_pseudo(fields: Headers) -> tuple[dict[bytes, bytes], Headers]:
    pseudo: dict[bytes, bytes] = {}
    regular = []
    for name, value in fields:
        if name.startswith(b":"):
            pseudo.setdefault(name, value)
        else:
            regular.append((name, value))
    return pseudo, tuple(regular)


def _set_headers(
    half: _HalfStream, fields: Headers, pseudo: dict[bytes, bytes], regular: Headers
) -> None:
    half.headers = fields
    half.pseudo = pseudo
    half.regular = regular


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


class Http2Parser:
    """Both directions of one HTTP/2 connection; exchanges per stream."""

    def __init__(self, info: ConnectionInfo, *, max_body_bytes: int) -> None:
        self.info = info
        self._max_body = max_body_bytes
        self._client = _Direction(is_client=True)
        self._server = _Direction(is_client=False)
        self._streams: dict[int, _Stream] = {}
        self._desynced = False
        self._event_ns = 0

    # -- the ConnectionParser interface ---------------------------------------

    def feed(self, event: TlsData, from_client: bool, out: list[ProcessorItem]) -> None:
        if self._desynced:
            out.append(Unparsed(event, "desync"))
            return
        self._event_ns = event.timestamp_ns
        direction = self._client if from_client else self._server
        direction.buffer += event.data
        try:
            self._parse(direction, out)
        except _DesyncError:
            self._give_up(event, out)
            return
        if event.truncated and event.last_chunk:
            self.gap(event, out)

    def gap(self, event: TlsData, out: list[ProcessorItem]) -> None:
        if not self._desynced:
            self._event_ns = event.timestamp_ns
            self._desynced = True
            self._flush_streams(out)
            self._client.buffer.clear()
            self._server.buffer.clear()

    def finish(self, timestamp_ns: int, closed: bool, out: list[ProcessorItem]) -> None:
        self._event_ns = timestamp_ns
        self._flush_streams(out)

    # -- frames ----------------------------------------------------------------

    def _give_up(self, event: TlsData, out: list[ProcessorItem]) -> None:
        out.append(Unparsed(event, "desync"))
        self.gap(event, out)

    def _parse(self, direction: _Direction, out: list[ProcessorItem]) -> None:
        buffer = direction.buffer
        if direction.expect_preface:
            if len(buffer) < len(HTTP2_PREFACE):
                if not HTTP2_PREFACE.startswith(buffer):
                    raise _DesyncError
                return
            if not buffer.startswith(HTTP2_PREFACE):
                raise _DesyncError
            del buffer[: len(HTTP2_PREFACE)]
            direction.expect_preface = False
        if len(buffer) < FRAME_HEADER_SIZE:
            return
        first_length = int.from_bytes(buffer[:3], "big")
        if first_length > direction.max_frame:
            raise _DesyncError
        if len(buffer) < FRAME_HEADER_SIZE + first_length:
            return  # the first frame is still incomplete: no copy yet
        data = bytes(buffer)
        pos = 0
        size = len(data)
        with memoryview(data) as view:
            while size - pos >= FRAME_HEADER_SIZE:
                high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(data, pos)
                length = (high << 8) | low
                stream_id &= 0x7FFFFFFF
                frame: Frame | None = None
                if kind in _FAST_FRAMES:
                    if stream_id == 0:
                        raise _DesyncError  # RFC 9113 §6.1, §6.2, §6.10
                else:
                    try:
                        frame, _ = Frame.parse_frame_header(view[pos : pos + FRAME_HEADER_SIZE])
                    except _FRAME_ERRORS as error:
                        raise _DesyncError from error
                if length > direction.max_frame:
                    raise _DesyncError
                end = pos + FRAME_HEADER_SIZE + length
                if end > size:
                    break
                body = view[pos + FRAME_HEADER_SIZE : end]
                pos = end
                if frame is None:
                    self._fast_frame(direction, kind, flags, stream_id, body, out=out)
                    continue
                try:
                    frame.parse_body(body)
                except _FRAME_ERRORS as error:
                    raise _DesyncError from error
                self._frame(direction, frame, out)
        del buffer[:pos]

    def _fast_frame(
        self, direction: _Direction, kind: int, flags: int, stream_id: int, body: memoryview,
        *, out: list[ProcessorItem],
    ) -> None:
        """DATA, HEADERS or CONTINUATION (see _FAST_FRAMES)."""
        if kind == _CONTINUATION:
            if direction.block is None or stream_id != direction.block_frame:
                raise _DesyncError  # RFC 9113 §6.10: no header block open on this stream
            direction.block += body
            if len(direction.block) > MAX_HEADER_BLOCK:
                raise _DesyncError
            if flags & _END_HEADERS:
                self._header_block(direction, out)
            return
        if direction.block is not None:
            raise _DesyncError  # RFC 9113 §6.10: nothing may interleave a header block
        payload = body
        pad = 0
        if flags & _PADDED:
            if not body:
                raise _DesyncError  # no pad-length byte
            pad = body[0]
            payload = body[1:]
        if kind == _DATA:
            data = payload[: len(payload) - pad]
            if pad and pad >= len(body):
                raise _DesyncError  # RFC 9113 §6.1: padding as long as the payload
            self._data(direction, stream_id, flags, data.tobytes(), out)
            return
        start = 0
        if flags & _PRIORITY:
            if len(payload) < _PRIORITY_FIELDS:
                raise _DesyncError
            start = _PRIORITY_FIELDS
        block = payload[start : len(payload) - pad]
        if pad and pad >= len(payload):
            raise _DesyncError  # RFC 9113 §6.2
        direction.block = bytearray(block)
        direction.block_is_push = False
        direction.block_frame = direction.block_stream = stream_id
        direction.block_end_stream = bool(flags & _END_STREAM)
        if flags & _END_HEADERS:
            self._header_block(direction, out)

    def _frame(self, direction: _Direction, frame: Frame, out: list[ProcessorItem]) -> None:
        """Every frame but DATA, HEADERS and CONTINUATION (_fast_frame)."""
        if direction.block is not None:
            raise _DesyncError  # RFC 9113 §6.10: nothing may interleave a header block
        if isinstance(frame, PushPromiseFrame):
            direction.block = bytearray(frame.data)
            direction.block_is_push = True
            direction.block_frame = frame.stream_id
            direction.block_end_stream = False  # PUSH_PROMISE defines no END_STREAM
            direction.block_stream = frame.promised_stream_id
            if frame.stream_id == 0:
                raise _DesyncError
            if "END_HEADERS" in frame.flags:
                self._header_block(direction, out)
        elif isinstance(frame, SettingsFrame):
            self._settings(direction, frame)
        elif isinstance(frame, RstStreamFrame):
            stream = self._streams.pop(frame.stream_id, None)
            if stream is not None:
                self._emit(stream, False, out)
        elif isinstance(frame, GoAwayFrame):
            # streams above last_stream_id were not and will not be processed
            # (RFC 9113 §6.8)
            for stream_id in [key for key in self._streams if key > frame.last_stream_id]:
                self._emit(self._streams.pop(stream_id), False, out)
        # PING, PRIORITY, WINDOW_UPDATE and extension frames carry no message data

    def _settings(self, direction: _Direction, frame: SettingsFrame) -> None:
        other = self._server if direction.is_client else self._client
        if "ACK" in frame.flags:
            # the other end's announced size takes effect once acknowledged
            if other.pending_table_sizes:
                direction.decoder.max_allowed_table_size = other.pending_table_sizes.popleft()
            return
        max_frame = frame.settings.get(SettingsFrame.MAX_FRAME_SIZE)
        if max_frame is not None:
            # frames toward this end may grow once it is read; never shrink
            # before the ACK, so an early large frame is not taken for garbage
            other.max_frame = max(other.max_frame, max_frame)
        size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
        if size is None:
            return
        direction.pending_table_sizes.append(size)
        decoder = other.decoder
        # a larger limit may be used by the encoder as soon as it reads this
        # frame, possibly before we see the ACK: allow it at once
        decoder.max_allowed_table_size = max(decoder.max_allowed_table_size, size)

    def _stream(self, stream_id: int, out: list[ProcessorItem]) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                oldest = next(iter(self._streams))
                self._emit(self._streams.pop(oldest), False, out)
            stream = _Stream(stream_id, self._event_ns, self._max_body)
            self._streams[stream_id] = stream
        return stream

    def _header_block(self, direction: _Direction, out: list[ProcessorItem]) -> None:
        block = direction.block
        direction.block = None
        if block is None:
            return
        key = bytes(block)
        try:
            fields = direction.decoder.decode(key)
        except HpackDecodeError as error:
            raise _DesyncError from error
        split = direction.splits.get(key)
        if split is not None and split[0] is fields:
            _, pseudo, regular = split
        else:
            pseudo, regular = _split_pseudo(fields)
            if len(direction.splits) >= MAX_SPLITS:
                direction.splits.clear()
            direction.splits[key] = (fields, pseudo, regular)
        stream = self._stream(direction.block_stream, out)
        if direction.block_is_push:
            # a promised request is sent by the server (RFC 9113 §8.4)
            _set_headers(stream.request, fields, pseudo, regular)
            stream.request.ended = True
            return
        if direction.is_client:
            half = stream.request
            if half.headers is None:
                _set_headers(half, fields, pseudo, regular)
            else:
                half.trailers = regular
        else:
            half = stream.response
            status = pseudo.get(b":status", b"")
            if half.headers is None and len(status) == 3 and status[:1] == b"1" \
                    and status.isdigit():
                half.informational.append(int(status))  # interim response
                return
            if half.headers is None:
                _set_headers(half, fields, pseudo, regular)
            else:
                half.trailers = regular
        if direction.block_end_stream:
            self._end(stream, half, out)

    def _data(
        self, direction: _Direction, stream_id: int, flags: int, data: bytes,
        out: list[ProcessorItem],
    ) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # DATA of a stream already emitted (or never opened): nothing to pair
        half = stream.request if direction.is_client else stream.response
        half.body.add(data)
        if flags & _END_STREAM:
            self._end(stream, half, out)

    def _end(self, stream: _Stream, half: _HalfStream, out: list[ProcessorItem]) -> None:
        half.ended = True
        if half is stream.response:
            del self._streams[stream.stream_id]
            self._emit(stream, stream.request.ended, out)

    # -- exchanges -------------------------------------------------------------

    def _flush_streams(self, out: list[ProcessorItem]) -> None:
        streams = self._streams
        self._streams = {}
        for stream in streams.values():
            self._emit(stream, False, out)

    def _emit(self, stream: _Stream, complete: bool, out: list[ProcessorItem]) -> None:
        request = stream.request
        response = stream.response
        http_request = None
        http_response = None
        content_type = None
        request_regular: Headers = ()
        response_regular: Headers = ()
        if request.headers is not None:
            pseudo, request_regular = request.pseudo, request.regular
            content_type = header_value(request_regular, b"content-type")
            http_request = HttpRequest(
                method=_text(pseudo.get(b":method")) or "",
                target=_text(pseudo.get(b":path")) or "",
                authority=_text(pseudo.get(b":authority")), scheme=_text(pseudo.get(b":scheme")),
                version="HTTP/2", headers=request_regular, body=bytes(request.body.data),
                trailers=request.trailers, body_truncated=request.body.dropped > 0,
            )
        if response.headers is not None:
            pseudo, response_regular = response.pseudo, response.regular
            status = pseudo.get(b":status", b"")
            content_type = content_type or header_value(response_regular, b"content-type")
            http_response = HttpResponse(
                status=int(status) if status.isdigit() else 0, reason="", version="HTTP/2",
                headers=response_regular, body=bytes(response.body.data),
                trailers=response.trailers, body_truncated=response.body.dropped > 0,
                informational=tuple(response.informational),
            )
        grpc_request: tuple[GrpcMessage, ...] = ()
        grpc_response: tuple[GrpcMessage, ...] = ()
        if is_grpc(content_type):
            grpc_request = split_grpc_messages(
                bytes(request.body.data), header_value(request_regular, b"grpc-encoding")
            )
            grpc_response = split_grpc_messages(
                bytes(response.body.data), header_value(response_regular, b"grpc-encoding")
            )
        out.append(HttpExchange(
            connection=self.info, request=http_request, response=http_response,
            started_ns=stream.started_ns, finished_ns=self._event_ns, stream_id=stream.stream_id,
            grpc_request=grpc_request, grpc_response=grpc_response,
            complete=complete and http_request is not None and http_response is not None,
        ))
        for half in (request, response):
            if half.body.dropped:
                out.append(body_lost(self.info, self._event_ns, half.body.dropped))
