"""Just enough ELF, read with `struct`: headers, PT_LOAD segments, one .dynsym look-up,
a section by name, DT_NEEDED.

Discovery judges every file mapped on the host; pyelftools' construct parsing
costs ~4 ms per file there, these direct reads a few µs (and the TLS module's
start-up needs no pyelftools at all). Layouts: System V gABI, "ELF Header",
"Program Header", "Section Header", "Symbol Table", "Dynamic Section", plus the
GNU hash section (binutils bfd/elflink.c, glibc elf/dl-lookup.c).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
PT_LOAD = 1
PF_X = 0x1
SHT_HASH = 5
SHT_DYNAMIC = 6
SHT_NOBITS = 8
SHT_DYNSYM = 11
SHF_COMPRESSED = 0x800
DT_NULL = 0
DT_NEEDED = 1
SHT_GNU_HASH = 0x6FFFFFF6
STT_FUNC = 2
STT_GNU_IFUNC = 10
SHN_UNDEF = 0
E_TYPES = {2: "ET_EXEC", 3: "ET_DYN", 1: "ET_REL", 4: "ET_CORE"}
E_MACHINES = {62: "EM_X86_64", 183: "EM_AARCH64", 3: "EM_386", 40: "EM_ARM"}


class NotElf(ValueError):
    """The bytes are not an ELF file we can read; the message says why."""


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int


@dataclass(frozen=True, slots=True)
class SectionHeader:
    type: int
    offset: int
    size: int
    link: int
    entsize: int
    name: int = 0  # sh_name: offset in the section name table
    flags: int = 0


@dataclass(frozen=True, slots=True)
class DynamicSymbol:
    value: int
    size: int
    type: int
    shndx: int

    @property
    def is_function(self) -> bool:
        """A defined function (imports are SHN_UNDEF with value 0)."""
        return (
            self.type in (STT_FUNC, STT_GNU_IFUNC) and self.shndx != SHN_UNDEF and self.value != 0
        )


class RawElf:
    """An ELF file mapped read-only; use as a context manager."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as stream:
            try:
                self._map = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as error:  # an empty file cannot be mapped
                raise NotElf("empty file") from error
        data = self._map
        magic = bytes(data[:4])
        if magic != ELF_MAGIC:
            self._map.close()
            raise NotElf(f"starts with {magic!r}")
        try:
            self.is64 = data[4] == ELFCLASS64
            self.endian = "<" if data[5] == ELFDATA2LSB else ">"
            layout = "HHIQQQIHHHHHH" if self.is64 else "HHIIIIIHHHHHH"
            fields = struct.unpack_from(self.endian + layout, data, 16)
        except (IndexError, struct.error) as error:
            self._map.close()
            raise NotElf("truncated ELF header") from error
        e_type, e_machine, _, _, self._phoff, self._shoff = fields[:6]
        self._phentsize, self._phnum, self._shentsize, self._shnum, self._shstrndx = fields[8:13]
        self.elf_type = E_TYPES.get(e_type, f"ET_{e_type}")
        self.machine = E_MACHINES.get(e_machine, f"EM_{e_machine}")

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> RawElf:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def load_segments(self) -> list[Segment]:
        segments = []
        for index in range(self._phnum):
            at = self._phoff + index * self._phentsize
            if self.is64:
                p_type, flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from(
                    self.endian + "IIQQQQQQ", self._map, at
                )
            else:
                p_type, offset, vaddr, _, filesz, memsz, flags, _ = struct.unpack_from(
                    self.endian + "8I", self._map, at
                )
            if p_type == PT_LOAD:
                segments.append(Segment(vaddr, memsz, offset, filesz, flags))
        return segments

    def _sections(self) -> list[SectionHeader]:
        headers = []
        layout = self.endian + ("IIQQQQIIQQ" if self.is64 else "10I")
        for index in range(self._shnum):
            fields = struct.unpack_from(layout, self._map, self._shoff + index * self._shentsize)
            headers.append(SectionHeader(fields[1], fields[4], fields[5], fields[6], fields[9],
                                         name=fields[0], flags=fields[2]))
        return headers

    def _string(self, table: SectionHeader, offset: int) -> bytes:
        """The NUL-terminated string at `offset` of a string table section."""
        start = table.offset + offset
        end = self._map.find(b"\0", start, table.offset + table.size)
        if offset >= table.size or end < 0:
            raise NotElf(f"string at {offset} outside its table ({table.size} bytes)")
        return self._map[start:end]

    def section(self, name: str) -> SectionHeader | None:
        """The first section called `name` (as pyelftools' get_section_by_name)."""
        sections = self._sections()
        if not 0 < self._shstrndx < len(sections):
            return None
        names = sections[self._shstrndx]
        wanted = name.encode()
        for section in sections:
            if section.name < names.size and self._string(names, section.name) == wanted:
                return section
        return None

    def section_data(self, section: SectionHeader) -> bytes:
        """A section's bytes as stored (SHT_NOBITS: its size in zeros, as pyelftools)."""
        if section.type == SHT_NOBITS:
            return bytes(section.size)
        if section.offset + section.size > len(self._map):
            raise NotElf(f"section of {section.size} bytes at {section.offset} past the end")
        return self._map[section.offset : section.offset + section.size]

    def needed(self) -> list[str]:
        """DT_NEEDED of every SHT_DYNAMIC section, in file order, up to each DT_NULL;
        names from the section's linked string table (as pyelftools reads them)."""
        sections = self._sections()
        layout = self.endian + ("qQ" if self.is64 else "iI")
        entry_size = struct.calcsize(layout)
        found: list[str] = []
        for section in sections:
            if section.type != SHT_DYNAMIC or section.link >= len(sections):
                continue
            strings = sections[section.link]
            for at in range(section.offset, section.offset + section.size - entry_size + 1,
                            entry_size):
                tag, value = struct.unpack_from(layout, self._map, at)
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    found.append(self._string(strings, value).decode("latin-1"))
        return found

    def _symbol(self, dynsym: SectionHeader, index: int) -> tuple[int, DynamicSymbol]:
        """(st_name, symbol) of entry `index`."""
        at = dynsym.offset + index * dynsym.entsize
        if self.is64:
            name, info, _, shndx, value, size = struct.unpack_from(
                self.endian + "IBBHQQ", self._map, at
            )
        else:
            name, value, size, info, _, shndx = struct.unpack_from(
                self.endian + "IIIBBH", self._map, at
            )
        return name, DynamicSymbol(value, size, info & 0xF, shndx)

    def _name_is(self, dynstr: SectionHeader, st_name: int, wanted: bytes) -> bool:
        start = dynstr.offset + st_name
        return self._map[start : start + len(wanted) + 1] == wanted + b"\0"

    def dynamic_symbol(self, name: str) -> DynamicSymbol | None:
        """Look `name` up in .dynsym through its hash table (linear when there is none)."""
        sections = self._sections()
        wanted = name.encode()
        for section in sections:
            if section.type in (SHT_GNU_HASH, SHT_HASH) and section.link < len(sections):
                dynsym = sections[section.link]
                if dynsym.entsize == 0 or dynsym.link >= len(sections):
                    continue
                dynstr = sections[dynsym.link]
                if section.type == SHT_GNU_HASH:
                    return self._gnu_lookup(section, dynsym, dynstr, wanted)
                return self._sysv_lookup(section, dynsym, dynstr, wanted)
        for section in sections:
            if section.type == SHT_DYNSYM and section.entsize and section.link < len(sections):
                dynstr = sections[section.link]
                for index in range(section.size // section.entsize):
                    st_name, symbol = self._symbol(section, index)
                    if self._name_is(dynstr, st_name, wanted):
                        return symbol
        return None

    def _gnu_lookup(
        self, table: SectionHeader, dynsym: SectionHeader, dynstr: SectionHeader, wanted: bytes
    ) -> DynamicSymbol | None:
        nbuckets, symoffset, bloom_size, _ = struct.unpack_from(
            self.endian + "4I", self._map, table.offset
        )
        if nbuckets == 0:
            return None
        word = 8 if self.is64 else 4
        buckets_at = table.offset + 16 + bloom_size * word
        chains_at = buckets_at + 4 * nbuckets
        hashed = gnu_hash(wanted)
        (index,) = struct.unpack_from(
            self.endian + "I", self._map, buckets_at + 4 * (hashed % nbuckets)
        )
        if index < symoffset:
            return None
        while True:
            (chain,) = struct.unpack_from(
                self.endian + "I", self._map, chains_at + 4 * (index - symoffset)
            )
            if (chain | 1) == (hashed | 1):
                st_name, symbol = self._symbol(dynsym, index)
                if self._name_is(dynstr, st_name, wanted):
                    return symbol
            if chain & 1:
                return None
            index += 1

    def _sysv_lookup(
        self, table: SectionHeader, dynsym: SectionHeader, dynstr: SectionHeader, wanted: bytes
    ) -> DynamicSymbol | None:
        nbucket, _ = struct.unpack_from(self.endian + "2I", self._map, table.offset)
        if nbucket == 0:
            return None
        (index,) = struct.unpack_from(
            self.endian + "I", self._map, table.offset + 8 + 4 * (sysv_hash(wanted) % nbucket)
        )
        chains_at = table.offset + 8 + 4 * nbucket
        seen = 0
        while index != 0 and seen <= table.size // 4:  # bounded: a corrupt chain may loop
            st_name, symbol = self._symbol(dynsym, index)
            if self._name_is(dynstr, st_name, wanted):
                return symbol
            (index,) = struct.unpack_from(self.endian + "I", self._map, chains_at + 4 * index)
            seen += 1
        return None


def gnu_hash(name: bytes) -> int:
    """DJB hash as used by DT_GNU_HASH (h = h * 33 + c, 32 bits)."""
    value = 5381
    for byte in name:
        value = (value * 33 + byte) & 0xFFFFFFFF
    return value


def sysv_hash(name: bytes) -> int:
    """The System V ABI ELF hash (gABI "Hash Table")."""
    value = 0
    for byte in name:
        value = ((value << 4) + byte) & 0xFFFFFFFF
        high = value & 0xF0000000
        if high:
            value ^= high >> 24
        value &= ~high & 0xFFFFFFFF
    return value
