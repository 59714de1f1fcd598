"""The module lifecycle shared by every capture module.

init → start → run → stop → close, after eCapture's IModule: `init` checks the
kernel and finds what to hook, `start` loads and attaches the BPF object,
`run` reads the ring and dispatches until `stop`, `close` detaches, drains
the ring (within the configured drain timeout; a second `stop` ends it at
once, and what is left is counted as lost, reason `stopped`), flushes the
processor and writers and closes everything. A concrete module
overrides a few small hooks (what to hook, which constants, which processor);
the base owns the BPF object, the reader, decoding, dispatch and loss counts.

Every resource goes on one ExitStack, so `close()` releases in reverse, is
idempotent and works after a failed `start()`.
"""

from __future__ import annotations

import abc
import argparse
import enum
import logging
import struct
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ecapture.bpf import LoadedObject, ObjectSpec, RingReader, check_environment
from ecapture.bpf.ringpos import RingPositions
from ecapture.config import GlobalConfig
from ecapture.errors import BpfError, EcaptureError, SinkError
from ecapture.events import TLS_DATA_HEADER_SIZE, LossReason, Lost
from ecapture.output.base import Writer
from ecapture.pipeline import Pipeline
from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)

OBJECT_DIR = Path(__file__).resolve().parent.parent / "objects"
POLL_INTERVAL_MS = 10  # BENCH.md §3: records are submitted without wake-ups; poll often
STATS_INTERVAL_S = 1.0


