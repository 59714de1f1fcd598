"""Global variables of an ELF file: where a BPF program finds them at run time.

A probe reads a global at (load bias + its st_value); the load bias is the
probe's run-time address minus the probed function's st_value (bpf/bash.bpf.c
explains why that holds at a uprobe). Only defined data objects count.
"""

from __future__ import annotations

from pathlib import Path

from ecapture.errors import LibraryNotFound

TABLES = (".dynsym", ".symtab")


def variable_addresses(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """st_value of each of `names` that `path` defines as a data object (STT_OBJECT)."""
    # pyelftools is loaded here, by the shell modules' prepare(): not by every
    # command that imports them (the registry imports every module file).
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    found: dict[str, int] = {}
    try:
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            for table_name in TABLES:
                table = elf.get_section_by_name(table_name)
                if not isinstance(table, SymbolTableSection):
                    continue
                for name in names:
                    if name in found:
                        continue
                    for symbol in table.get_symbol_by_name(name) or ():
                        if (symbol["st_info"]["type"] == "STT_OBJECT"
                                and symbol["st_shndx"] != "SHN_UNDEF"):
                            found[name] = symbol["st_value"]
                            break
    except OSError as error:
        raise LibraryNotFound(f"{path}: cannot read ({error.strerror})") from error
    return found
