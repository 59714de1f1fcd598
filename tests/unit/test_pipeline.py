"""The pipeline's loss accounting: every loss becomes a `lost` item (no root)."""

from __future__ import annotations

import socket
import struct

import pytest

from ecapture.events import (
    CONN_CLOSE_FIELDS,
    RECORD_HEADER,
    TLS_DATA_FIELDS,
    Clock,
    ConnClose,
    LossReason,
    Lost,
    RecordKind,
    TlsData,
)
from ecapture.output.base import CutCount, OutputItem
from ecapture.pipeline import Pipeline
from ecapture.processor.model import HttpExchange, ProcessorItem, Unparsed
from ecapture.processor.tracker import ConnectionTracker

ADDRESS = struct.pack("<HH16s", socket.AF_INET, 443, socket.inet_aton("127.0.0.1") + bytes(12))


class RecordingWriter:
    def __init__(self) -> None:
        self.cut = CutCount()
        self.items: list[OutputItem] = []
        self.flushes = 0
        self.closed = 0

    def write(self, item: OutputItem) -> None:
        self.items.append(item)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed += 1

    def lost(self) -> list[Lost]:
        return [item for item in self.items if isinstance(item, Lost)]


def data(payload: bytes, *, direction: int = 1, flags: int = 1, call_len: int | None = None,
         offset: int = 0, lost: int = 0, conn_id: int = 5) -> bytes:
    header = RECORD_HEADER.pack(RecordKind.TLS_DATA, 10, 11, 0, 1, conn_id, b"curl")
    fields = TLS_DATA_FIELDS.pack(
        3, direction, flags, 1, len(payload) if call_len is None else call_len, offset,
        len(payload), lost, lost * 100, ADDRESS, ADDRESS,
    )
    return header + fields + payload


def close(lost: int = 0, conn_id: int = 5) -> bytes:
    header = RECORD_HEADER.pack(RecordKind.CONN_CLOSE, 10, 11, 0, 2, conn_id, b"curl")
    return header + CONN_CLOSE_FIELDS.pack(3, lost, lost * 100)


def test_data_and_close_reach_every_writer_and_are_flushed() -> None:
    first, second = RecordingWriter(), RecordingWriter()
    pipeline = Pipeline([first, second], clock=Clock(0))
    pipeline.handle_batch([data(b"hello"), close()])
    for writer in (first, second):
        assert [type(item) for item in writer.items] == [TlsData, ConnClose]
        assert writer.flushes == 1
    assert pipeline.counters.records == 2 and pipeline.counters.data_bytes == 5


def test_in_band_kernel_loss_becomes_a_lost_item_before_the_data() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], clock=Clock(0))
    pipeline.handle_batch([data(b"x", lost=3), close(lost=2)])
    lost = writer.lost()
    assert [(item.reason, item.records, item.bytes, item.conn_id, item.pid) for item in lost] == [
        (LossReason.RING_FULL, 3, 300, 5, 10), (LossReason.RING_FULL, 2, 200, 5, 10),
    ]
    assert isinstance(writer.items[0], Lost) and isinstance(writer.items[1], TlsData)
    totals = pipeline.counters.lost[LossReason.RING_FULL]
    assert (totals.records, totals.bytes) == (5, 500)


def test_call_cut_at_the_kernel_limit_is_counted_once_at_its_last_chunk() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], clock=Clock(0))
    first = data(b"a" * 16, flags=2, call_len=100)  # truncated, not last
    last = data(b"b" * 16, flags=3, call_len=100, offset=16)  # truncated, last
    pipeline.handle_batch([first, last])
    assert [(item.reason, item.bytes) for item in writer.lost()] == [
        (LossReason.KERNEL_LIMIT, 100 - 32),
    ]


def test_undecodable_record_is_reported_and_the_batch_goes_on() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], clock=Clock(0))
    pipeline.handle_batch([b"\x01\x02", data(b"ok")])
    assert [(item.reason, item.records, item.bytes) for item in writer.lost()] == [
        (LossReason.DECODE, 1, 2),
    ]
    assert any(isinstance(item, TlsData) for item in writer.items)


def test_cuts_by_tsize_are_summed_once_at_finish_and_writers_closed_once() -> None:
    writer = RecordingWriter()
    writer.cut.add(40)
    writer.cut.add(60)
    pipeline = Pipeline([writer], clock=Clock(0))
    pipeline.finish()
    pipeline.finish()
    assert [(item.reason, item.records, item.bytes) for item in writer.lost()] == [
        (LossReason.TSIZE, 2, 100),
    ]
    assert writer.closed == 1


def test_http_exchange_flows_through_the_tracker_and_is_counted() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], tracker=ConnectionTracker(), clock=Clock(0))
    pipeline.handle_batch([
        data(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", direction=1),
        data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", direction=0),
    ])
    exchanges = [item for item in writer.items if isinstance(item, HttpExchange)]
    assert len(exchanges) == 1 and pipeline.counters.http_exchanges == 1
    assert exchanges[0].request is not None and exchanges[0].request.target == "/x"
    assert exchanges[0].response is not None and exchanges[0].response.body == b"ok"


class BrokenTracker(ConnectionTracker):
    def feed(self, event: TlsData) -> list[ProcessorItem]:
        raise ZeroDivisionError("a parser bug")

    def close(self, event: ConnClose) -> list[ProcessorItem]:
        raise ZeroDivisionError("a parser bug")


def test_a_parser_bug_does_not_stop_the_capture(caplog: pytest.LogCaptureFixture) -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], tracker=BrokenTracker(), clock=Clock(0))
    pipeline.handle_batch([data(b"one"), data(b"two"), close()])
    raw = [item for item in writer.items if isinstance(item, TlsData)]
    shown = [item for item in writer.items if isinstance(item, Unparsed)]
    assert [item.data for item in raw] == [b"one", b"two"]
    assert [(item.event.data, item.reason) for item in shown] == [
        (b"one", "parser-error"), (b"two", "parser-error"),
    ]
    assert any(isinstance(item, ConnClose) for item in writer.items)
    assert pipeline.counters.parser_errors == 3
    assert "ZeroDivisionError: a parser bug" in caplog.text
