"""The module lifecycle shared by every capture module.

init → start → run → stop → close, after eCapture's IModule: `init` checks the
kernel and finds what to hook, `start` loads and attaches the BPF objects
(those of a module whose objects follow from its flags alone were loaded in
a thread while `init` found what to hook: `objects_before_prepare`),
`run` reads and dispatches until `stop`, `close` detaches, drains the readers
(within the configured drain timeout; a second `stop` ends it at once, and
what is left is counted as lost, reason `stopped`), flushes the processor and
writers and frees everything. A concrete module
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
from typing import TYPE_CHECKING, Any, ClassVar

from ecapture.bpf import (
    LoadedObject,
    LostSamples,
    ObjectSpec,
    PerfReader,
    RingReader,
    check_environment,
)
from ecapture.bpf.ringpos import RingPositions
from ecapture.config import DataPath, GlobalConfig
from ecapture.errors import BpfError, ConfigError, EcaptureError, SinkError
from ecapture.events import TLS_DATA_HEADER_SIZE, LossReason, Lost, decode_record
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
from ecapture.output.render import missing_renderers

# Loaded by init(), for the data path the configuration picks: a module
# file (imported by the registry for every command, --help included) must
# not pull in the Python pipeline, the HTTP parsers or the writers.
if TYPE_CHECKING:
    from ecapture.native_path import NativePipeline
    from ecapture.output.base import Writer
    from ecapture.pipeline import Pipeline, PipelineCounters
    from ecapture.processor.interface import RecordProcessor
    from ecapture.processor.tracker import ConnectionTracker

__all__ = ["Module", "ModuleState", "ProbeSpec", "Stat"]

log = logging.getLogger(__name__)

OBJECT_DIR = Path(__file__).resolve().parent.parent / "objects"
# Set by the base's constants() in every object that declares them.
FILTER_CONSTANTS = frozenset({"target_pid", "target_uid", "filter_uid"})
POLL_INTERVAL_MS = 10  # docs/kernel.md#wake-ups: records are submitted without wake-ups; poll often
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


# Records handed to the pipeline at a time, each slice flushed: when the sink
# fails, at most one slice is counted undelivered that partly reached it; while
# draining, a second signal waits for at most one slice (~10 ms). Then how
# often the drain logs its progress.
SLICE_RECORDS = 1024
DRAIN_PROGRESS_S = 1.0
_monotonic = time.monotonic  # the drain's clock; tests replace it

Polled = Sequence[bytes | LostSamples]  # what one poll of a ring or perf reader gives


def _raw_records(batch: Polled) -> list[bytes]:
    """The records of a poll (a perf reader's in-band loss counts left out)."""
    return [item for item in batch if not isinstance(item, LostSamples)]


def _payload_bytes(records: Sequence[bytes]) -> int:
    """Payload of raw records read but not handed on (a close record: 0)."""
    return sum(max(len(raw) - TLS_DATA_HEADER_SIZE, 0) for raw in records)


class Module(abc.ABC):
    """Base of every capture module; see the module docstring."""

    name: ClassVar[str]
    config_type: ClassVar[type[GlobalConfig]] = GlobalConfig  # a module without flags needs none
    object_file: ClassVar[str]  # in src/ecapture/objects/ (the default bpf_objects())
    ring_map: ClassVar[str] = "events"
    stats_map: ClassVar[str | None] = "stats"
    stats_layout: ClassVar[StatsLayout | None] = TLS_STATS
    # A small ring the kernel puts records in when ring_map is full (closes):
    # read every STATS_INTERVAL_S and at stop, handed to Pipeline.park.
    spare_ring_map: ClassVar[str | None] = None
    _spare_reader: RingReader | None = None
    # Item types the module's processor (or, without one, its decoders) hands
    # to the writers: each needs a JSON and a text renderer (output/render.py).
    event_types: ClassVar[tuple[type, ...]] = ()
    summary: ClassVar[str] = ""  # one line for `ecapture --help`
    # True when bpf_objects() and constants() follow from the config alone, not
    # from what prepare() finds: init() then has them loaded in a thread while
    # prepare() runs (the kernel's verifier and prepare()'s ELF reading and
    # disassembly take a CPU each), and start() attaches to them. start()
    # loads again what differs by then, so a wrong True costs time, not
    # correctness.
    objects_before_prepare: ClassVar[bool] = False

    def __init__(self, config: GlobalConfig) -> None:
        self.config = config
        self.state = ModuleState.NEW
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._abort = threading.Event()  # a second stop(): end the drain now
        self._sink_failed = False
        self._loaded: LoadedObject | None = None  # the first object
        self._objects: dict[str, LoadedObject] = {}
        self._reader: RingReader | None = None  # the first reader, when it is a ring
        self._reader_map: str | None = None  # its map: the drain reads its positions
        self._readers: list[RingReader | PerfReader] = []
        self._undo = ExitStack()  # one undo per attach step
        self._pipeline: Pipeline | NativePipeline | None = None
        # Set when the Rust core reads the first ring itself (native_path.py).
        self._native: NativePipeline | None = None
        self._kernel_stats: dict[int, int] = {}
        self._early: _EarlyLoad | None = None  # objects loading while prepare() runs
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
        """What the exit summary says this module read and produced."""
        pipeline = self._pipeline
        if pipeline is None:
            return "nothing read"
        counters = pipeline.counters
        produced = ", ".join(f"{count} {name}" for name, count in sorted(counters.items.items()))
        return f"{counters.records} records, {produced or 'nothing produced'}"

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

    def after_attach(self) -> None:  # noqa: B027 (an optional hook)
        """Runs once every step is attached, before `ready` is logged: e.g. report
        what the probes cannot have seen (calls already in flight)."""

    # ----- lifecycle --------------------------------------------------------------------

    def init(self, writers: Sequence[Writer]) -> None:
        """Check the kernel, find targets, prepare the pipeline."""
        if self.state is not ModuleState.NEW:
            raise EcaptureError(f"module {self.name} initialised twice")
        missing = missing_renderers(self.event_types)
        if missing:
            raise EcaptureError(f"module {self.name}: no renderer for {', '.join(missing)}")
        check_environment(btf_custom_path=self.config.btf_file)
        if self.objects_before_prepare:
            self._early = _EarlyLoad(self)
            self._stack.callback(self._early.close)  # what start() never took
        self.prepare()
        decoders = self.decoders()
        tracker, processor = self.make_tracker(), self.make_processor()
        self._native = self._native_pipeline(writers, tracker, decoders, processor)
        if self._native is not None:
            self._pipeline = self._native
        else:
            from ecapture.pipeline import Pipeline

            self._pipeline = Pipeline(
                writers, tracker=tracker, processor=processor,
                decoder=decode_record if decoders is None else dispatch_decoder(decoders),
            )
        self._stack.callback(self._pipeline.finish)
        self.state = ModuleState.INITIALIZED

    def _native_pipeline(
        self, writers: Sequence[Writer], tracker: ConnectionTracker | None,
        decoders: Mapping[int, Decoder] | None, processor: RecordProcessor | None,
    ) -> NativePipeline | None:
        """The Rust core, when it can stand in for the Python pipeline: TLS
        records only (no decoders or processor of the module's own), written
        as JSON lines only; --data-path python (or native) decides."""
        wanted = self.config.data_path
        if wanted is DataPath.PYTHON:
            return None
        from ecapture.native_path import NativePipeline, json_sink

        sink = json_sink(writers)
        why_not = ("the module has its own records" if decoders is not None or processor
                   is not None else "the output is not JSON lines only" if sink is None
                   else None)
        if why_not is not None or sink is None:
            if wanted is DataPath.NATIVE:
                raise ConfigError(f"--data-path native: {why_not}; use --format json "
                                  "without --har, or --data-path auto")
            return None
        return NativePipeline(self.name, sink[0], sink[1], tsize=self.config.tsize,
                              tracker=tracker, nice=self.config.nice)

    def start(self) -> None:
        """Load every BPF object and attach every step (all or nothing)."""
        if self.state is not ModuleState.INITIALIZED:
            raise EcaptureError(f"module {self.name} started in state {self.state.value}")
        constants = self.constants()
        declared_objects = tuple(self.bpf_objects())
        early = None if self._early is None else self._early.take(declared_objects, constants)
        unset = set(constants) - FILTER_CONSTANTS
        for declared in declared_objects:
            if early is None:
                loaded_object, declared_here = self._load_object(declared, constants)
            else:
                loaded_object, declared_here = early.pop(0)
            try:
                self._adopt(declared, loaded_object)  # its close is on the stack first
            except BaseException:
                for rest, _ in early or ():  # loaded early, never adopted
                    rest.close()
                raise
            unset -= declared_here
        if not self._objects:
            raise EcaptureError(f"module {self.name} declares no BPF object")
        if unset:  # a constant no object declares: a typo, or the wrong object
            raise BpfError(f"module {self.name}: no BPF object has the constant "
                           f"{', '.join(sorted(unset))}")
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
        self.after_attach()
        log.info(
            "ready: %d probes attached, %s %d MiB", self.links_attached,
            "ring" if len(self._readers) == 1 else f"{len(self._readers)} readers,",
            self.config.mapsize_kib // 1024,
            extra={"capture_module": self.name},
        )

    def _load_object(
        self, declared: BpfObject, constants: Mapping[str, int | bytes],
    ) -> tuple[LoadedObject, set[str]]:
        """Load one object with the constants it declares; the object (the
        caller's to close) and those constants' names. Touches no state of
        the module: _EarlyLoad runs it in its thread."""
        path = Path(declared.file)
        if not path.is_absolute():
            path = OBJECT_DIR / path
        if not path.is_file():
            raise BpfError(f"BPF object {path} is missing; build it with `make bpf`")
        spec = ObjectSpec.open(path, btf_custom_path=self.config.btf_file)
        try:
            # Each constant goes to the objects that declare it (a module's
            # objects differ: tls.bpf.o has call_limit, tc.bpf.o snaplen);
            # start() refuses one that no object has.
            known = set(spec.constants())
            for name, value in constants.items():
                if name in known:
                    spec.set_constant(name, value)
            declared_here = known & set(constants)
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
        return loaded, declared_here

    def _adopt(self, declared: BpfObject, loaded: LoadedObject) -> None:
        """A loaded object becomes the module's: closed with it; its readers opened."""
        self._stack.callback(loaded.close)
        if self._loaded is None:
            self._loaded = loaded
        self._objects[declared.name] = loaded
        for reader in declared.readers:
            opened: RingReader | PerfReader
            if self._native is not None and self._reader_map is None:
                if reader.kind is not ReaderKind.RING:
                    raise BpfError(f"the native data path reads rings only; {reader.map} "
                                   "is a perf buffer (use --data-path python)")
                ring_map = loaded.map(reader.map)
                self._native.attach_ring(ring_map.fd, ring_map.max_entries)
                self._reader_map = reader.map
                continue
            if reader.kind is ReaderKind.RING:
                opened = loaded.ring_reader(reader.map)
                if self._reader is None:
                    self._reader, self._reader_map = opened, reader.map
            else:
                opened = loaded.perf_reader(reader.map, pages_per_cpu=reader.pages_per_cpu)
            self._stack.callback(opened.close)
            self._readers.append(opened)

    def run(self) -> None:
        """Read and dispatch until stop() is called (close() drains what is left)."""
        pipeline = self._pipeline
        if not (self._readers or self._native) or pipeline is None:
            raise EcaptureError(f"module {self.name} runs before start()")
        next_stats = time.monotonic() + STATS_INTERVAL_S
        try:
            while not self._stop.is_set():
                self._poll_once(POLL_INTERVAL_MS)
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL_S
                    self._check_kernel_stats()
                    pipeline.tick(time.time_ns())
        except SinkError:
            self._sink_failed = True
            raise

    def _poll_once(self, timeout_ms: int) -> int:
        """One poll of every reader; returns the records handled."""
        readers, pipeline = self._readers, self._pipeline
        if pipeline is None:
            return 0
        if self._native is not None:
            return self._native_poll(timeout_ms if not readers else 0) + sum(
                self._handle(reader, reader.poll(0)) for reader in readers)
        if len(readers) == 1:
            return self._handle(readers[0], readers[0].poll(timeout_ms))
        if timeout_ms:
            # Producers may submit without a wake-up: wait at most the timeout,
            # then consume every reader whatever woke us.
            select.select([reader.fileno() for reader in readers], [], [], timeout_ms / 1000)
        return sum(self._handle(reader, reader.poll(0)) for reader in readers)

    def _native_poll(self, timeout_ms: int) -> int:
        """One slice of the first ring through the Rust core; when the sink
        fails, that slice was read and never delivered."""
        native = self._native
        assert native is not None
        try:
            return native.poll(timeout_ms)[0]
        except SinkError:
            native.count_undelivered()
            raise

    def _handle(self, reader: RingReader | PerfReader, batch: Polled) -> int:
        """Hand one poll's records on, SLICE_RECORDS at a time."""
        for index in range(0, len(batch), SLICE_RECORDS):
            self._handle_slice(reader, batch, index)
        return len(batch)

    def _handle_slice(self, reader: RingReader | PerfReader, batch: Polled, index: int) -> None:
        """batch[index:index + SLICE_RECORDS] to the pipeline (flushed); when the
        sink fails, the rest of the batch was read and never delivered."""
        try:
            self._dispatch(reader, batch[index:index + SLICE_RECORDS])
        except SinkError:
            self._count_left(_raw_records(batch[index:]), None, LossReason.UNDELIVERED)
            raise

    def _dispatch(self, reader: RingReader | PerfReader, batch: Polled) -> None:
        pipeline = self._pipeline
        if not batch or pipeline is None:
            return
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

    def stop(self) -> None:
        """Ask run() to return; a second call also ends close()'s drain at once.
        Safe from a signal handler or another thread."""
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()

    @property
    def counters(self) -> PipelineCounters | None:
        """What this module's pipeline counted so far (None before init): the
        controller adds them up across reloads (src/ecapture/api/controller.py)."""
        return None if self._pipeline is None else self._pipeline.counters

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
                failure = self._detach_while_reading()
                # The drain's time counts from here: detaching (~0.75 s for 9
                # uprobes here, each unregistration waits for RCU; longer on a
                # loaded machine) must not eat the time to write the ring out.
                try:
                    self._drain(_monotonic())
                except SinkError as error:
                    self._sink_failed = True
                    failure = failure or error
                self._report_unattributed_losses()
        finally:
            # Read while the objects are open, whatever failed: the summary
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

    def _detach(self) -> None:
        self._undo.close()
        for loaded in self._objects.values():
            loaded.detach()

    def _detach_while_reading(self) -> SinkError | None:
        """Detach every probe; meanwhile the native core goes on writing the
        ring out. Each uprobe's unregistration waits ~0.1 s for RCU, one after
        the other (closing them from several threads gained nothing), so a
        stop takes about the longer of detaching and draining, not their sum.
        The Python readers are drained after detaching, as before. Returns the
        sink's failure, if it failed meanwhile (then the rest is undelivered)."""
        native = self._native
        if native is None or self._sink_failed:
            self._detach()
            return None
        failed: list[BaseException] = []

        def detach() -> None:
            try:
                self._detach()
            except BaseException as error:  # re-raised in the closing thread
                failed.append(error)

        detaching = threading.Thread(target=detach, name="ecapture-detach", daemon=True)
        detaching.start()
        failure: SinkError | None = None
        try:
            while detaching.is_alive() and not self._abort.is_set():
                try:
                    native.poll(POLL_INTERVAL_MS)
                except SinkError as error:
                    native.count_undelivered()
                    self._sink_failed = True
                    failure = error
                    break
                except OSError:
                    break  # the drain meets it again, and says so
        finally:
            detaching.join()
        if failed:
            raise failed[0]
        return failure

    def _drain(self, started: float) -> None:
        """Hand on what the (detached, hence finite) readers still hold.

        Until `drain_timeout_s` after `started`, progress logged every second; a second
        stop() ends it after the current slice; what is left then is reported
        as lost, reason `stopped`. After a sink failure nothing is handed on:
        what the readers hold is counted as `undelivered`."""
        if self._pipeline is None:
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
        """What the readers still hold, read to be counted (never decoded); with
        a view of the first ring's positions, that ring is counted from its
        headers instead and left alone."""
        left: list[bytes] = []
        for reader in self._readers:
            if ring is not None and reader is self._reader:
                continue
            while batch := reader.poll(0):
                left += _raw_records(batch)
        return left

    def _drain_until_done(
        self, ring: RingPositions | None, started: float,
    ) -> list[bytes] | None:
        """Drain; None when the readers are empty, else the records read but not
        handed on when the time was up or a second stop() came."""
        deadline = started + self.config.drain_timeout_s
        next_progress = started + DRAIN_PROGRESS_S
        done_records = done_bytes = 0

        def handed_on(records: int, nbytes: int) -> float:
            """Count a slice written out, log progress when due; returns the time."""
            nonlocal done_records, done_bytes, next_progress
            done_records += records
            done_bytes += nbytes
            now = _monotonic()
            if now >= next_progress:
                next_progress = now + DRAIN_PROGRESS_S
                self._log_drain_progress(ring, now - started, done_records, done_bytes)
            return now

        while not self._abort.is_set() and _monotonic() < deadline:
            handled = False
            if self._native is not None:
                try:
                    records, nbytes = self._native.poll(0)
                except SinkError:  # that slice, and what the ring still holds, undelivered
                    self._native.count_undelivered()
                    self._count_left(self._unread(ring), ring, LossReason.UNDELIVERED)
                    raise
                except OSError as error:  # a record header the kernel cannot have written
                    log.error("reading the ring at stop: %s; what it still holds is counted "
                              "as lost", error, extra={"capture_module": self.name})
                    return []  # the caller counts the ring's backlog as stopped
                if records:
                    handled = True
                    handed_on(records, nbytes)
            for reader in self._readers:
                batch = reader.poll(0)
                if not batch:
                    continue
                handled = True
                for index in range(0, len(batch), SLICE_RECORDS):
                    try:
                        self._dispatch(reader, batch[index:index + SLICE_RECORDS])
                    except SinkError:
                        left = [*_raw_records(batch[index:]), *self._unread(ring)]
                        self._count_left(left, ring, LossReason.UNDELIVERED)
                        raise
                    piece = _raw_records(batch[index:index + SLICE_RECORDS])
                    now = handed_on(len(piece), sum(map(len, piece)))
                    if self._abort.is_set() or now >= deadline:
                        return _raw_records(batch[index + SLICE_RECORDS:])
            if not handled:
                return None
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
        """A read-only view of the first ring's positions, or None (then what is
        left is counted by consuming it)."""
        if self._loaded is None or self._reader_map is None:
            return None
        try:
            ring_map = self._loaded.map(self._reader_map)
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
        """Every STATS_INTERVAL_S: the kernel counters, and the spare ring."""
        self._poll_spare_ring()
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
        if self.spare_ring_map is None:
            return
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
        if self.spare_ring_map is not None:
            deferred = self._kernel_stats.get(Stat.CLOSES_DEFERRED, 0)
            lost_closes = self._kernel_stats.get(Stat.CLOSES_LOST, 0)
            if deferred or lost_closes:
                log.info("%d connection closes found the ring full: %d delivered late through "
                         "the spare ring, %d lost (both rings full)", deferred + lost_closes,
                         deferred, lost_closes, extra={"capture_module": self.name})
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
            "summary: %s; kernel: %s; lost or cut: %s%s",
            self.summary_counts(), kernel_text, losses,
            f"; {counters.parser_errors} records the processor failed on"
            if counters.parser_errors else "",
            extra={"capture_module": self.name},
        )


