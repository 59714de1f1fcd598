"""What a Go binary tells about itself: its Go version and where its functions are.

- The Go version from `.go.buildinfo` (cmd/go/internal/... writes it; the
  format is read back by Go's debug/buildinfo): a 32-byte header starting
  with the magic "\\xff Go buildinf:", then the pointer size (byte 14) and
  flags (byte 15). With flag bit 1 (Go 1.18+) the version follows the header
  as a uvarint-length-prefixed string; before, bytes 16.. hold a pointer to a
  Go string header {ptr, len} of the version.
- Functions from `.gopclntab` (PIE: `.data.rel.ro.gopclntab`), which
  `-ldflags=-s -w` keeps (the runtime needs it for stack traces) while it
  removes `.symtab`. Layout of Go 1.18 and later (runtime/symtab.go pcHeader,
  debug/gosym/pclntab.go): magic 0xfffffff0 (Go 1.18, 1.19) or 0xfffffff1
  (Go 1.20+), pad, pad, minLC, ptrSize, then nfunc, nfiles, textStart,
  funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset (each
  ptrSize wide). At pclnOffset the functab: nfunc+1 pairs {entryoff u32,
  funcoff u32}, sorted by entry (the last entry's entryoff is the end of the
  text); each funcoff (from the functab's start) leads to a _func whose
  first fields are entryOff u32 and nameOff i32 (into funcnametab, a
  NUL-terminated name). Entry = textStart + entryoff. Older layouts (Go 1.16
  and 1.17: 0xfffffffa; 1.2-1.15: 0xfffffffb) are refused: those binaries
  are found through `.symtab` only.
- The RET instructions of a function (capstone): Go has no uretprobes
  (a goroutine's stack moves, the kernel's return trampoline would be copied
  with it), so a return is probed at each RET.

In a PIE, pcHeader.textStart is filled by a dynamic relocation
(R_X86_64_RELATIVE) at load time; the file may hold 0 there, the relocation's
addend is the value. Go 1.26+ leaves the field 0 (unused): the `.text`
section's address is the text start then, as Go's own tools take it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import capstone
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from ecapture.elf.symbols import Executable
from ecapture.errors import LibraryNotFound, SymbolNotFound

BUILDINFO_MAGIC = b"\xff Go buildinf:"
BUILDINFO_HEADER = 32
FLAG_INLINE_STRINGS = 0x2  # Go 1.18+: strings follow the header
PCLNTAB_MAGICS = {0xFFFFFFF0: "1.18", 0xFFFFFFF1: "1.20"}  # layout → first Go version of it
OLD_PCLNTAB_MAGICS = {0xFFFFFFFA: "1.16", 0xFFFFFFFB: "1.2"}
PCLNTAB_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")
R_X86_64_RELATIVE = 8
# The register ABI (ABIInternal) on amd64 since Go 1.17 (Go 1.17 release notes).
REGISTER_ABI_MIN = (1, 17)
_VERSION = re.compile(r"go(\d+)\.(\d+)")


class NotGo(LibraryNotFound):
    """The file is not a Go binary (no .go.buildinfo, no pclntab)."""


@dataclass(frozen=True, slots=True)
class GoFunction:
    name: str
    address: int  # virtual address of its entry
    end: int  # the next function's entry

    @property
    def size(self) -> int:
        return self.end - self.address


def read_buildinfo_version(path: Path) -> str:
    """The Go version (`go1.19.8`) written into `path`'s .go.buildinfo."""
    with _OpenElf(path) as (elf, _stream):
        section = elf.get_section_by_name(".go.buildinfo")
        if section is None:
            raise NotGo(f"{path}: not a Go program (no .go.buildinfo section)")
        data = section.data()
        if not data.startswith(BUILDINFO_MAGIC) or len(data) < BUILDINFO_HEADER:
            raise NotGo(f"{path}: .go.buildinfo does not start with the Go magic")
        ptr_size, flags = data[14], data[15]
        if flags & FLAG_INLINE_STRINGS:
            length, used = _uvarint(data, BUILDINFO_HEADER)
            start = BUILDINFO_HEADER + used
            return data[start:start + length].decode(errors="replace")
        # Go < 1.18: a pointer to a string header {ptr, len}.
        order = ">" if flags & 0x1 else "<"
        fmt = order + ("Q" if ptr_size == 8 else "I")
        header_address = struct.unpack_from(fmt, data, 16)[0]
        header = _read_vaddr(elf, header_address, 2 * ptr_size)
        pointer, length = struct.unpack(order + ("QQ" if ptr_size == 8 else "II"), header)
        return _read_vaddr(elf, pointer, length).decode(errors="replace")


