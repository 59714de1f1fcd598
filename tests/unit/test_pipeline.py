"""The pipeline's loss accounting: every loss becomes a `lost` item (no root)."""

from __future__ import annotations

import pytest
from records import close, data, fault

from ecapture.events import Clock, ConnClose, LossReason, Lost, TlsData
from ecapture.output.base import CutCount, OutputItem
from ecapture.pipeline import Pipeline
from ecapture.processor.model import HttpExchange, ProcessorItem, Unparsed
from ecapture.processor.tracker import ConnectionTracker


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


GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_read_fault_is_a_lost_item_of_its_connection_and_a_gap_for_the_parser() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], tracker=ConnectionTracker(), clock=Clock(0))
    pipeline.handle_batch([
        data(GET, direction=1, ts=1),
        fault(4000, offset=0, ts=2),  # part of the response could not be read
        data(b"tail of the lost response", direction=0, ts=3),
        data(GET, direction=1, ts=4),
        data(OK, direction=0, ts=5),
    ])
    [lost] = writer.lost()
    assert (lost.reason, lost.records, lost.bytes, lost.conn_id, lost.fd, lost.pid) == (
        LossReason.READ_FAULT, 1, 4000, 5, 3, 10)
    assert not any(isinstance(item, TlsData) and not item.data for item in writer.items)
    exchanges = [item for item in writer.items if isinstance(item, HttpExchange)]
    # the first exchange ends incomplete at the gap; the parser finds the next one
    assert [(e.complete, e.response is not None and e.response.body) for e in exchanges] == [
        (False, False), (True, b"ok")]
    totals = pipeline.counters.lost[LossReason.READ_FAULT]
    assert (totals.records, totals.bytes) == (1, 4000)


def test_read_fault_before_any_data_makes_the_connection_start_mid_stream() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], tracker=ConnectionTracker(), clock=Clock(0))
    pipeline.handle_batch([fault(100, conn_id=8), data(b"lo\r\n\r\n", conn_id=8)])
    shown = [item for item in writer.items if isinstance(item, Unparsed)]
    assert [item.reason for item in shown] == ["mid-stream"]


def test_deferred_close_waits_for_the_main_ring_to_catch_up() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], tracker=ConnectionTracker(), clock=Clock(0))
    pipeline.handle_batch([data(GET, direction=1, ts=10)])
    # the main ring was full at ts 20: the close came through the spare ring
    pipeline.park([close(ts=20, deferred=True)])
    assert not any(isinstance(item, ConnClose) for item in writer.items)
    # older records still in the main ring come first, then a newer one releases it
    pipeline.handle_batch([data(OK, direction=0, ts=15)])
    assert not any(isinstance(item, ConnClose) for item in writer.items)
    pipeline.handle_batch([data(b"other", conn_id=6, ts=21)])
    kinds = [type(item).__name__ for item in writer.items]
    assert kinds.count("ConnClose") == 1
    assert kinds.index("HttpExchange") < kinds.index("Lost") == kinds.index("ConnClose") - 1
    [lost] = writer.lost()
    assert (lost.reason, lost.records, lost.bytes, lost.conn_id) == (LossReason.RING_FULL, 1, 0, 5)
    assert pipeline.counters.connections_closed == 1


def test_deferred_close_is_released_by_a_quiet_tick_and_at_finish() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], clock=Clock(0))
    pipeline.handle_batch([data(b"x", ts=1)])
    pipeline.tick(0)
    pipeline.park([close(ts=5, deferred=True)])
    pipeline.tick(0)  # no main-ring batch since the last tick: it is empty
    assert sum(isinstance(item, ConnClose) for item in writer.items) == 1
    pipeline.park([close(ts=6, conn_id=9, deferred=True)])
    pipeline.handle_batch([data(b"y", ts=3)])  # older than the close: still held
    pipeline.tick(0)  # a batch came since: not yet
    assert sum(isinstance(item, ConnClose) for item in writer.items) == 1
    pipeline.finish()
    assert [item.conn_id for item in writer.items if isinstance(item, ConnClose)] == [5, 9]
    assert [lost.conn_id for lost in writer.lost()] == [5, 9]


def test_tick_never_ends_an_idle_connection() -> None:
    writer = RecordingWriter()
    pipeline = Pipeline([writer], tracker=ConnectionTracker(), clock=Clock(0))
    pipeline.handle_batch([data(GET, direction=1, ts=1)])
    for minute in range(1, 60):
        pipeline.tick(minute * 60 * 10**9)
    pipeline.handle_batch([data(OK, direction=0, ts=3600 * 10**9)])
    [exchange] = [item for item in writer.items if isinstance(item, HttpExchange)]
    assert exchange.complete and exchange.response is not None
