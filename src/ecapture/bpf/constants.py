"""`const volatile` globals of a BPF object: where they live in .rodata and how to pack them.

The loader writes them between open and load, so the verifier prunes the
branches they switch off (docs/architecture.md#bpf-constants). Their offsets and sizes
come from the object's BTF: the DATASEC named ".rodata" lists one
btf_var_secinfo (type id of the VAR, offset, size) per variable; libbpf fills in
the offsets at open (clang leaves them 0 in the ELF).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from ecapture.bpf import _libbpf
from ecapture.errors import BpfError, ConfigError

RODATA_SECTION = ".rodata"


@dataclass(frozen=True, slots=True)
class Constant:
    """One variable of .rodata: its byte range in the section."""

    name: str
    offset: int
    size: int


def rodata_constants(btf: int) -> dict[str, Constant]:
    """Every variable of the .rodata DATASEC of a `struct btf *`, by name."""
    library = _libbpf.libbpf()
    type_id = library.btf__find_by_name_kind(btf, RODATA_SECTION.encode(), _libbpf.BTF_KIND_DATASEC)
    if type_id < 0:
        return {}  # no .rodata: the object has no constants
    section_address = library.btf__type_by_id(btf, type_id)
    section = _libbpf.BtfType.from_address(section_address)
    count = section.info & 0xFFFF  # BTF_INFO_VLEN
    infos = (_libbpf.BtfVarSecinfo * count).from_address(
        section_address + ctypes.sizeof(_libbpf.BtfType)
    )
    constants: dict[str, Constant] = {}
    for info in infos:
        variable = _libbpf.BtfType.from_address(library.btf__type_by_id(btf, info.type))
        if (variable.info >> 24) & 0x1F != _libbpf.BTF_KIND_VAR:
            continue  # a DATASEC lists only VARs (and FUNCs for externs): skip the rest
        name = library.btf__name_by_offset(btf, variable.name_off)
        if name:
            text = name.decode()
            constants[text] = Constant(text, info.offset, info.size)
    return constants


def pack(constant: Constant, value: int | bytes) -> bytes:
    """The bytes to store: an int little-endian in the variable's size, bytes as they are."""
    if isinstance(value, bytes):
        if len(value) != constant.size:
            raise ConfigError(
                f"BPF constant {constant.name!r} is {constant.size} bytes; got {len(value)} bytes"
            )
        return value
    bits = constant.size * 8
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise ConfigError(
            f"BPF constant {constant.name!r} ({constant.size} bytes) cannot hold {value}"
        )
    return (value % (1 << bits)).to_bytes(constant.size, "little")


def unknown(name: str, known: dict[str, Constant], path: str) -> BpfError:
    names = ", ".join(sorted(known)) or "none"
    return BpfError(f"{path} has no constant {name!r} in {RODATA_SECTION} (it has: {names})")
