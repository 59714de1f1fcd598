"""LoadedObject and Link: live kernel objects and everything attached to them.

After cilium/ebpf's Collection and link.Link: the loaded object owns the fds
of its maps and programs, every link and reader made from it is closed with it
(readers first, then links in reverse order, then the object), and `close()`
is idempotent and safe after any partial failure.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from types import TracebackType

from ecapture.bpf import _libbpf
from ecapture.bpf.maps import Map
from ecapture.bpf.readers import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BATCH_BYTES,
    PerfReader,
    RingReader,
)
from ecapture.bpf.tc import TcFilter, attach_filter
from ecapture.errors import BpfError, LibraryNotFound

logger = logging.getLogger(__name__)


class Link:
    """One attachment of a program (bpf_link); `close()` detaches it, once."""

    def __init__(self, handle: int, description: str) -> None:
        self._handle: int | None = handle
        self.description = description

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else "attached"
        return f"Link({self.description!r}, {state})"

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        result = _libbpf.libbpf().bpf_link__destroy(handle)
        if result < 0:  # the link is gone from our side either way; say why it complained
            logger.debug("detaching %s: %s", self.description, _libbpf.strerror(result))


class LoadedObject:
    """A BPF object in the kernel: maps, programs, and what was attached or opened on them."""

    def __init__(self, handle: int, path: Path) -> None:
        self._handle: int | None = handle
        self.path = path
        self._links: list[Link] = []
        self._tc_filters: list[TcFilter] = []
        self._readers: list[RingReader | PerfReader] = []

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _object(self) -> int:
        if self._handle is None:
            raise BpfError(f"BPF object {self.path.name} is closed")
        return self._handle

    def _program(self, name: str) -> int:
        handle = _libbpf.libbpf().bpf_object__find_program_by_name(self._object(), name.encode())
        if not handle:
            raise BpfError(f"{self.path.name} has no program named {name!r}")
        return int(handle)

    def _keep(self, handle: int | None, description: str) -> Link:
        if not handle:
            raise _libbpf.error(f"attaching {description}")
        link = Link(handle, description)
        self._links.append(link)
        logger.debug("attached %s", description)
        return link

    def attach_uprobe(
        self,
        program: str,
        binary: str | Path,
        *,
        symbol: str | None = None,
        offset: int = 0,
        retprobe: bool = False,
        pid: int = -1,
        cookie: int = 0,
    ) -> Link:
        """Attach a uprobe (or uretprobe) to `symbol` of `binary`, libbpf resolving the name
        in .symtab/.dynsym; `offset` is a file offset, added to the symbol's when both are
        given. `pid` -1 traces every process. `cookie` is what bpf_get_attach_cookie()
        returns in the program for this attachment (Linux >= 5.15)."""
        binary_text = str(binary)
        if "/" in binary_text and not Path(binary_text).exists():
            raise LibraryNotFound(f"cannot attach {program!r}: {binary_text} does not exist")
        kind = "uretprobe" if retprobe else "uprobe"
        where = symbol if symbol is not None else f"0x{offset:x}"
        if symbol is not None and offset:
            where = f"{symbol}+0x{offset:x}"
        target = "all" if pid == -1 else str(pid)
        description = f"{kind} {Path(binary_text).name}:{where} pid={target}"
        options = _libbpf.UprobeOptions(
            sz=ctypes.sizeof(_libbpf.UprobeOptions), retprobe=retprobe, bpf_cookie=cookie,
        )
        if symbol is not None:
            options.func_name = symbol.encode()
        handle = _libbpf.libbpf().bpf_program__attach_uprobe_opts(
            self._program(program), pid, binary_text.encode(), offset, ctypes.byref(options)
        )
        return self._keep(handle, description)

    def attach(self, program: str) -> Link:
        """Attach by the program's SEC() name (tp_btf/..., raw_tp/..., tracepoint/...)."""
        library = _libbpf.libbpf()
        handle = self._program(program)
        section = (library.bpf_program__section_name(handle) or b"?").decode()
        return self._keep(library.bpf_program__attach(handle), f"{section} ({program})")

    def attach_raw_tracepoint(self, program: str, name: str) -> Link:
        handle = _libbpf.libbpf().bpf_program__attach_raw_tracepoint(
            self._program(program), name.encode()
        )
        return self._keep(handle, f"raw_tp/{name} ({program})")

    def attach_tracepoint(self, program: str, category: str, name: str) -> Link:
        """Attach to a tracefs tracepoint (libbpf reads its id under tracefs, which must be
        mounted: docs/kernel.md#tracefs)."""
        handle = _libbpf.libbpf().bpf_program__attach_tracepoint(
            self._program(program), category.encode(), name.encode()
        )
        return self._keep(handle, f"tracepoint/{category}/{name} ({program})")

    def attach_tc(self, program: str, interface: str, direction: str) -> TcFilter:
        """Add a TC clsact filter (direction "ingress" or "egress") running `program`;
        removed with the object (bpf/tc.py says how leftovers of a killed run are found)."""
        fd = _libbpf.libbpf().bpf_program__fd(self._program(program))
        if fd < 0:
            raise BpfError(f"program {program!r} was not loaded")
        tc_filter = attach_filter(fd, interface, direction)
        self._tc_filters.append(tc_filter)
        return tc_filter

    def map(self, name: str) -> Map:
        handle = _libbpf.libbpf().bpf_object__find_map_by_name(self._object(), name.encode())
        if not handle:
            raise BpfError(f"{self.path.name} has no map named {name!r}")
        return Map(int(handle), self)

    def ring_reader(
        self, map_name: str, *, max_batch: int = DEFAULT_MAX_BATCH,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> RingReader:
        ring = self.map(map_name)
        if ring.map_type != _libbpf.BPF_MAP_TYPE_RINGBUF:
            raise BpfError(f"map {map_name!r} is not a ring buffer (type {ring.map_type})")
        reader = RingReader(ring.fd, map_name, max_batch=max_batch,
                            max_batch_bytes=max_batch_bytes)
        self._readers.append(reader)
        return reader

    def perf_reader(self, map_name: str, *, pages_per_cpu: int = 64) -> PerfReader:
        events = self.map(map_name)
        if events.map_type != _libbpf.BPF_MAP_TYPE_PERF_EVENT_ARRAY:
            raise BpfError(f"map {map_name!r} is not a perf event array (type {events.map_type})")
        reader = PerfReader(events.fd, map_name, pages_per_cpu)
        self._readers.append(reader)
        return reader

    def detach(self) -> None:
        """Detach every link (newest first) but keep maps and readers: what the
        programs already submitted can still be read, and nothing new arrives."""
        for link in reversed(self._links):
            link.close()
        self._links.clear()
        self._close_tc_filters()

    def _close_tc_filters(self) -> None:
        for tc_filter in reversed(self._tc_filters):
            tc_filter.close()
        self._tc_filters.clear()

    def close(self) -> None:
        """Free readers, detach every link (newest first), then close maps and programs."""
        if self._handle is None:
            return
        for reader in reversed(self._readers):
            reader.close()
        for link in reversed(self._links):
            link.close()
        self._close_tc_filters()
        self._readers.clear()
        self._links.clear()
        handle, self._handle = self._handle, None
        _libbpf.libbpf().bpf_object__close(handle)

    def __enter__(self) -> LoadedObject:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
