"""What a capture module declares, as data: objects, readers, counters, attach steps.

modules/base.py runs these; a module only lists them (see its docstring for
the mapping onto eCapture's IModule).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ecapture.bpf import LoadedObject
from ecapture.bpf.tc import remove_leftover_filters
from ecapture.errors import DecodeError
from ecapture.events import Clock

# A decoder turns one raw record of one kind into a record object.
Decoder = Callable[[bytes, Clock], object]


class ReaderKind(enum.Enum):
    RING = "ring"  # BPF_MAP_TYPE_RINGBUF
    PERF = "perf"  # BPF_MAP_TYPE_PERF_EVENT_ARRAY: losses arrive in band


@dataclass(frozen=True, slots=True)
class Reader:
    """One map the module reads records from."""

    map: str
    kind: ReaderKind = ReaderKind.RING
    pages_per_cpu: int = 64  # perf buffers only
    sized_by_mapsize: bool = True  # --mapsize sets this ring's size


@dataclass(frozen=True, slots=True)
class BpfObject:
    """One BPF object of a module and what of it loads in the chosen mode."""

    file: str | Path  # a bare name lives in src/ecapture/objects/; a path is used as is
    readers: tuple[Reader, ...] = (Reader("events"),)
    # The programs loaded (bpf_program__set_autoload); None: every program.
    programs: frozenset[str] | None = None

    @property
    def name(self) -> str:
        return Path(self.file).name


@dataclass(frozen=True, slots=True)
class StatsLayout:
    """A module's per-CPU counter array: what each index counts.

    `labels` words the exit summary ("submitted", "lines cut"...); the three
    indexes name the counters the base needs to report losses the records
    never carried (None when the object has no such counter).
    """

    map: str
    labels: Mapping[int, str]
    records: int | None = None
    ring_full_records: int | None = None
    ring_full_bytes: int | None = None


class Undo(Protocol):
    """What an attach step leaves behind; closing it undoes the step (a bpf_link,
    a TC filter and its clsact qdisc...)."""

    def close(self) -> None: ...


class AttachStep(Protocol):
    """One thing to attach, and how. `object` names the BpfObject whose program
    it attaches (None: the module's first)."""

    @property
    def object(self) -> str | None: ...

    @property
    def label(self) -> str: ...

    def attach(self, loaded: LoadedObject, pid: int) -> Undo: ...


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """A uprobe or uretprobe, at a file offset, a symbol, or symbol + offset."""

    program: str
    binary: Path
    offset: int = 0
    retprobe: bool = False
    label: str = ""
    symbol: str | None = None
    cookie: int = 0  # bpf_get_attach_cookie() in the program
    object: str | None = None

    def attach(self, loaded: LoadedObject, pid: int) -> Undo:
        return loaded.attach_uprobe(
            self.program, self.binary, symbol=self.symbol, offset=self.offset,
            retprobe=self.retprobe, pid=pid, cookie=self.cookie,
        )


@dataclass(frozen=True, slots=True)
class SectionAttach:
    """A program attached by its SEC() name: tp_btf/..., raw_tp/..., tracepoint/..."""

    program: str
    object: str | None = None
    label: str = field(default="")

    def attach(self, loaded: LoadedObject, pid: int) -> Undo:
        return loaded.attach(self.program)


@dataclass(frozen=True, slots=True)
class RawTracepoint:
    program: str
    name: str
    object: str | None = None
    label: str = ""

    def attach(self, loaded: LoadedObject, pid: int) -> Undo:
        return loaded.attach_raw_tracepoint(self.program, self.name)


@dataclass(frozen=True, slots=True)
class Tracepoint:
    program: str
    category: str
    name: str
    object: str | None = None
    label: str = ""

    def attach(self, loaded: LoadedObject, pid: int) -> Undo:
        return loaded.attach_tracepoint(self.program, self.category, self.name)


@dataclass(frozen=True, slots=True)
class TcFilterAttach:
    """A TC clsact filter running `program` on `interface` ("ingress" or "egress");
    its undo removes the filter (and the clsact qdisc when this process made it).
    `leftovers`: program names whose filters a killed earlier run left there are
    removed first (bpf/tc.py remove_leftover_filters)."""

    program: str
    interface: str
    direction: str
    object: str | None = None
    label: str = ""
    leftovers: frozenset[str] = frozenset()

    def attach(self, loaded: LoadedObject, pid: int) -> Undo:
        if self.leftovers:
            remove_leftover_filters(self.interface, self.leftovers)
        return loaded.attach_tc(self.program, self.interface, self.direction)


def dispatch_decoder(decoders: Mapping[int, Decoder]) -> Callable[[bytes, Clock], object]:
    """One decoder for a stream of mixed kinds: the first u32 of a record is its kind."""
    table = dict(decoders)

    def decode(raw: bytes, clock: Clock) -> object:
        if len(raw) < 4:
            raise DecodeError(f"record of {len(raw)} bytes has no kind")
        kind = int.from_bytes(raw[:4], "little")
        decoder = table.get(kind)
        if decoder is None:
            raise DecodeError(f"unknown record kind {kind} ({len(raw)} bytes)")
        return decoder(raw, clock)

    return decode
