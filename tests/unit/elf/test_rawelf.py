"""The struct-based .dynsym look-up, checked symbol by symbol against nm."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecapture.elf.rawelf import NotElf, RawElf, gnu_hash, sysv_hash

from .conftest import LIBRARY_C, LIBSSL3, MULTIARCH, compile_c, require_file, run_tool


def test_hash_functions_known_values() -> None:
    # values published with the hash definitions (gABI ELF hash; DJB for DT_GNU_HASH)
    assert gnu_hash(b"") == 5381
    assert gnu_hash(b"printf") == 0x156B2BB8
    assert sysv_hash(b"printf") == 0x077905A6


def defined_dynamic_functions(path: Path) -> dict[str, int]:
    """name -> address for exported functions; names with several versions are left out."""
    functions: dict[str, int] = {}
    repeated: set[str] = set()
    for line in run_tool("nm", "-D", "--defined-only", path).splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in ("T", "W", "i"):  # text, weak, ifunc
            name = fields[2].split("@", 1)[0]
            if name in functions:
                repeated.add(name)
            functions[name] = int(fields[0], 16)
    return {name: address for name, address in functions.items() if name not in repeated}


@pytest.mark.parametrize("path", [MULTIARCH / "libc.so.6", LIBSSL3])
def test_every_exported_function_is_found_by_hash(path: Path) -> None:
    expected = defined_dynamic_functions(require_file(path))
    assert len(expected) > 100
    with RawElf(path) as raw:
        for name, address in expected.items():
            symbol = raw.dynamic_symbol(name)
            assert symbol is not None and symbol.is_function, name
            assert symbol.value == address, name
        assert raw.dynamic_symbol("no_such_function_anywhere") is None
        imported = raw.dynamic_symbol("__libc_start_main") if path == LIBSSL3 else None
        assert imported is None or not imported.is_function  # an import, not ours


def test_sysv_hash_only_library(build_dir: Path) -> None:
    library = compile_c(
        build_dir, "libsysv.so", LIBRARY_C, "-shared", "-fPIC", "-Wl,--hash-style=sysv"
    )
    assert ".gnu.hash" not in run_tool("readelf", "-S", library)
    with RawElf(library) as raw:
        symbol = raw.dynamic_symbol("demo_recv")
        assert symbol is not None and symbol.is_function
        assert symbol.value == defined_dynamic_functions(library)["demo_recv"]
        assert raw.dynamic_symbol("demo_nothing") is None


@pytest.mark.parametrize(("content", "reason"), [(b"", "empty"), (b"\x7fELF\x02", "truncated")])
def test_short_files_are_not_elf(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.so"
    path.write_bytes(content)
    with pytest.raises(NotElf, match=reason):
        RawElf(path)
