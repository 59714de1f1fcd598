"""Facts about ELF files from binutils, independent of the code under test."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import run_tool

OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)")
CALL_LINE = re.compile(r"^\s*[0-9a-f]+:\t(?:[0-9a-f]{2} )+\s*\tcall\s+([0-9a-f]+)")


def objdump_bytes(path: Path, vaddr: int, size: int) -> bytes:
    """The bytes objdump shows at virtual address `vaddr`."""
    text = run_tool(
        "objdump", "-d", f"--start-address={vaddr:#x}", f"--stop-address={vaddr + size:#x}", path
    )
    data = bytearray()
    for line in text.splitlines():
        match = OBJDUMP_LINE.match(line)
        if match is not None:
            data += bytes.fromhex(match[2].replace(" ", ""))
    return bytes(data[:size])


def objdump_calls(path: Path, vaddr: int, size: int) -> list[int]:
    """Targets of the direct calls objdump decodes in [vaddr, vaddr + size)."""
    text = run_tool(
        "objdump", "-d", f"--start-address={vaddr:#x}", f"--stop-address={vaddr + size:#x}", path
    )
    return [int(m[1], 16) for m in map(CALL_LINE.match, text.splitlines()) if m is not None]


def objdump_first_mnemonic(path: Path, vaddr: int) -> str:
    text = run_tool(
        "objdump", "-d", f"--start-address={vaddr:#x}", f"--stop-address={vaddr + 16:#x}", path
    )
    for line in text.splitlines():
        parts = line.split("\t")
        if OBJDUMP_LINE.match(line) and len(parts) >= 3:
            return parts[2].split()[0]
    raise AssertionError(f"objdump decoded nothing at {vaddr:#x} in {path}")


def nm_address(path: Path, name: str, *, dynamic: bool = False) -> int:
    """Address nm reports for `name` (version suffix ignored)."""
    text = run_tool("nm", *(["-D"] if dynamic else []), "--defined-only", path)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2].split("@", 1)[0] == name:
            return int(fields[0], 16)
    raise AssertionError(f"nm found no {name} in {path}")


def file_bytes(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as stream:
        stream.seek(offset)
        return stream.read(size)