class _EarlyLoad:
    """A module's BPF objects, loaded in a thread while its prepare() runs
    (Module.objects_before_prepare): all or nothing, as start() loads them."""

    def __init__(self, module: Module) -> None:
        self.declared = tuple(module.bpf_objects())
        self.constants = dict(module.constants())
        self._module = module
        self._loaded: list[tuple[LoadedObject, set[str]]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bpf-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for declared in self.declared:
                self._loaded.append(self._module._load_object(declared, self.constants))
        except BaseException as error:  # start() raises it, as if it had loaded them
            self._error = error
            self._close_loaded()

    def take(
        self, declared: tuple[BpfObject, ...], constants: Mapping[str, int | bytes],
    ) -> list[tuple[LoadedObject, set[str]]] | None:
        """Wait for the loads; the objects (the caller's from now on), or None when
        start() declares other objects or constants than init() did (then closed)."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if (declared, dict(constants)) != (self.declared, self.constants):
            log.debug("BPF objects or constants changed during prepare(): loading again")
            self._close_loaded()
            return None
        loaded, self._loaded = self._loaded, []
        return loaded

    def close(self) -> None:
        """What start() did not take (init() or prepare() failed): closed."""
        self._thread.join()
        self._close_loaded()

    def _close_loaded(self) -> None:
        loaded, self._loaded = self._loaded, []
        for loaded_object, _ in reversed(loaded):
            loaded_object.close()