def version_tuple(version: str) -> tuple[int, int] | None:
    """`go1.19.8` → (1, 19); None for a version we cannot read (a devel build)."""
    match = _VERSION.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _uvarint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = used = 0
    while True:
        if offset + used >= len(data):
            raise NotGo("truncated .go.buildinfo")
        byte = data[offset + used]
        used += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, used
        shift += 7


class _OpenElf:
    """An open ELFFile and its stream, as a context manager; the file's errors as ours."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream: BinaryIO | None = None

    def __enter__(self) -> tuple[ELFFile, BinaryIO]:
        try:
            self._stream = self.path.open("rb")
        except OSError as error:
            raise LibraryNotFound(f"{self.path}: cannot read ({error.strerror})") from None
        if self._stream.read(4) != b"\x7fELF":
            self._stream.close()
            raise NotGo(f"{self.path}: not an ELF file")
        self._stream.seek(0)
        try:
            return ELFFile(self._stream), self._stream
        except ELFError as error:
            self._stream.close()
            raise NotGo(f"{self.path}: not a valid ELF file ({error})") from None

    def __exit__(self, *_: object) -> None:
        if self._stream is not None:
            self._stream.close()


def _read_vaddr(elf: ELFFile, address: int, size: int) -> bytes:
    for segment in elf.iter_segments("PT_LOAD"):
        start = segment["p_vaddr"]
        if start <= address and address + size <= start + segment["p_filesz"]:
            stream = elf.stream
            stream.seek(segment["p_offset"] + address - start)
            return bytes(stream.read(size))
    raise NotGo(f"address {address:#x} is not in the file")


class Pclntab:
    """The function table of a Go 1.18+ binary's pclntab."""

    def __init__(self, data: bytes, text_start: int, *, magic: int) -> None:
        self.data = data
        self.magic = magic
        ptr = data[7]
        if ptr != 8:
            raise NotGo(f"pclntab pointer size {ptr}: only 64-bit Go binaries are supported")
        fields = struct.unpack_from("<8Q", data, 8)
        self.nfunc = fields[0]
        self.text_start = text_start
        self.funcname_offset = fields[3]
        self.pcln_offset = fields[7]

    def _name_at(self, name_offset: int) -> str:
        start = self.funcname_offset + name_offset
        end = self.data.index(b"\0", start)
        return self.data[start:end].decode(errors="replace")

    def _entries(self) -> Iterator[tuple[int, int, int]]:
        """(entryoff, nameoff, next entryoff) of every function."""
        functab = self.pcln_offset
        pairs = struct.unpack_from(f"<{2 * (self.nfunc + 1)}I", self.data, functab)
        for index in range(self.nfunc):
            entry, funcoff = pairs[2 * index], pairs[2 * index + 1]
            name_offset = struct.unpack_from("<i", self.data, functab + funcoff + 4)[0]
            yield entry, name_offset, pairs[2 * index + 2]

    def functions(self) -> Iterator[GoFunction]:
        for entry, name_offset, end in self._entries():
            yield GoFunction(self._name_at(name_offset), self.text_start + entry,
                             self.text_start + end)

    def find(self, name: str) -> GoFunction | None:
        """The function called `name` (its name's bytes are searched first: one pass
        over the functab compares integers only)."""
        wanted = b"\0" + name.encode() + b"\0"
        names_start = self.funcname_offset
        offsets: set[int] = set()
        position = self.data.find(wanted, names_start - 1)
        while position >= 0:
            offsets.add(position + 1 - names_start)
            position = self.data.find(wanted, position + 1)
        if self.data[names_start:].startswith(wanted[1:]):
            offsets.add(0)
        if not offsets:
            return None
        for entry, name_offset, end in self._entries():
            if name_offset in offsets:
                return GoFunction(name, self.text_start + entry, self.text_start + end)
        return None


