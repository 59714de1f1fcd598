"""The module lifecycle shared by every capture module.

init → start → run → stop → close, after eCapture's IModule: `init` checks the
kernel and finds what to hook, `start` loads and attaches the BPF objects,
`run` reads and dispatches until `stop`, `close` detaches, drains the readers,
flushes the processor and writers and frees everything. A concrete module
declares data (modules/parts.py) and overrides a few small hooks; the base owns
the objects, readers, decoding, dispatch and loss counts.

What a module declares, and where eCapture's IModule (user/module/imodule.go)
has it:

  eCapture                        here
  ------------------------------  -------------------------------------------------
  Init(ctx, logger, conf, writer) ``__init__(config)`` + ``init(writers)``: the
                                  kernel check, then ``prepare()`` finds what to hook
  Name()                          ``name``, set by ``@register("name")``
  Start()  (bytecode choice,      ``start()`` runs ``bpf_objects()`` (each a
  manager setup, constant edits,  ``BpfObject``: file, readers, the programs that
  attach)                         load in this mode: bpf_program__set_autoload),
                                  ``constants()``, then ``attach_steps()`` (uprobe
                                  and uretprobe by symbol or offset with a cookie,
                                  tp_btf/raw_tp/tracepoint; each returns its undo,
                                  so a TC clsact filter or a USDT probe is one more
                                  ``AttachStep`` whose undo removes it)
  Run() + readEvents()            ``run()`` polls every ``Reader`` (ring or perf
                                  buffer, one or several maps)
  Events()                        ``BpfObject.readers``
  DecodeFun(map) / Decode()       ``decoders()``: record kind → decoder (one per
                                  struct of bpf/events.h); a record's first u32 is
                                  its kind, so maps may mix kinds
  Dispatcher(event)               the ``Pipeline``: TLS records → the HTTP
                                  ``ConnectionTracker`` (``make_tracker()``), any
                                  other record → ``make_processor()`` (a
                                  ``RecordProcessor``: the command assembler for
                                  shells) or, with none, straight to the writers
  processor → eventCollector      writers render each item by its type's renderer
                                  (output/render.py); a module registers those of
                                  its ``event_types`` and init() refuses a type
                                  a writer could not show
  (per-module kernel counters)    ``stats_layout``: the module's stats map, what
                                  each index counts, which index is "ring full"
  Stop()                          ``stop()``: run() returns
  Close()                         ``close()``: undo every attach step, drain the
                                  readers, flush, release: idempotent
  SetChild(child)                 not needed: a module subclasses Module
  RegisteFunc(factory)            ``@register`` in modules/registry.py; modules of
                                  other packages come through the
                                  ``ecapture.modules`` entry point group

Every resource goes on one ExitStack, so `close()` releases in reverse, is
idempotent and works after a failed `start()`.
"""

from __future__ import annotations

import abc
import argparse
import enum
import logging
import select
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

from ecapture.bpf import (
    LoadedObject,
    LostSamples,
    ObjectSpec,
    PerfReader,
    RingReader,
    check_environment,
)
from ecapture.config import GlobalConfig
from ecapture.errors import BpfError, EcaptureError
from ecapture.events import LossReason, Lost, decode_record
from ecapture.modules.parts import (
    AttachStep,
    BpfObject,
    Decoder,
    ProbeSpec,
    Reader,
    ReaderKind,
    SectionAttach,
    StatsLayout,
    dispatch_decoder,
)
from ecapture.output.base import Writer
from ecapture.output.render import missing_renderers
from ecapture.pipeline import Pipeline
from ecapture.processor.interface import RecordProcessor
from ecapture.processor.tracker import ConnectionTracker

__all__ = ["Module", "ModuleState", "ProbeSpec", "Stat"]

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


# tls.bpf.c's counters, as the TLS module reports them.
TLS_STATS = StatsLayout(
    "stats",
    {Stat.RECORDS: "submitted", Stat.RING_FULL_RECORDS: "lost",
     Stat.TRUNCATED_CALLS: "calls cut", Stat.READ_FAULTS: "read faults"},
    records=Stat.RECORDS, ring_full_records=Stat.RING_FULL_RECORDS,
    ring_full_bytes=Stat.RING_FULL_BYTES,
)


class ModuleState(enum.Enum):
    NEW = "new"
    INITIALIZED = "initialized"
    STARTED = "started"
    CLOSED = "closed"


