"""ObjectSpec: a BPF object parsed from its ELF file and editable before the kernel sees it.

After cilium/ebpf's CollectionSpec: constants, map sizes and which programs load
are set on the spec; `load()` hands the kernel everything at once and returns a
`LoadedObject` that owns the fds, or closes what was made and raises.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from ecapture.bpf import _libbpf
from ecapture.bpf.constants import Constant, pack, rodata_constants, unknown
from ecapture.bpf.environment import raise_memlock_limit
from ecapture.bpf.loaded import LoadedObject
from ecapture.errors import BpfError, BpfLoadError

logger = logging.getLogger(__name__)

VERIFIER_LOG_TAIL_LINES = 24
_LOG_BEGIN = "-- BEGIN PROG LOAD LOG --"
_LOG_END = "-- END PROG LOAD LOG --"


class ObjectSpec:
    """An opened, not yet loaded BPF object file (bpf_object__open_file)."""

    def __init__(self, handle: int, path: Path) -> None:
        self._handle: int | None = handle
        self.path = path
        self._constants: dict[str, Constant] | None = None

    @classmethod
    def open(cls, path: Path, *, btf_custom_path: str | None = None) -> ObjectSpec:
        """Parse the ELF file and its BTF; no kernel call is made."""
        if not path.is_file():
            raise BpfError(f"BPF object file {path} does not exist (build the objects: make bpf)")
        library = _libbpf.libbpf()
        options = _libbpf.ObjectOpenOptions(sz=ctypes.sizeof(_libbpf.ObjectOpenOptions))
        if btf_custom_path is not None:
            options.btf_custom_path = btf_custom_path.encode()
        handle = library.bpf_object__open_file(str(path).encode(), ctypes.byref(options))
        if not handle:
            raise _libbpf.error(f"opening BPF object {path}")
        return cls(handle, path)

    def _object(self) -> int:
        if self._handle is None:
            raise BpfError(f"BPF object spec {self.path.name} was already loaded or closed")
        return self._handle

    def _rodata_map(self) -> int:
        library = _libbpf.libbpf()
        handle = library.bpf_object__next_map(self._object(), None)
        while handle:
            # libbpf names the map of .rodata "<object name prefix>.rodata" (libbpf.c,
            # internal_map_name)
            if library.bpf_map__name(handle).endswith(b".rodata"):
                return int(handle)
            handle = library.bpf_object__next_map(self._object(), handle)
        raise BpfError(f"{self.path} has no .rodata map")

    def constants(self) -> dict[str, Constant]:
        """The `const volatile` globals of .rodata with their offsets and sizes, from BTF."""
        if self._constants is None:
            btf = _libbpf.libbpf().bpf_object__btf(self._object())
            self._constants = rodata_constants(btf) if btf else {}
        return dict(self._constants)

    def _constant_address(self, name: str) -> tuple[Constant, int]:
        known = self.constants()
        constant = known.get(name)
        if constant is None:
            raise unknown(name, known, str(self.path))
        size = ctypes.c_size_t(0)
        # Before load this is libbpf's own copy of the section, the one the skeletons write.
        address = _libbpf.libbpf().bpf_map__initial_value(self._rodata_map(), ctypes.byref(size))
        if not address or constant.offset + constant.size > size.value:
            raise BpfError(
                f"{self.path}: constant {name!r} lies outside .rodata ({size.value} bytes)"
            )
        return constant, int(address) + constant.offset

    def set_constant(self, name: str, value: int | bytes) -> None:
        """Write a `const volatile` global before load (int: little-endian, its own size)."""
        constant, address = self._constant_address(name)
        data = pack(constant, value)
        ctypes.memmove(address, data, len(data))

    def constant_bytes(self, name: str) -> bytes:
        """The bytes a constant will be loaded with."""
        constant, address = self._constant_address(name)
        return ctypes.string_at(address, constant.size)

    def _map(self, name: str) -> int:
        handle = _libbpf.libbpf().bpf_object__find_map_by_name(self._object(), name.encode())
        if not handle:
            raise BpfError(f"{self.path} has no map named {name!r}")
        return int(handle)

    def set_map_max_entries(self, map_name: str, max_entries: int) -> None:
        """Resize a map before load (a ring buffer's size is in bytes, a power of two)."""
        result = _libbpf.libbpf().bpf_map__set_max_entries(self._map(map_name), max_entries)
        _libbpf.check(result, f"setting max_entries of map {map_name!r} to {max_entries}")

    def _program(self, name: str) -> int:
        handle = _libbpf.libbpf().bpf_object__find_program_by_name(self._object(), name.encode())
        if not handle:
            raise BpfError(
                f"{self.path} has no program named {name!r} "
                f"(it has: {', '.join(self.program_names())})"
            )
        return int(handle)

    def set_autoload(self, program: str, autoload: bool) -> None:
        """Choose whether `load()` hands this program to the kernel."""
        result = _libbpf.libbpf().bpf_program__set_autoload(self._program(program), autoload)
        _libbpf.check(result, f"setting autoload of program {program!r}")

    def program_names(self) -> list[str]:
        library = _libbpf.libbpf()
        names: list[str] = []
        handle = library.bpf_object__next_program(self._object(), None)
        while handle:
            names.append(library.bpf_program__name(handle).decode())
            handle = library.bpf_object__next_program(self._object(), handle)
        return names

    def load(self) -> LoadedObject:
        """Create maps, load programs; all or nothing. The spec is spent afterwards."""
        handle = self._object()
        raise_memlock_limit()
        with _libbpf.captured_warnings() as warnings:
            result = _libbpf.libbpf().bpf_object__load(handle)
        if result < 0:
            self.close()  # bpf_object__close frees whatever maps and programs were made
            reason = _libbpf.error(f"loading BPF object {self.path}", result)
            raise BpfLoadError(_with_log_tail(str(reason), warnings))
        self._handle = None  # owned by the LoadedObject from here on
        return LoadedObject(handle, self.path)

    def close(self) -> None:
        """Free the parsed object if it was never loaded; idempotent."""
        if self._handle is not None:
            _libbpf.libbpf().bpf_object__close(self._handle)
            self._handle = None

    def __enter__(self) -> ObjectSpec:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _with_log_tail(reason: str, warnings: list[str]) -> str:
    """The error text, then the last lines of the last verifier log libbpf printed
    (libbpf 1.1 prints it between BEGIN/END PROG LOAD LOG markers), else its warnings."""
    for message in reversed(warnings):
        if _LOG_BEGIN in message:
            head, _, log = message.partition(_LOG_BEGIN)
            lines = [line for line in log.split(_LOG_END)[0].splitlines() if line.strip()]
            tail = lines[-VERIFIER_LOG_TAIL_LINES:]
            program = head.strip().removeprefix("libbpf:").strip().rstrip(":")
            return "\n".join([reason, f"{program} verifier log (last {len(tail)} lines):", *tail])
    if warnings:
        return "\n".join([reason, *warnings[-VERIFIER_LOG_TAIL_LINES:]])
    return reason