class GoBinary:
    """A Go executable: version, ABI, function addresses and file offsets."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.version = read_buildinfo_version(self.path)
        self.executable = Executable(self.path)
        self._pclntab: Pclntab | None = None
        self._pclntab_error: str | None = None
        self._load_pclntab()

    @property
    def register_abi(self) -> bool:
        parsed = version_tuple(self.version)
        return parsed is None or parsed >= REGISTER_ABI_MIN

    @property
    def stripped(self) -> bool:
        return not self._has_symtab

    @property
    def unsearchable(self) -> str | None:
        """Why no function can be found in this file (stripped, and a pclntab we do
        not read), or None."""
        if self._has_symtab or self._pclntab is not None:
            return None
        return f"stripped, and {self._pclntab_error}"

    def _load_pclntab(self) -> None:
        with _OpenElf(self.path) as (elf, _stream):
            self._has_symtab = elf.get_section_by_name(".symtab") is not None
            section = next((s for name in PCLNTAB_SECTIONS
                            if (s := elf.get_section_by_name(name)) is not None), None)
            if section is None:
                self._pclntab_error = "no .gopclntab section"
                return
            data = section.data()
            magic = struct.unpack_from("<I", data, 0)[0]
            if magic not in PCLNTAB_MAGICS:
                since = OLD_PCLNTAB_MAGICS.get(magic)
                self._pclntab_error = (
                    f"pclntab of the Go {since} layout (magic {magic:#x}) is not supported; "
                    "Go 1.18+ layouts are" if since else f"unknown pclntab magic {magic:#x}")
                return
            text_field = section["sh_addr"] + 8 + 2 * 8  # pcHeader.textStart
            # Go 1.26+ no longer stores textStart (runtime/symtab.go: "use the
            # moduledata text field instead"); Go's own objfile (cmd/internal/
            # objfile/elf.go pcln) takes the .text section's address then.
            text = elf.get_section_by_name(".text")
            text_start = _relocated(elf, text_field) or (text["sh_addr"] if text else 0)
            self._pclntab = Pclntab(data, text_start, magic=magic)

    def function(self, name: str) -> GoFunction:
        """Where `name` starts and ends: from .symtab when present, else the pclntab."""
        if self._has_symtab and self.executable.has(name):
            address = self.executable.address(name)
            size = self.executable.size_of(name)
            if size:
                return GoFunction(name, address, address + size)
        if self._pclntab is not None:
            found = self._pclntab.find(name)
            if found is not None:
                return found
        elif not self._has_symtab:
            raise SymbolNotFound(f"{self.path}: stripped, and {self._pclntab_error}")
        raise SymbolNotFound(f"{self.path}: no function {name}")

    def has(self, name: str) -> bool:
        try:
            self.function(name)
        except SymbolNotFound:
            return False
        return True

    def pclntab_functions(self) -> list[GoFunction]:
        return [] if self._pclntab is None else list(self._pclntab.functions())

    def offset_of(self, address: int) -> int:
        return self.executable.vaddr_to_offset(address)

    def return_addresses(self, function: GoFunction) -> list[int]:
        """The address of every RET in `function` (a linear sweep: Go puts no data
        in its text on amd64, functions are padded with INT3)."""
        code = self.executable.read_code(function.address, function.size)
        disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        returns = [address for address, _size, mnemonic, _ops in
                   disassembler.disasm_lite(code, function.address) if mnemonic == "ret"]
        return returns


def _relocated(elf: ELFFile, address: int) -> int | None:
    """The value the loader writes at `address` (an R_X86_64_RELATIVE addend), or
    what the file holds there when no relocation targets it."""
    try:
        value = int(struct.unpack("<Q", _read_vaddr(elf, address, 8))[0])
    except NotGo:
        value = 0
    if value:
        return value  # a fixed-address binary, or the linker wrote it anyway
    for section in elf.iter_sections():
        if not isinstance(section, RelocationSection) or not section.is_RELA():
            continue
        if section["sh_flags"] & 0x2 == 0:  # SHF_ALLOC: dynamic relocations only
            continue
        for relocation in section.iter_relocations():
            if relocation["r_offset"] == address and \
                    relocation["r_info_type"] == R_X86_64_RELATIVE:
                return int(relocation["r_addend"])
    return None
