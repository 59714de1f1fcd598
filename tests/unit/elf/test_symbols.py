"""Executable: symbols and file offsets, checked against binutils on real and compiled files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ecapture.elf.symbols import ElfType, Executable
from ecapture.errors import LibraryNotFound, SymbolNotFound

from .conftest import BORINGSSL, LIBSSL3, MULTIARCH, require_file, run_tool
from .tools import file_bytes, nm_address, objdump_bytes

NODE = Path("/usr/bin/node")


@pytest.mark.parametrize("fixture", ["pie_program", "non_pie_program"])
def test_offset_of_points_at_the_function_bytes(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    program: Path = request.getfixturevalue(fixture)
    exe = Executable(program)
    vaddr = exe.address("target_function")
    assert vaddr == nm_address(program, "target_function")
    assert file_bytes(program, exe.offset_of("target_function"), 16) == objdump_bytes(
        program, vaddr, 16
    )


def test_non_pie_offset_is_not_the_address(non_pie_program: Path) -> None:
    exe = Executable(non_pie_program)
    assert exe.elf_type is ElfType.EXEC
    # ET_EXEC text is linked at a fixed base (0x400000 on x86-64): the offsets differ.
    assert exe.offset_of("target_function") < exe.address("target_function")


def test_pie_is_dyn(pie_program: Path) -> None:
    assert Executable(pie_program).elf_type is ElfType.DYN


def test_stripped_library_resolves_versioned_names_from_dynsym(shared_library: Path) -> None:
    exe = Executable(shared_library)
    assert "DEMO_1.0" in run_tool("nm", "-D", shared_library)
    expected = nm_address(shared_library, "demo_send", dynamic=True)
    assert exe.address("demo_send") == expected
    assert exe.address("demo_send@@DEMO_1.0") == expected
    assert exe.has("demo_recv@DEMO_1.0")
    assert set(exe.functions()) >= {"demo_send", "demo_recv"}
    assert file_bytes(shared_library, exe.offset_of("demo_recv"), 12) == objdump_bytes(
        shared_library, exe.address("demo_recv"), 12
    )


def test_functions_are_functions_only(pie_program: Path) -> None:
    functions = Executable(pie_program).functions()
    assert "target_function" in functions and "main" in functions
    assert "printf" not in functions  # an import (SHN_UNDEF), not defined here
    assert "__bss_start" not in functions  # NOTYPE, not a function


def test_miss_names_the_file_tables_and_flag(shared_library: Path) -> None:
    with pytest.raises(SymbolNotFound) as caught:
        Executable(shared_library).address("SSL_write_ex")
    assert str(caught.value) == (
        "SSL_write_ex is not in libdemo.so (.dynsym, .symtab); pass --libssl PATH"
    )


def test_read_code_equals_the_file_at_the_offset(pie_program: Path) -> None:
    exe = Executable(pie_program)
    vaddr = exe.address("main")
    assert exe.read_code(vaddr, 10) == file_bytes(pie_program, exe.vaddr_to_offset(vaddr), 10)


def test_address_outside_code_is_refused(pie_program: Path) -> None:
    with pytest.raises(SymbolNotFound):
        Executable(pie_program).vaddr_to_offset(0x7FFF_FFFF_0000)


def test_needed_and_build_id_match_readelf(pie_program: Path) -> None:
    exe = Executable(pie_program)
    dynamic = run_tool("readelf", "-d", pie_program)
    assert exe.needed() == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)
    notes = run_tool("readelf", "-n", pie_program)
    match = re.search(r"Build ID: ([0-9a-f]+)", notes)
    assert exe.build_id == (match[1] if match else None)


def test_not_elf_is_library_not_found(tmp_path: Path) -> None:
    text = tmp_path / "libssl.so.3"
    text.write_text("INPUT(libssl.so.3)\n")  # a linker script, as some -dev packages ship
    with pytest.raises(LibraryNotFound, match=r"libssl\.so\.3: not an ELF file"):
        Executable(text)
    with pytest.raises(LibraryNotFound, match="cannot read"):
        Executable(tmp_path / "absent.so")


def test_system_libssl_symbols() -> None:
    library = require_file(LIBSSL3)
    exe = Executable(library)
    assert exe.elf_type is ElfType.DYN
    for name in ("SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"):
        assert exe.exports_function(name)
        assert exe.address(name) == nm_address(library, name, dynamic=True)
        assert file_bytes(library, exe.offset_of(name), 8) == objdump_bytes(
            library, exe.address(name), 8
        )
    assert "libcrypto.so.3" in exe.needed()


def test_nss_libssl3_has_no_ssl_write() -> None:
    nss = require_file(MULTIARCH / "libssl3.so")
    assert not Executable(nss).exports_function("SSL_write")


def test_boringssl_has_no_ex_functions() -> None:
    exe = Executable(require_file(BORINGSSL))
    assert exe.exports_function("SSL_write")
    assert not exe.has("SSL_write_ex")


def test_non_pie_binary_with_embedded_openssl() -> None:
    """A node binary (ET_EXEC) exporting SSL_write: the offset is vaddr minus the load base."""
    node = require_file(NODE)
    exe = Executable(node)
    if exe.elf_type is not ElfType.EXEC or not exe.exports_function("SSL_write"):
        pytest.skip(f"{node} is not a non-PIE binary with OpenSSL inside")
    vaddr = exe.address("SSL_write")
    assert exe.offset_of("SSL_write") != vaddr
    assert file_bytes(node, exe.offset_of("SSL_write"), 16) == objdump_bytes(node, vaddr, 16)