class Stat(enum.IntEnum):
    """Indexes of the per-CPU `stats` map (bpf/events.h enum stat_index)."""

    RECORDS = 0
    RING_FULL_RECORDS = 1
    RING_FULL_BYTES = 2
    TRUNCATED_CALLS = 3
    TRUNCATED_BYTES = 4
    READ_FAULTS = 5
    CLOSES_DEFERRED = 6
    CLOSES_LOST = 7


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One uprobe or uretprobe to attach: data, composed per capture mode."""

    program: str
    binary: Path
    offset: int
    retprobe: bool = False
    label: str = ""


class ModuleState(enum.Enum):
    NEW = "new"
    INITIALIZED = "initialized"
    STARTED = "started"
    CLOSED = "closed"


# Records handed to the pipeline at a time, each slice flushed: when the sink
# fails, at most one slice is counted undelivered that partly reached it; while
# draining, a second signal waits for at most one slice (~10 ms). Then how
# often the drain logs its progress.
SLICE_RECORDS = 1024
DRAIN_PROGRESS_S = 1.0
_monotonic = time.monotonic  # the drain's clock; tests replace it


def _payload_bytes(records: Sequence[bytes]) -> int:
    """Payload of raw records read but not handed on (a close record: 0)."""
    return sum(max(len(raw) - TLS_DATA_HEADER_SIZE, 0) for raw in records)


class Module(abc.ABC):
    """Base of every capture module; see the module docstring."""

    name: ClassVar[str]
    config_type: ClassVar[type[GlobalConfig]]
    object_file: ClassVar[str]  # in src/ecapture/objects/
    ring_map: ClassVar[str] = "events"
    stats_map: ClassVar[str | None] = "stats"
    # A small ring the kernel puts records in when ring_map is full (closes):
    # read every STATS_INTERVAL_S and at stop, handed to Pipeline.park.
    spare_ring_map: ClassVar[str | None] = None
    _spare_reader: RingReader | None = None
    summary: ClassVar[str] = ""  # one line for `ecapture --help`

    def __init__(self, config: GlobalConfig) -> None:
        self.config = config
        self.state = ModuleState.NEW
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._abort = threading.Event()  # a second stop(): end the drain now
        self._sink_failed = False
        self._loaded: LoadedObject | None = None
        self._reader: RingReader | None = None
        self._pipeline: Pipeline | None = None
        self._kernel_stats: dict[Stat, int] = {}
        self.links_attached = 0

    # ----- hooks for concrete modules -------------------------------------------------

    @classmethod  # noqa: B027 (an optional hook: most modules add flags, some none)
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the module's own flags to its subcommand; none by default."""

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        """Build the module's config from parsed flags and the global ones."""
        return cls.config_type(**common)

    @abc.abstractmethod
    def prepare(self) -> None:
        """Find what to hook and detect versions; raise EcaptureError if impossible."""

    @abc.abstractmethod
    def probes(self) -> Sequence[ProbeSpec]:
        """The uprobes to attach, computed by prepare()."""

    def auto_attached_programs(self) -> Sequence[str]:
        """Programs attached by their SEC() name (raw_tp, tp_btf, tracepoint)."""
        return ()

    def constants(self) -> dict[str, int]:
        """`const volatile` globals to set before load; the base sets the filters."""
        config = self.config
        return {
            "target_pid": config.pid,
            "target_uid": config.uid or 0,
            "filter_uid": int(config.uid is not None),
        }

    def make_tracker(self) -> ConnectionTracker | None:
        """The per-connection processor, or None when the module needs none."""
        return None

    # ----- lifecycle --------------------------------------------------------------------

    def init(self, writers: Sequence[Writer]) -> None:
        """Check the kernel, find targets, prepare the pipeline."""
        if self.state is not ModuleState.NEW:
            raise EcaptureError(f"module {self.name} initialised twice")
        check_environment(btf_custom_path=self.config.btf_file)
        self.prepare()
        self._pipeline = Pipeline(writers, tracker=self.make_tracker())
        self._stack.callback(self._pipeline.finish)
        self.state = ModuleState.INITIALIZED

    def start(self) -> None:
        """Load the BPF object and attach every probe (all or nothing)."""
        if self.state is not ModuleState.INITIALIZED:
            raise EcaptureError(f"module {self.name} started in state {self.state.value}")
        path = OBJECT_DIR / self.object_file
        if not path.is_file():
            raise BpfError(f"BPF object {path} is missing; build it with `make bpf`")
        spec = ObjectSpec.open(path, btf_custom_path=self.config.btf_file)
        try:
            for name, value in self.constants().items():
                spec.set_constant(name, value)
            spec.set_map_max_entries(self.ring_map, self.config.mapsize_kib * 1024)
            loaded = spec.load()
        except BaseException:
            spec.close()
            raise
        self._loaded = loaded
        # Registered before any attach: a failure below still detaches all.
        self._stack.callback(loaded.close)
        for program in self.auto_attached_programs():
            loaded.attach(program)
            self.links_attached += 1
        pid = self.config.pid or -1
        for probe in self.probes():
            loaded.attach_uprobe(
                probe.program, probe.binary, offset=probe.offset,
                retprobe=probe.retprobe, pid=pid,
            )
            self.links_attached += 1
            log.debug("attached %s", probe.label or probe.program)
        self._reader = loaded.ring_reader(self.ring_map)
        self._stack.callback(self._reader.close)
        self.state = ModuleState.STARTED
        log.info(
            "ready: %d probes attached, ring %d MiB", self.links_attached,
            self.config.mapsize_kib // 1024,
            extra={"capture_module": self.name},
        )

    def run(self) -> None:
        """Read and dispatch until stop() is called (close() drains what is left)."""
        reader, pipeline = self._reader, self._pipeline
        if reader is None or pipeline is None:
            raise EcaptureError(f"module {self.name} runs before start()")
        next_stats = time.monotonic() + STATS_INTERVAL_S
        try:
            while not self._stop.is_set():
                batch = reader.poll(POLL_INTERVAL_MS)
                for index in range(0, len(batch), SLICE_RECORDS):
                    try:
                        pipeline.handle_batch(batch[index:index + SLICE_RECORDS])
                    except SinkError:
                        # Read from the ring, never delivered.
                        self._count_left(batch[index:], None, LossReason.UNDELIVERED)
                        raise
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL_S
                    self._check_kernel_stats()
                    pipeline.tick(time.time_ns())
        except SinkError:
            self._sink_failed = True
            raise

    def stop(self) -> None:
        """Ask run() to return; a second call also ends close()'s drain at once.
        Safe from a signal handler or another thread."""
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """stop() was called at least once."""
        return self._stop.is_set()

    def close(self) -> None:
        """Detach, drain, flush and close everything; idempotent.

        A sink that fails during the drain ends it (what is left is counted
        as undelivered); its error is raised once the summary is logged."""
        if self.state is ModuleState.CLOSED:
            return
        failure: SinkError | None = None
        try:
            if self.state is ModuleState.STARTED and self._loaded is not None:
                # Detach first: under load the ring refills as fast as it is
                # read, so only a ring nobody writes to can be drained.
                self._loaded.detach()
                # The drain's time counts from here: detaching (~0.75 s for 9
                # uprobes here, each unregistration waits for RCU; longer on a
                # loaded machine) must not eat the time to write the ring out.
                try:
                    self._drain(_monotonic())
                except SinkError as error:
                    self._sink_failed = True
                    failure = error
                self._report_unattributed_losses()
        finally:
            # Read while the object is open, whatever failed: the summary
            # must say what the kernel submitted and lost.
            if self._loaded is not None and not self._loaded.closed:
                try:
                    self._kernel_stats = self.read_kernel_stats()
                except BpfError as error:
                    log.warning("cannot read the kernel's counters: %s", error)
            self.state = ModuleState.CLOSED
            try:
                self._stack.close()
            finally:
                self._log_summary()
        if failure is not None:
            raise failure

    # ----- internals --------------------------------------------------------------------

    def _drain(self, started: float) -> None:
        """Hand on what the (detached, hence finite) ring still holds.

        Until `drain_timeout_s` after `started`, progress logged every second; a second
        stop() ends it after the current slice; what is left then is reported
        as lost, reason `stopped`. After a sink failure nothing is handed on:
        what the ring holds is counted as `undelivered`."""
        reader, pipeline = self._reader, self._pipeline
        if reader is None or pipeline is None:
            return
        ring = self._ring_positions()
        try:
            if self._sink_failed:
                self._count_left(self._unread(ring), ring, LossReason.UNDELIVERED)
                return
            left = self._drain_until_done(ring, started)
            if left is not None:
                self._count_left([*left, *self._unread(ring)], ring, LossReason.STOPPED)
        finally:
            if ring is not None:
                ring.close()

    def _unread(self, ring: RingPositions | None) -> list[bytes]:
        """Without a view of the ring's positions, read what it holds to count
        it (never decoded); with one, nothing (its headers are counted)."""
        if ring is not None or self._reader is None:
            return []
        left: list[bytes] = []
        while batch := self._reader.poll(0):
            left += batch
        return left

    def _drain_until_done(
        self, ring: RingPositions | None, started: float,
    ) -> list[bytes] | None:
        """Drain; None when the ring is empty, else the records read but not
        handed on when the time was up or a second stop() came."""
        reader, pipeline = self._reader, self._pipeline
        assert reader is not None and pipeline is not None
        deadline = started + self.config.drain_timeout_s
        next_progress = started + DRAIN_PROGRESS_S
        done_records = done_bytes = 0
        while not self._abort.is_set() and _monotonic() < deadline:
            batch = reader.poll(0)
            if not batch:
                return None
            for index in range(0, len(batch), SLICE_RECORDS):
                piece = batch[index:index + SLICE_RECORDS]
                try:
                    pipeline.handle_batch(piece)
                except SinkError:
                    left = [*batch[index:], *self._unread(ring)]
                    self._count_left(left, ring, LossReason.UNDELIVERED)
                    raise
                done_records += len(piece)
                done_bytes += sum(map(len, piece))
                now = _monotonic()
                if self._abort.is_set() or now >= deadline:
                    return batch[index + SLICE_RECORDS:]
                if now >= next_progress:
                    next_progress = now + DRAIN_PROGRESS_S
                    self._log_drain_progress(ring, now - started, done_records, done_bytes)
        return []

    def _log_drain_progress(
        self, ring: RingPositions | None, elapsed: float, records: int, nbytes: int,
    ) -> None:
        if ring is None:
            log.info("stopping: %d records written in %.0f s; the ring is not empty yet",
                     records, elapsed)
            return
        left = ring.backlog_bytes()
        # In the ring each record also has an 8-byte header and is padded to
        # 8 bytes: ~12 bytes more than its length, on average.
        average = (nbytes + 12 * records) / max(records, 1)
        log.info(
            "stopping: %d records written in %.0f s; %.1f MiB (~%d records) left in the ring; "
            "at most %g s in all (--drain-timeout), a second signal stops now",
            records, elapsed, left / (1 << 20), left / average, self.config.drain_timeout_s,
            extra={"capture_module": self.name},
        )

    def _ring_positions(self) -> RingPositions | None:
        """A read-only view of the ring's positions, or None (then what is left
        is counted by consuming it)."""
        if self._loaded is None:
            return None
        try:
            ring_map = self._loaded.map(self.ring_map)
            return RingPositions(ring_map.fd, ring_map.max_entries)
        except BpfError as error:
            log.warning("cannot read the ring's positions: %s", error)
            return None

    def _count_left(
        self, read: Sequence[bytes], ring: RingPositions | None, reason: LossReason,
    ) -> None:
        """Report as lost the records `read` but not handed on, plus, with a
        `ring`, what it still holds (counted from its record headers)."""
        pipeline = self._pipeline
        assert pipeline is not None
        records, nbytes, exact = len(read), _payload_bytes(read), True
        if ring is not None:
            backlog = ring.backlog(header_size=TLS_DATA_HEADER_SIZE)
            records += backlog.records
            nbytes += backlog.payload
            exact = backlog.exact
        if not records:
            return
        if reason is LossReason.UNDELIVERED:
            where = " or ".join(
                ([] if not read else ["read"]) + ([] if ring is None else ["still in the ring"]))
            why = f"{where}, never delivered: the events sink failed"
        elif self._abort.is_set():
            why = "still in the ring at the second stop signal"
        else:
            why = f"still in the ring after --drain-timeout {self.config.drain_timeout_s:g} s"
        log.warning(
            "%d records (%d payload bytes%s) %s; counted as lost (reason %s)",
            records, nbytes, "" if exact else ", estimated from the ring's positions", why,
            reason.value, extra={"capture_module": self.name, "count": records},
        )
        # After a sink failure the writers drop it; the summary still counts it.
        pipeline.report_loss(Lost(time.time_ns(), reason, records, nbytes))

    def read_kernel_stats(self) -> dict[Stat, int]:
        """Sum the per-CPU counters of the stats map."""
        if self._loaded is None or self.stats_map is None:
            return {}
        stats_map = self._loaded.map(self.stats_map)
        totals: dict[Stat, int] = {}
        for stat in Stat:
            values = stats_map.lookup_percpu(struct.pack("<I", stat))
            totals[stat] = sum(struct.unpack_from("<Q", value)[0] for value in values)
        return totals

    def _check_kernel_stats(self) -> None:
        """Every STATS_INTERVAL_S: the kernel counters, and the spare ring."""
        self._poll_spare_ring()
        previous = self._kernel_stats
        current = self.read_kernel_stats()
        self._kernel_stats = current
        lost = current.get(Stat.RING_FULL_RECORDS, 0) - previous.get(Stat.RING_FULL_RECORDS, 0)
        if lost:
            log.warning(
                "ring buffer full: %d records lost in the last %.0f s (raise --mapsize)",
                lost, STATS_INTERVAL_S, extra={"capture_module": self.name, "count": lost},
            )
        closes = current.get(Stat.CLOSES_LOST, 0) - previous.get(Stat.CLOSES_LOST, 0)
        if closes:
            log.warning(
                "%d connection closes lost (both rings full): those connections stay open "
                "until the next use of their SSL* or the end", closes,
                extra={"capture_module": self.name, "count": closes},
            )

    def _poll_spare_ring(self) -> None:
        """Hand what the spare ring holds to the pipeline (opened on first use)."""
        loaded, pipeline = self._loaded, self._pipeline
        if self.spare_ring_map is None or loaded is None or pipeline is None or loaded.closed:
            return
        if self._spare_reader is None:
            self._spare_reader = loaded.ring_reader(self.spare_ring_map)
            self._stack.callback(self._spare_reader.close)
        while batch := self._spare_reader.poll(0):
            pipeline.park(batch)

    def _report_unattributed_losses(self) -> None:
        """Kernel losses never reported in-band (no later record of that connection)."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        # Closes deferred to the spare ring are ring-full records reported on
        # their connection: deliver them before the balance is drawn.
        self._poll_spare_ring()
        pipeline.release_parked()
        self._kernel_stats = self.read_kernel_stats()
        deferred = self._kernel_stats.get(Stat.CLOSES_DEFERRED, 0)
        lost_closes = self._kernel_stats.get(Stat.CLOSES_LOST, 0)
        if deferred or lost_closes:
            log.info("%d connection closes found the ring full: %d delivered late through "
                     "the spare ring, %d lost (both rings full)", deferred + lost_closes,
                     deferred, lost_closes, extra={"capture_module": self.name})
        reported = pipeline.counters.lost.get(LossReason.RING_FULL)
        records = self._kernel_stats.get(Stat.RING_FULL_RECORDS, 0) - (
            reported.records if reported else 0)
        nbytes = self._kernel_stats.get(Stat.RING_FULL_BYTES, 0) - (
            reported.bytes if reported else 0)
        if records > 0:
            pipeline.report_loss(Lost(time.time_ns(), LossReason.RING_FULL, records,
                                      max(nbytes, 0)))

    def _log_summary(self) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        counters = pipeline.counters
        losses = ", ".join(
            f"{reason.value} {totals.records} records/{totals.bytes} bytes"
            for reason, totals in sorted(counters.lost.items())
        ) or "none"
        kernel = self._kernel_stats
        log.info(
            "summary: %d records (%d payload bytes), %d http exchanges, %d connections closed; "
            "kernel: %d submitted, %d lost; lost or cut: %s%s",
            counters.records, counters.data_bytes, counters.http_exchanges,
            counters.connections_closed, kernel.get(Stat.RECORDS, 0),
            kernel.get(Stat.RING_FULL_RECORDS, 0), losses,
            f"; {counters.parser_errors} chunks the HTTP processor failed on (shown unparsed)"
            if counters.parser_errors else "",
            extra={"capture_module": self.name},
        )
