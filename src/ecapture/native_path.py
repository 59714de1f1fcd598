"""The TLS pipeline in Rust (native/src/core.rs), behind the Pipeline's interface.

With `--format json` a TLS module's records never become Python objects:
the Rust core consumes the main ring itself (mmap of the map's pages),
decodes, tracks connections, frames HTTP and writes the JSON lines; this
class hands each poll's lines to the events sink (and the API's event tap)
and keeps the lifecycle's calls (tick, park, losses, finish) what they are
for the Python Pipeline (src/ecapture/pipeline.py, the reference:
tests/unit/native/test_core_diff.py feeds both the same records and
compares the bytes).

Under saturation the capture must not fall behind for good: while the ring
holds more than BACKLOG_HIGH of its size, ecapture runs at niceness 0 (the
traced programs no longer win every contest for the CPU); once below
BACKLOG_LOW, back to the configured niceness (docs/performance.md#saturation).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ecapture import _native
from ecapture.api.output import EventTap, LentWriter
from ecapture.events import Clock, LossReason, Lost
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.sinks import FdSink
from ecapture.pipeline import LossTotals, PipelineCounters

if TYPE_CHECKING:
    from ecapture.output.base import Sink, Writer
    from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)

# One poll handles at most this much, so that the output written per poll
# stays bounded (a few MiB) and the ring is freed in slices.
POLL_MAX_RECORDS = 16384
POLL_MAX_BYTES = 4 << 20
BACKLOG_HIGH = 0.25
BACKLOG_LOW = 0.05
MAX_LOGGED_WARNINGS = 16


def json_sink(writers: Sequence[Writer]) -> tuple[Sink, list[EventTap]] | None:
    """The events sink when the writers are one JSON-lines writer (plus the
    API's event tap): what the native path can stand in for; else None."""
    if not writers:
        return None
    first = writers[0]
    inner = first.writer if isinstance(first, LentWriter) else first
    if type(inner) is not JsonLinesWriter:
        return None
    taps = [writer for writer in writers[1:] if isinstance(writer, EventTap)]
    if len(taps) != len(writers) - 1:
        return None
    return inner.sink, taps


class NativePipeline:
    """One TLS module's pipeline, run by the Rust core."""

    def __init__(
        self, module: str, sink: Sink, taps: Sequence[EventTap], *, tsize: int,
        tracker: ConnectionTracker | None, nice: int, clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        limits = tracker.limits if tracker is not None else None
        self._core = _native.TlsCore(
            module, tsize=tsize, clock_offset_ns=self.clock.offset_ns,
            http=limits is not None,
            max_connections=limits.max_connections if limits else 0,
            max_body_bytes=limits.max_body_bytes if limits else 0,
            parse_http=limits.parse_http if limits else False,
        )
        self._sink = sink
        # A file or stdout: the core writes its lines to the fd itself.
        self._direct = sink if isinstance(sink, FdSink) else None
        self._taps = tuple(taps)
        self._nice = nice
        self._boosted = False
        self._ring_size = 0
        self._last_poll: tuple[int, int] = (0, 0)
        self._counters = self._core.counters()
        self._warnings_logged = 0
        self._finished = False

    # ----- the ring -----------------------------------------------------------------

    def attach_ring(self, map_fd: int, size: int) -> None:
        """From now on the core reads this ring map itself."""
        self._core.attach_ring(map_fd, size)
        self._ring_size = size

    def poll(self, timeout_ms: int) -> tuple[int, int]:
        """Wait up to `timeout_ms`, handle one slice of the ring and write it
        out; (records, bytes) read. A SinkError leaves them undelivered."""
        handled = self._last_poll = self._core.poll(timeout_ms, POLL_MAX_RECORDS, POLL_MAX_BYTES)
        self._deliver()
        if self._ring_size:
            self._adapt_priority(self._core.pending_bytes() / self._ring_size)
        return handled

    def count_undelivered(self) -> None:
        """The sink failed while the last poll's lines were written: those
        records were read and never delivered (counted; the sink drops the line)."""
        records, nbytes = self._last_poll
        if records:
            self.report_loss(Lost(time.time_ns(), LossReason.UNDELIVERED, records, nbytes))

    def pending_bytes(self) -> int:
        return int(self._core.pending_bytes())

    def _adapt_priority(self, backlog: float) -> None:
        if self._nice <= 0:
            return
        if not self._boosted and backlog > BACKLOG_HIGH:
            self._set_nice(0)
            self._boosted = True
            log.info("the ring is %.0f%% full: ecapture runs at niceness 0 until it drains",
                     backlog * 100)
        elif self._boosted and backlog < BACKLOG_LOW:
            self._set_nice(self._nice)
            self._boosted = False

    @staticmethod
    def _set_nice(nice: int) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as error:
            log.debug("cannot set niceness %d: %s", nice, error.strerror)

    # ----- what the Pipeline does -----------------------------------------------------

    def handle_batch(self, raws: Iterable[bytes]) -> None:
        """Raw records of the main ring read by Python (tests, other readers)."""
        self._core.feed(list(raws))
        self._deliver()

    def park(self, raws: Iterable[bytes]) -> None:
        self._core.park(list(raws))
        self._deliver()

    def release_parked(self) -> None:
        self._core.release_parked()
        self._deliver()

    def report_loss(self, lost: Lost) -> None:
        self._core.report_loss(lost.timestamp_ns, lost.reason.value, lost.records, lost.bytes,
                               lost.pid, lost.comm, lost.conn_id, lost.fd)
        self._deliver()

    def tick(self, now_ns: int) -> None:
        self._core.tick()
        self._deliver()

    def flush(self) -> None:
        self._deliver()

    def finish(self) -> None:
        """What the tracker still holds, the -t cuts; then flush (idempotent)."""
        if self._finished:
            return
        self._finished = True
        self._core.finish()
        self._deliver()

    @property
    def counters(self) -> PipelineCounters:
        """As of the last poll: the API's thread reads this while the capture
        thread polls (the core itself is only ever used by that thread)."""
        records, data_bytes, closed, exchanges, errors, lost = self._counters
        counters = PipelineCounters(
            records=records, data_bytes=data_bytes, connections_closed=closed,
            http_exchanges=exchanges, parser_errors=errors,
        )
        for label, (records, nbytes) in lost.items():
            counters.lost[LossReason(label)] = LossTotals(records, nbytes)
        return counters

    def _deliver(self) -> None:
        self._counters = self._core.counters()
        for warning in self._core.take_warnings():
            if self._warnings_logged < MAX_LOGGED_WARNINGS:
                self._warnings_logged += 1
                log.warning("%s", warning)
        size = self._core.output_len()
        if not size:
            return
        taps = [tap for tap in self._taps if tap.subscribers]
        if self._direct is not None and not taps:
            self._direct.write_direct(self._core.write_output, size)
            return
        output = self._core.take_output()
        self._sink.write(output)
        self._sink.flush()
        for tap in taps:
            tap.publish(output.splitlines())