class Module(abc.ABC):
    """Base of every capture module; see the module docstring."""

    name: ClassVar[str]
    config_type: ClassVar[type[GlobalConfig]] = GlobalConfig  # a module without flags needs none
    object_file: ClassVar[str]  # in src/ecapture/objects/ (the default bpf_objects())
    ring_map: ClassVar[str] = "events"
    stats_map: ClassVar[str | None] = "stats"
    stats_layout: ClassVar[StatsLayout | None] = TLS_STATS
    # Item types the module's processor (or, without one, its decoders) hands
    # to the writers: each needs a JSON and a text renderer (output/render.py).
    event_types: ClassVar[tuple[type, ...]] = ()
    summary: ClassVar[str] = ""  # one line for `ecapture --help`

    def __init__(self, config: GlobalConfig) -> None:
        self.config = config
        self.state = ModuleState.NEW
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._loaded: LoadedObject | None = None  # the first object
        self._objects: dict[str, LoadedObject] = {}
        self._reader: RingReader | None = None  # the first reader, when it is a ring
        self._readers: list[RingReader | PerfReader] = []
        self._undo = ExitStack()  # one undo per attach step
        self._pipeline: Pipeline | None = None
        self._kernel_stats: dict[int, int] = {}
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

    def probes(self) -> Sequence[ProbeSpec]:
        """The uprobes to attach, computed by prepare()."""
        return ()

    def auto_attached_programs(self) -> Sequence[str]:
        """Programs attached by their SEC() name (raw_tp, tp_btf, tracepoint)."""
        return ()

    def bpf_objects(self) -> Sequence[BpfObject]:
        """The objects to load, with their readers and the programs this mode loads."""
        return (BpfObject(self.object_file, (Reader(self.ring_map),)),)

    def attach_steps(self) -> Sequence[AttachStep]:
        """Everything to attach, in order; by default the SEC()-named programs, then
        probes()."""
        return (*(SectionAttach(program) for program in self.auto_attached_programs()),
                *self.probes())

    def decoders(self) -> Mapping[int, Decoder] | None:
        """Record kind → decoder; None: the TLS records of events.py."""
        return None

    def make_processor(self) -> RecordProcessor | None:
        """The processor of records other than TLS's, or None to write them as they are."""
        return None

    def summary_counts(self) -> str:
        """What the exit summary says this module produced."""
        pipeline = self._pipeline
        if pipeline is None:
            return ""
        return ", ".join(f"{count} {name}" for name, count in sorted(
            pipeline.counters.items.items())) or "nothing"

    def constants(self) -> Mapping[str, int | bytes]:
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
        missing = missing_renderers(self.event_types)
        if missing:
            raise EcaptureError(f"module {self.name}: no renderer for {', '.join(missing)}")
        check_environment(btf_custom_path=self.config.btf_file)
        self.prepare()
        decoders = self.decoders()
        self._pipeline = Pipeline(
            writers, tracker=self.make_tracker(), processor=self.make_processor(),
            decoder=decode_record if decoders is None else dispatch_decoder(decoders),
        )
        self._stack.callback(self._pipeline.finish)
        self.state = ModuleState.INITIALIZED

    def start(self) -> None:
        """Load every BPF object and attach every step (all or nothing)."""
        if self.state is not ModuleState.INITIALIZED:
            raise EcaptureError(f"module {self.name} started in state {self.state.value}")
        for declared in self.bpf_objects():
            self._load(declared)  # each object's close is on the stack once loaded
        if not self._objects:
            raise EcaptureError(f"module {self.name} declares no BPF object")
        # After the objects: on the way out the attach steps are undone first,
        # while their programs still exist; a failed step below undoes the rest.
        self._stack.callback(self._undo.close)
        pid = self.config.pid or -1
        first = next(iter(self._objects))
        for step in self.attach_steps():
            loaded = self._objects.get(step.object or first)
            if loaded is None:
                raise BpfError(f"attach step {step.label or step} names no object of "
                               f"{self.name} ({', '.join(self._objects)})")
            self._undo.callback(step.attach(loaded, pid).close)
            self.links_attached += 1
            log.debug("attached %s", step.label or getattr(step, "program", step))
        self.state = ModuleState.STARTED
        log.info(
            "ready: %d probes attached, %s %d MiB", self.links_attached,
            "ring" if len(self._readers) == 1 else f"{len(self._readers)} readers,",
            self.config.mapsize_kib // 1024,
            extra={"capture_module": self.name},
        )

    def _load(self, declared: BpfObject) -> None:
        path = Path(declared.file)
        if not path.is_absolute():
            path = OBJECT_DIR / path
        if not path.is_file():
            raise BpfError(f"BPF object {path} is missing; build it with `make bpf`")
        spec = ObjectSpec.open(path, btf_custom_path=self.config.btf_file)
        try:
            known = spec.constants()
            for name, value in self.constants().items():
                if name in known:  # the base's filters, where the object has them
                    spec.set_constant(name, value)
            if declared.programs is not None:
                names = set(spec.program_names())
                unknown = declared.programs - names
                if unknown:
                    raise BpfError(f"{path.name} has no program {', '.join(sorted(unknown))}")
                for program in names:
                    spec.set_autoload(program, program in declared.programs)
            for reader in declared.readers:
                if reader.kind is ReaderKind.RING and reader.sized_by_mapsize:
                    spec.set_map_max_entries(reader.map, self.config.mapsize_kib * 1024)
            loaded = spec.load()
        except BaseException:
            spec.close()
            raise
        self._stack.callback(loaded.close)
        if self._loaded is None:
            self._loaded = loaded
        self._objects[declared.name] = loaded
        for reader in declared.readers:
            opened: RingReader | PerfReader
            if reader.kind is ReaderKind.RING:
                opened = loaded.ring_reader(reader.map)
                if self._reader is None:
                    self._reader = opened
            else:
                opened = loaded.perf_reader(reader.map, pages_per_cpu=reader.pages_per_cpu)
            self._stack.callback(opened.close)
            self._readers.append(opened)

    def run(self) -> None:
        """Read and dispatch until stop() is called (close() drains what is left)."""
        pipeline = self._pipeline
        if not self._readers or pipeline is None:
            raise EcaptureError(f"module {self.name} runs before start()")
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not self._stop.is_set():
            self._poll_once(POLL_INTERVAL_MS)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL_S
                self._check_kernel_stats()
                pipeline.tick(time.time_ns())

    def _poll_once(self, timeout_ms: int) -> int:
        """One poll of every reader; returns the records handled."""
        readers, pipeline = self._readers, self._pipeline
        if pipeline is None:
            return 0
        if len(readers) == 1:
            return self._handle(readers[0], readers[0].poll(timeout_ms))
        if timeout_ms:
            # Producers may submit without a wake-up: wait at most the timeout,
            # then consume every reader whatever woke us.
            select.select([reader.fileno() for reader in readers], [], [], timeout_ms / 1000)
        return sum(self._handle(reader, reader.poll(0)) for reader in readers)

    def _handle(self, reader: RingReader | PerfReader,
                batch: Sequence[bytes | LostSamples]) -> int:
        pipeline = self._pipeline
        if not batch or pipeline is None:
            return 0
        if isinstance(reader, PerfReader):
            records: list[bytes] = []
            for item in batch:
                if isinstance(item, LostSamples):  # in band, where the kernel said it
                    pipeline.handle_batch(records)
                    records = []
                    pipeline.report_loss(Lost(time.time_ns(), LossReason.RING_FULL,
                                              item.count, 0))
                else:
                    records.append(item)
            pipeline.handle_batch(records)
        else:
            pipeline.handle_batch(batch)  # type: ignore[arg-type]  # a ring has no LostSamples
        return len(batch)

    def stop(self) -> None:
        """Ask run() to return; safe from a signal handler or another thread."""
        self._stop.set()

    def close(self) -> None:
        """Detach, drain, flush and close everything; idempotent."""
        if self.state is ModuleState.CLOSED:
            return
        try:
            if self.state is ModuleState.STARTED and self._loaded is not None:
                # Detach first: under load the ring refills as fast as it is
                # read, so only a ring nobody writes to can be drained.
                self._undo.close()
                for loaded in self._objects.values():
                    loaded.detach()
                self._drain()
                self._report_unattributed_losses()
        finally:
            self.state = ModuleState.CLOSED
            self._stack.close()
            self._log_summary()

    # ----- internals --------------------------------------------------------------------

    def _drain(self) -> None:
        """Consume what is still in the (detached, hence finite) readers."""
        if self._pipeline is None:
            return
        while self._poll_once(0):
            pass

    def read_kernel_stats(self) -> dict[int, int]:
        """Sum the per-CPU counters of the stats map (of every object that has it)."""
        layout = self.stats_layout
        if layout is None or self.stats_map is None:
            return {}
        totals: dict[int, int] = {}
        for loaded in self._objects.values():
            try:
                stats_map = loaded.map(layout.map)
            except BpfError:
                continue  # this object counts nothing
            for index in range(stats_map.max_entries):
                values = stats_map.lookup_percpu(struct.pack("<I", index))
                totals[index] = totals.get(index, 0) + sum(
                    struct.unpack_from("<Q", value)[0] for value in values)
        return totals

    def _check_kernel_stats(self) -> None:
        previous = self._kernel_stats
        current = self.read_kernel_stats()
        self._kernel_stats = current
        full = self.stats_layout.ring_full_records if self.stats_layout else None
        if full is None:
            return
        lost = current.get(full, 0) - previous.get(full, 0)
        if lost:
            log.warning(
                "ring buffer full: %d records lost in the last %.0f s (raise --mapsize)",
                lost, STATS_INTERVAL_S, extra={"capture_module": self.name, "count": lost},
            )

    def _report_unattributed_losses(self) -> None:
        """Kernel losses never reported in-band (no later record of that connection)."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        self._kernel_stats = self.read_kernel_stats()
        layout = self.stats_layout
        if layout is None or layout.ring_full_records is None:
            return
        reported = pipeline.counters.lost.get(LossReason.RING_FULL)
        records = self._kernel_stats.get(layout.ring_full_records, 0) - (
            reported.records if reported else 0)
        nbytes = (0 if layout.ring_full_bytes is None
                  else self._kernel_stats.get(layout.ring_full_bytes, 0)) - (
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
        layout = self.stats_layout
        kernel_text = ", ".join(
            f"{kernel.get(index, 0)} {label}" for index, label in layout.labels.items()
        ) if layout is not None else "no counters"
        log.info(
            "summary: %d records, %s; kernel: %s; lost or cut: %s%s",
            counters.records, self.summary_counts(), kernel_text, losses,
            f"; {counters.parser_errors} records the processor failed on"
            if counters.parser_errors else "",
            extra={"capture_module": self.name},
        )
