"""elf/golang.py: the pclntab reader against .symtab, the build info, RETs.

The Go binaries are built from tests/e2e/programs/gohttps by the toolchains
the e2e tests use (cached under build/go/); without them these tests skip.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from ecapture.elf.golang import (
    BUILDINFO_MAGIC,
    GoBinary,
    NotGo,
    Pclntab,
    read_buildinfo_version,
    version_tuple,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
from gobuild import DEBIAN_GO, SOURCE, VENV_GO, build

FUNCTIONS = ("crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write",
             "crypto/tls.(*Config).writeKeyLog")


def _binary(toolchain: Path, *flags: str) -> Path:
    if not toolchain.exists():
        pytest.skip(f"no Go toolchain at {toolchain}")
    try:
        return build(toolchain, SOURCE, tuple(flags), {})
    except subprocess.CalledProcessError as error:
        pytest.fail(f"go build failed: {error.stderr!r}")


@pytest.mark.parametrize("toolchain", [DEBIAN_GO, VENV_GO], ids=["go1.19", "current"])
def test_pclntab_matches_symtab(toolchain: Path) -> None:
    """Every function of the pclntab is at the address .symtab gives it."""
    plain = GoBinary(_binary(toolchain))
    # A name may have two symbols (an assembly function and its ABI wrapper).
    symbols: dict[str, set[int]] = {}
    with plain.path.open("rb") as stream:
        table = ELFFile(stream).get_section_by_name(".symtab")
        assert isinstance(table, SymbolTableSection)
        for symbol in table.iter_symbols():
            if symbol["st_info"]["type"] == "STT_FUNC":
                symbols.setdefault(symbol.name, set()).add(symbol["st_value"])
    functions = plain.pclntab_functions()
    assert len(functions) > 5000
    compared = [function for function in functions if function.name in symbols]
    # Assembly functions' ABI wrappers share a name in the pclntab; .symtab
    # may name them apart: a few mismatches, none among Go functions we probe.
    wrong = [f for f in compared if f.address not in symbols[f.name]]
    assert len(compared) > 0.9 * len(functions)
    assert len(wrong) < 0.01 * len(compared), wrong[:5]
    for name in FUNCTIONS:
        assert plain.function(name).address in symbols[name]


@pytest.mark.parametrize("toolchain", [DEBIAN_GO, VENV_GO], ids=["go1.19", "current"])
@pytest.mark.parametrize("flags", [("-ldflags=-s -w",), ("-buildmode=pie", "-ldflags=-s -w")],
                         ids=["stripped", "stripped-pie"])
def test_stripped_binary_found_by_pclntab(toolchain: Path, flags: tuple[str, ...]) -> None:
    plain = GoBinary(_binary(toolchain, *(("-buildmode=pie",) if "-buildmode=pie" in flags
                                          else ())))
    stripped = GoBinary(_binary(toolchain, *flags))
    assert stripped.stripped and not plain.stripped
    assert stripped.version == plain.version and stripped.version.startswith("go1.")
    for name in FUNCTIONS:
        ours, theirs = stripped.function(name), plain.function(name)
        assert ours.address == theirs.address  # the same code, with or without .symtab
        # Each RET found is a C3 byte in the file, at the offset the uprobe gets.
        returns = stripped.return_addresses(ours)
        assert returns
        with stripped.path.open("rb") as stream:
            for address in returns:
                stream.seek(stripped.offset_of(address))
                assert stream.read(1) == b"\xc3"


def test_not_go(tmp_path: Path) -> None:
    with pytest.raises(NotGo, match=r"no \.go\.buildinfo"):
        read_buildinfo_version(Path("/bin/ls"))
    text = tmp_path / "text"
    text.write_text("hello")
    with pytest.raises(NotGo, match="not an ELF"):
        GoBinary(text)


def test_version_tuple() -> None:
    assert version_tuple("go1.19.8") == (1, 19)
    assert version_tuple("go1.27.3") == (1, 27)
    assert version_tuple("devel +abc") is None


def test_pclntab_synthetic() -> None:
    """A hand-made Go 1.20 pclntab: two functions, names by offset."""
    names = b"main.a\0main.bb\0"
    header = struct.pack("<IBBBB", 0xFFFFFFF1, 0, 0, 1, 8)
    nfunc = 2
    fields_size = 8 * 8
    funcname_offset = len(header) + fields_size
    pcln_offset = funcname_offset + len(names)
    functab = struct.pack("<6I", 0x0, 24, 0x40, 32, 0x90, 0)
    funcs = struct.pack("<Ii", 0x0, 0) + struct.pack("<Ii", 0x40, 7)
    fields = struct.pack("<8Q", nfunc, 0, 0, funcname_offset, 0, 0, 0, pcln_offset)
    data = header + fields + names + functab + funcs
    table = Pclntab(data, 0x401000, magic=0xFFFFFFF1)
    found = table.find("main.bb")
    assert found is not None
    assert (found.address, found.end) == (0x401040, 0x401090)
    assert [f.name for f in table.functions()] == ["main.a", "main.bb"]
    assert table.find("main.c") is None
    assert BUILDINFO_MAGIC.startswith(b"\xff Go")
