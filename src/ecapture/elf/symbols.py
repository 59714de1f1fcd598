"""Function symbols of an ELF file and where they sit in the file.

After cilium/ebpf `link/uprobe.go` (`Executable`): symbols are read once per
file, lazily, from `.dynsym` and `.symtab`, functions only; a uprobe is placed
by *file offset*, so every address is mapped through the executable `PT_LOAD`
segment that contains it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, BinaryIO

from ecapture.elf.rawelf import ELF_MAGIC, PF_X, SHF_COMPRESSED, NotElf, RawElf
from ecapture.errors import LibraryNotFound, SymbolNotFound

# pyelftools is loaded for what rawelf.py does not read (whole symbol tables,
# notes, a compressed section): placing the TLS probes needs none of it.
if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import Symbol

FUNCTION_TYPES = frozenset({"STT_FUNC", "STT_GNU_IFUNC"})
SYMBOL_TABLES = (".dynsym", ".symtab")


class ElfType(enum.StrEnum):
    """e_type of the files we hook: shared objects (and PIE) or fixed-address executables."""

    DYN = "ET_DYN"
    EXEC = "ET_EXEC"


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD program header."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    executable: bool

    def contains(self, vaddr: int) -> bool:
        return self.vaddr <= vaddr < self.vaddr + self.filesz


@dataclass(frozen=True, slots=True)
class _FunctionSymbol:
    address: int
    size: int
    is_global: bool
    table: str

    def better_than(self, other: _FunctionSymbol) -> bool:
        """Prefer a sized symbol, then a global one (a static name may repeat)."""
        return (self.size > 0, self.is_global) > (other.size > 0, other.is_global)


def base_name(name: str) -> str:
    """`SSL_write@@OPENSSL_3.0.0` -> `SSL_write` (symbol versions in static .symtab names)."""
    return name.split("@", 1)[0]


def _open_elf(path: Path, stream: BinaryIO) -> ELFFile:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    magic = stream.read(4)
    if magic != ELF_MAGIC:
        raise LibraryNotFound(f"{path}: not an ELF file (starts with {magic!r})")
    stream.seek(0)
    try:
        return ELFFile(stream)
    except ELFError as error:
        raise LibraryNotFound(f"{path}: not a valid ELF file ({error})") from error


class Executable:
    """An ELF file we may place uprobes in.

    Construction reads only the ELF and program headers; symbols, DT_NEEDED and
    the build id are read on first use and kept.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            with RawElf(self.path) as raw:
                self.machine: str = raw.machine
                elf_type = raw.elf_type
                self.segments: tuple[LoadSegment, ...] = tuple(
                    LoadSegment(
                        vaddr=segment.vaddr,
                        memsz=segment.memsz,
                        offset=segment.offset,
                        filesz=segment.filesz,
                        executable=bool(segment.flags & PF_X),
                    )
                    for segment in raw.load_segments()
                )
        except NotElf as error:
            raise LibraryNotFound(f"{self.path}: not an ELF file ({error})") from error
        except struct.error as error:
            raise LibraryNotFound(f"{self.path}: not a valid ELF file ({error})") from error
        except OSError as error:
            raise LibraryNotFound(f"{self.path}: cannot read ({error.strerror})") from error
        if elf_type not in (ElfType.DYN.value, ElfType.EXEC.value):
            raise LibraryNotFound(f"{self.path}: not an executable or shared library ({elf_type})")
        self.elf_type = ElfType(elf_type)
        self._symbols: dict[str, _FunctionSymbol] | None = None
        self._functions: Mapping[str, int] | None = None
        self._exported: dict[str, _FunctionSymbol | None] = {}  # .dynsym hash look-ups
        self._needed: list[str] | None = None
        self._build_id: str | None = None
        self._build_id_read = False

    def __repr__(self) -> str:
        return f"Executable({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # --- symbols -----------------------------------------------------------------------------

    def _read_symbols(self) -> dict[str, _FunctionSymbol]:
        if self._symbols is None:
            from elftools.elf.sections import SymbolTableSection

            symbols: dict[str, _FunctionSymbol] = {}
            with self.path.open("rb") as stream:
                elf = _open_elf(self.path, stream)
                for table_name in SYMBOL_TABLES:
                    table = elf.get_section_by_name(table_name)
                    if not isinstance(table, SymbolTableSection):
                        continue
                    for symbol in table.iter_symbols():
                        self._add_symbol(symbols, symbol, table_name)
            self._symbols = symbols
        return self._symbols

    @staticmethod
    def _add_symbol(symbols: dict[str, _FunctionSymbol], symbol: Symbol, table: str) -> None:
        if not _is_function(symbol) or not symbol.name:
            return
        info = symbol["st_info"]
        address = symbol["st_value"]
        found = _FunctionSymbol(
            address=address,
            size=symbol["st_size"],
            is_global=info["bind"] in ("STB_GLOBAL", "STB_WEAK"),
            table=table,
        )
        name = base_name(symbol.name)
        known = symbols.get(name)
        if known is None or found.better_than(known):
            symbols[name] = found

    def functions(self) -> Mapping[str, int]:
        """Every defined function: base name -> virtual address (read-only)."""
        if self._functions is None:
            self._functions = MappingProxyType(
                {name: symbol.address for name, symbol in self._read_symbols().items()}
            )
        return self._functions

    def _lookup(self, name: str) -> _FunctionSymbol | None:
        """The symbol for a base name: .dynsym hash table first, whole tables on a miss.

        A node binary carries ~85k functions in .symtab (4 s to read with
        pyelftools); the exported SSL_* are found in .dynsym by hash in ~1 ms.
        """
        name = base_name(name)
        if self._symbols is not None:
            return self._symbols.get(name)
        if name not in self._exported:
            self._exported[name] = self._hash_lookup(name)
        return self._exported[name] or self._read_symbols().get(name)

    def has(self, name: str) -> bool:
        return self._lookup(name) is not None

    def address(self, name: str) -> int:
        """Virtual address of function `name` (a version suffix is ignored)."""
        symbol = self._lookup(name)
        if symbol is None:
            raise SymbolNotFound(
                f"{base_name(name)} is not in {self.name} ({', '.join(SYMBOL_TABLES)}); "
                "pass --libssl PATH"
            )
        return symbol.address

    def size_of(self, name: str) -> int:
        """st_size of function `name` (0 when the symbol table does not say)."""
        self.address(name)  # raises the standard miss
        symbol = self._lookup(name)
        return 0 if symbol is None else symbol.size

    def offset_of(self, name: str) -> int:
        """File offset of function `name`: what a uprobe attaches to."""
        return self.vaddr_to_offset(self.address(name))

    def vaddr_to_offset(self, vaddr: int) -> int:
        """Map a virtual address to its file offset.

        offset = vaddr - p_vaddr + p_offset of the executable PT_LOAD that holds it
        (ELF gABI, program header). For a PIE/shared object p_vaddr is often equal
        to p_offset so both numbers look alike; for a non-PIE ET_EXEC (e.g. a node
        binary with OpenSSL inside, text at 0x400000+) they differ by the load base,
        and the kernel wants the file offset (uprobe_register(inode, offset)).
        """
        for segment in self.segments:
            if segment.executable and segment.contains(vaddr):
                return vaddr - segment.vaddr + segment.offset
        raise SymbolNotFound(
            f"address {vaddr:#x} is in no executable PT_LOAD segment of {self.name}"
        )

    def read_code(self, vaddr: int, size: int) -> bytes:
        """Up to `size` bytes of the file at virtual address `vaddr` (less at a segment end)."""
        offset = self.vaddr_to_offset(vaddr)
        segment = next(s for s in self.segments if s.executable and s.contains(vaddr))
        size = min(size, segment.vaddr + segment.filesz - vaddr)
        with self.path.open("rb") as stream:
            stream.seek(offset)
            return stream.read(size)

    # --- quick look-ups that do not read whole symbol tables ---------------------------------

    def exports_function(self, name: str) -> bool:
        """Does .dynsym define function `name`? Uses the hash table when there is one.

        Discovery asks this of every mapped file: a hash look-up touches a few
        entries instead of parsing thousands of symbols.
        """
        if self._symbols is not None:
            known = self._symbols.get(name)
            return known is not None and known.table == ".dynsym"
        if name not in self._exported:
            self._exported[name] = self._hash_lookup(name)
        return self._exported[name] is not None

    def _hash_lookup(self, name: str) -> _FunctionSymbol | None:
        try:
            with RawElf(self.path) as raw:
                symbol = raw.dynamic_symbol(name)
        except (NotElf, struct.error) as error:
            raise LibraryNotFound(f"{self.path}: not a valid ELF file ({error})") from error
        if symbol is None or not symbol.is_function:
            return None
        return _FunctionSymbol(
            address=symbol.value, size=symbol.size, is_global=True, table=".dynsym"
        )

    # --- dynamic section and notes -----------------------------------------------------------

    def needed(self) -> list[str]:
        """DT_NEEDED entries, in file order."""
        if self._needed is None:
            try:
                with RawElf(self.path) as raw:
                    self._needed = raw.needed()
            except (NotElf, struct.error) as error:
                raise LibraryNotFound(f"{self.path}: not a valid ELF file ({error})") from error
        return list(self._needed)

    @property
    def build_id(self) -> str | None:
        """GNU build id as hex (NT_GNU_BUILD_ID), None when the file has none."""
        if not self._build_id_read:
            self._build_id_read = True
            with self.path.open("rb") as stream:
                elf = _open_elf(self.path, stream)
                for note in _iter_notes(elf):
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        self._build_id = str(note["n_desc"])
                        break
        return self._build_id

    def read_section(self, name: str) -> bytes | None:
        """Raw bytes of section `name` (decompressed when SHF_COMPRESSED), None when absent."""
        try:
            with RawElf(self.path) as raw:
                section = raw.section(name)
                if section is None:
                    return None
                if not section.flags & SHF_COMPRESSED:
                    return raw.section_data(section)
        except (NotElf, struct.error) as error:
            raise LibraryNotFound(f"{self.path}: not a valid ELF file ({error})") from error
        with self.path.open("rb") as stream:  # pyelftools undoes the compression
            found = _open_elf(self.path, stream).get_section_by_name(name)
            return None if found is None else found.data()


def _is_function(symbol: Symbol) -> bool:
    """A defined function (not an import: those are SHN_UNDEF with value 0)."""
    return (
        symbol["st_info"]["type"] in FUNCTION_TYPES
        and symbol["st_shndx"] != "SHN_UNDEF"
        and symbol["st_value"] != 0
    )


def _iter_notes(elf: ELFFile) -> Iterator[Mapping[str, Any]]:
    from elftools.elf.sections import NoteSection

    for section in elf.iter_sections():
        if isinstance(section, NoteSection):
            yield from section.iter_notes()
