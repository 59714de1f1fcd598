"""Map: key/value access to one map of a loaded object, in raw bytes."""

from __future__ import annotations

import ctypes
import errno
from typing import Protocol

from ecapture.bpf import _libbpf
from ecapture.errors import BpfError

BPF_ANY = 0  # update flags, include/uapi/linux/bpf.h
BPF_NOEXIST = 1
BPF_EXIST = 2


class _Owner(Protocol):
    @property
    def closed(self) -> bool: ...


class Map:
    """One map of a `LoadedObject`; valid until the object is closed."""

    def __init__(self, handle: int, owner: _Owner) -> None:
        library = _libbpf.libbpf()
        self._handle = handle
        self._owner = owner
        self.name: str = library.bpf_map__name(handle).decode()
        self.fd: int = library.bpf_map__fd(handle)
        self.key_size: int = library.bpf_map__key_size(handle)
        self.value_size: int = library.bpf_map__value_size(handle)
        self.max_entries: int = library.bpf_map__max_entries(handle)
        self.map_type: int = library.bpf_map__type(handle)

    def __repr__(self) -> str:
        return f"Map({self.name!r}, fd={self.fd}, type={self.map_type})"

    def _live(self) -> int:
        if self._owner.closed:
            raise BpfError(f"map {self.name!r} used after its BPF object was closed")
        return self._handle

    def _key(self, key: bytes) -> bytes:
        if len(key) != self.key_size:
            raise BpfError(f"map {self.name!r} has {self.key_size}-byte keys; got {len(key)} bytes")
        return key

    def _lookup(self, key: bytes, value_size: int) -> bytes | None:
        value = ctypes.create_string_buffer(value_size)
        result = _libbpf.libbpf().bpf_map__lookup_elem(
            self._live(), self._key(key), len(key), value, value_size, 0
        )
        if result == -errno.ENOENT:
            return None
        _libbpf.check(result, f"looking up a key in map {self.name!r}")
        return value.raw

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under `key`, or None when there is none."""
        return self._lookup(key, self.value_size)

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """One value per possible CPU of a per-CPU map (each rounded up to 8 bytes by the
        kernel, bpf_map__lookup_elem's documentation; returned at the map's value size)."""
        cpus = possible_cpus()
        stride = (self.value_size + 7) // 8 * 8
        values = self._lookup(key, stride * cpus)
        if values is None:
            return []
        return [values[cpu * stride : cpu * stride + self.value_size] for cpu in range(cpus)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.value_size:
            raise BpfError(
                f"map {self.name!r} has {self.value_size}-byte values; got {len(value)} bytes"
            )
        result = _libbpf.libbpf().bpf_map__update_elem(
            self._live(), self._key(key), len(key), value, len(value), flags
        )
        _libbpf.check(result, f"updating map {self.name!r}")

    def delete(self, key: bytes) -> None:
        result = _libbpf.libbpf().bpf_map__delete_elem(self._live(), self._key(key), len(key), 0)
        _libbpf.check(result, f"deleting a key from map {self.name!r}")


def possible_cpus() -> int:
    count: int = _libbpf.check(
        _libbpf.libbpf().libbpf_num_possible_cpus(), "counting possible CPUs"
    )
    return count
