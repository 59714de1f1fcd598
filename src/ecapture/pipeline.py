"""The user-space half of a capture: records → decode → processor → writers.

Everything lost on the way is counted here and written into the event
stream as a `Lost` record: losses the kernel reports in-band per connection
(`lost_records` on the next record of that connection or on its close),
calls cut at the kernel's per-call copy limit, chunks the kernel could not
read (read faults), bytes or connections the processor could not keep, and
records that could not be decoded. Nothing here blocks: one batch in,
written out, flushed.

A close the kernel had to put in its spare ring (the main ring was full)
is held here until the main ring has delivered everything older than it
(a record newer than the close, or a second with no record at all), so a
connection never ends before its last data: it then goes out as the close
plus a ring_full `lost` naming that connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ecapture.errors import DecodeError
from ecapture.events import (
    Clock,
    ConnClose,
    LossReason,
    Lost,
    ReadFault,
    TlsData,
    decode_record,
)
from ecapture.processor.model import HttpExchange, ProcessorItem, Unparsed

if TYPE_CHECKING:
    from ecapture.output.base import Writer
    from ecapture.processor.interface import RecordProcessor
    from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)
MAX_LOGGED_PARSER_ERRORS = 5

Decoder = Callable[[bytes, Clock], object]


@dataclass(slots=True)
class LossTotals:
    """Records and bytes lost for one reason."""

    records: int = 0
    bytes: int = 0


@dataclass(slots=True)
class PipelineCounters:
    records: int = 0
    data_bytes: int = 0
    connections_closed: int = 0
    http_exchanges: int = 0
    parser_errors: int = 0
    lost: dict[LossReason, LossTotals] = field(default_factory=dict)
    # Items a module's processor produced, by type name ("Command": 3).
    items: dict[str, int] = field(default_factory=dict)

    def add_loss(self, reason: LossReason, records: int, nbytes: int) -> None:
        totals = self.lost.setdefault(reason, LossTotals())
        totals.records += records
        totals.bytes += nbytes


class Pipeline:
    """Decodes raw ring records of one module and hands them on."""

    def __init__(
        self,
        writers: Sequence[Writer],
        *,
        tracker: ConnectionTracker | None = None,
        processor: RecordProcessor | None = None,
        clock: Clock | None = None,
        decoder: Decoder = decode_record,
    ) -> None:
        self.writers = tuple(writers)
        self.tracker = tracker
        self.processor = processor
        self.clock = clock or Clock()
        self.decoder = decoder
        self.counters = PipelineCounters()
        self._finished = False
        self._parked: list[ConnClose] = []  # deferred closes not yet released, in order
        self._batches = 0  # main-ring batches handled
        self._batches_at_tick = 0

    def handle_batch(self, raws: Iterable[bytes]) -> None:
        """Decode and dispatch one batch of ring records, then flush."""
        counters = self.counters
        decoder = self.decoder
        clock = self.clock
        newest_ns = 0  # of the TLS records in this batch: parked closes older than it may go
        for raw in raws:
            try:
                record = decoder(raw, clock)
            except DecodeError as error:
                # A layout mismatch is our bug: say it, count it, go on.
                log.warning("undecodable record: %s", error)
                self._lost(Lost(time.time_ns(), LossReason.DECODE, 1, len(raw)))
                continue
            counters.records += 1
            if type(record) is TlsData:
                newest_ns = record.timestamp_ns
                self._data(record)
            elif type(record) is ConnClose:
                newest_ns = record.timestamp_ns
                if record.deferred:
                    self._parked.append(record)
                else:
                    self._close(record)
            elif type(record) is ReadFault:
                newest_ns = record.timestamp_ns
                self._read_fault(record)
            else:
                self._record(record)
        self._batches += 1
        if self._parked and newest_ns:
            self._release_parked(newest_ns)
        self.flush()

    def park(self, raws: Iterable[bytes]) -> None:
        """Records of the kernel's spare ring (closes deferred by a full main
        ring): held until the main ring has caught up with them."""
        for raw in raws:
            try:
                record = self.decoder(raw, self.clock)
            except DecodeError as error:
                log.warning("undecodable record in the spare ring: %s", error)
                self._lost(Lost(time.time_ns(), LossReason.DECODE, 1, len(raw)))
                continue
            self.counters.records += 1
            if type(record) is ConnClose:
                self._parked.append(record)
            else:  # only closes go there (bpf/tls.bpf.c emit_close); decode errors aside
                log.warning("unexpected %s record in the spare ring", type(record).__name__)
                self._lost(Lost(time.time_ns(), LossReason.DECODE, 1, len(raw)))
        self.flush()

    def _release_parked(self, newer_than_ns: int | None) -> None:
        """Deliver the parked closes older than `newer_than_ns` (None: all).

        The main ring's records of a connection were reserved before its
        close was attempted, so once a record stamped after the close came
        out of the main ring, none of that connection's can follow."""
        parked = self._parked
        released = [close for close in parked
                    if newer_than_ns is None or close.timestamp_ns < newer_than_ns]
        if not released:
            return
        self._parked = [close for close in parked if close not in released]
        for close in released:
            # The close itself could not be queued in order: one ring-full record,
            # said right before it.
            self._lost(Lost(close.timestamp_ns, LossReason.RING_FULL, 1, 0, pid=close.pid,
                            comm=close.comm, conn_id=close.conn_id, fd=close.fd))
            self._close(close)

    def release_parked(self) -> None:
        """At stop: the main ring is drained, every parked close can go."""
        self._release_parked(None)
        self.flush()

    def _read_fault(self, fault: ReadFault) -> None:
        """A chunk the kernel could not read: a loss on that connection, and a
        gap in its stream for the processor."""
        self._lost(Lost(
            fault.timestamp_ns, LossReason.READ_FAULT, 1, fault.bytes, pid=fault.pid,
            comm=fault.comm, conn_id=fault.conn_id, fd=fault.fd,
        ))
        if self.tracker is not None:
            self.tracker.fault(fault)

    def _data(self, event: TlsData) -> None:
        self.counters.data_bytes += len(event.data)
        if event.lost_records:
            self._in_band_loss(event)
        for writer in self.writers:
            writer.write(event)
        if event.truncated and event.last_chunk:
            cut = event.call_len - event.offset - len(event.data)
            self._lost(Lost(
                event.timestamp_ns, LossReason.KERNEL_LIMIT, 0, cut, pid=event.pid,
                comm=event.comm, conn_id=event.conn_id, fd=event.fd,
            ))
        if self.tracker is not None:
            try:
                items = self.tracker.feed(event)
            except Exception:  # a parser bug must not stop the capture (writers' errors do)
                items = self._parser_failed(event)
            self._items(items)

    def _parser_failed(self, event: TlsData) -> list[ProcessorItem]:
        """A bug in a parser: say it (with its traceback, a few times), keep the
        bytes visible as unparsed; the raw event already went to the writers."""
        self.counters.parser_errors += 1
        if self.counters.parser_errors <= MAX_LOGGED_PARSER_ERRORS:
            log.exception("the HTTP processor failed on a chunk of %s pid %d conn %#x; "
                          "shown unparsed", event.comm, event.pid, event.conn_id)
        return [Unparsed(event, "parser-error")]

    def _close(self, event: ConnClose) -> None:
        self.counters.connections_closed += 1
        if event.lost_records:
            self._in_band_loss(event)
        for writer in self.writers:
            writer.write(event)
        if self.tracker is not None:
            try:
                items = self.tracker.close(event)
            except Exception:  # a parser bug must not stop the capture
                items = []
                self.counters.parser_errors += 1
                log.exception("the HTTP processor failed closing pid %d conn %#x",
                              event.pid, event.conn_id)
            self._items(items)

    def _record(self, record: object) -> None:
        """A record of another module: through its processor, else written as it is."""
        if self.processor is None:
            for writer in self.writers:
                writer.write(record)
            return
        try:
            items = self.processor.feed(record)
        except Exception:  # a processor bug must not stop the capture
            items = ()
            self.counters.parser_errors += 1
            if self.counters.parser_errors <= MAX_LOGGED_PARSER_ERRORS:
                log.exception("the processor failed on a %s record", type(record).__name__)
        self._processed(items)

    def _processed(self, items: Sequence[object]) -> None:
        counts = self.counters.items
        for item in items:
            if not isinstance(item, Lost):
                name = type(item).__name__
                counts[name] = counts.get(name, 0) + 1
        self._items(items)

    def _in_band_loss(self, event: TlsData | ConnClose) -> None:
        """Records of this connection the kernel could not queue, reported
        with its next record (or its close)."""
        self._lost(Lost(
            event.timestamp_ns, LossReason.RING_FULL, event.lost_records, event.lost_bytes,
            pid=event.pid, comm=event.comm, conn_id=event.conn_id, fd=event.fd,
        ))

    def _items(self, items: Sequence[ProcessorItem | object]) -> None:
        for item in items:
            if isinstance(item, Lost):
                self._lost(item)
                continue
            if isinstance(item, HttpExchange):
                self.counters.http_exchanges += 1
            for writer in self.writers:
                writer.write(item)

    def _lost(self, lost: Lost) -> None:
        self.counters.add_loss(lost.reason, lost.records, lost.bytes)
        for writer in self.writers:
            writer.write(lost)

    def report_loss(self, lost: Lost) -> None:
        """A loss found outside the records (kernel counters, a full queue)."""
        self._lost(lost)
        self.flush()

    def tick(self, now_ns: int) -> None:
        """Periodic work. Idle connections are never expired: their parser
        state (an HTTP/2 connection's HPACK tables) must outlive any pause;
        only the tracker's LRU bound drops one, and says so. Parked closes
        go once a whole tick passed without a record: the main ring is empty."""
        if self._parked and self._batches == self._batches_at_tick:
            self.release_parked()
        self._batches_at_tick = self._batches
        if self.processor is not None:
            self._processed(self.processor.expire(now_ns))
            self.flush()

    def _report_cuts(self) -> None:
        """Payloads cut by -t: flagged on each event, summed here once.

        Every writer cuts the same items; the first (the event stream) counts."""
        if self.writers and self.writers[0].cut.records:
            cut = self.writers[0].cut
            self._lost(Lost(time.time_ns(), LossReason.TSIZE, cut.records, cut.bytes))

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def finish(self) -> None:
        """Flush what the processor still holds and close the writers (idempotent)."""
        if self._finished:
            return
        self._finished = True
        try:
            self._release_parked(None)
            if self.tracker is not None:
                self._items(self.tracker.flush())
            if self.processor is not None:
                self._processed(self.processor.flush())
            self._report_cuts()
            self.flush()
        finally:
            for writer in self.writers:
                writer.close()
