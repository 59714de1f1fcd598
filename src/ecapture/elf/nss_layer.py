"""Where NSS's libssl3.so keeps `ssl_layer_id`, the identity of its SSL I/O layer.

`ecapture nss` keeps an NSPR call only when its PRFileDesc's identity is the
process's SSL layer id (bpf/tls.bpf.c nspr_enter). A process that imports a
socket while we run tells it (SSL_ImportFD's return); one that already runs
and only accepts on an imported listening socket (selfserv) never calls
SSL_ImportFD again, so its id is read from its memory at start.

The variable is not exported. NSS reads it for one call only: ssl_FindSocket
(sslsock.c) asks `PR_GetIdentitiesLayer(fd, ssl_layer_id)`, compiled as
`mov esi, dword ptr [rip + X]` followed by a `call` of PR_GetIdentitiesLayer's
PLT stub. The stub is the one jumping through the GOT slot that .rela.plt's
R_X86_64_JUMP_SLOT of PR_GetIdentitiesLayer names. Every such call site must
load the same X; anything else (no call site, another instruction, two
addresses) is refused: better no pre-existing processes than a wrong filter.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from ecapture.elf.x86_values import disassembler
from ecapture.errors import SymbolNotFound

log = logging.getLogger(__name__)

IDENTITIES_LAYER = "PR_GetIdentitiesLayer"
R_X86_64_JUMP_SLOT = 7
PLT_SECTIONS = (".plt.sec", ".plt")  # .plt.sec holds the stubs when built with IBT


def _jump_slot(elf: ELFFile, symbol: str) -> int:
    """The GOT address of `symbol`'s R_X86_64_JUMP_SLOT."""
    for section in elf.iter_sections():
        if not isinstance(section, RelocationSection) or not section.name.startswith(".rela"):
            continue
        symbols = elf.get_section(section["sh_link"])
        if not isinstance(symbols, SymbolTableSection):
            continue
        for relocation in section.iter_relocations():
            if relocation["r_info_type"] != R_X86_64_JUMP_SLOT:
                continue
            if symbols.get_symbol(relocation["r_info_sym"]).name == symbol:
                return int(relocation["r_offset"])
    raise SymbolNotFound(f"no PLT slot of {symbol}")


def _plt_stub(elf: ELFFile, slot: int, engine: Any) -> int:
    """The PLT stub that jumps through `slot` (`jmp qword ptr [rip + d]`)."""
    for name in PLT_SECTIONS:
        section = elf.get_section_by_name(name)
        if section is None:
            continue
        for insn in engine.disasm(section.data(), section["sh_addr"]):
            if insn.mnemonic not in ("jmp", "bnd jmp") or len(insn.operands) != 1:
                continue
            operand = insn.operands[0]
            if operand.type == 3 and operand.mem.base == _RIP and \
                    insn.address + insn.size + operand.mem.disp == slot:  # 3: CS_OP_MEM
                return int(insn.address)
    raise SymbolNotFound(f"no PLT stub jumps through {slot:#x}")


_RIP = 41  # capstone X86_REG_RIP


@functools.lru_cache(maxsize=16)
def find_ssl_layer_id(path: Path) -> int:
    """The virtual address of ssl_layer_id (a 32-bit PRDescIdentity) in `path`."""
    engine = disassembler()
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        stub = _plt_stub(elf, _jump_slot(elf, IDENTITIES_LAYER), engine)
        text = elf.get_section_by_name(".text")
        if text is None:
            raise SymbolNotFound(f"{path} has no .text")
        found: set[int] = set()
        calls = 0
        previous: Any = None
        for insn in engine.disasm(text.data(), text["sh_addr"]):
            if insn.mnemonic == "call" and len(insn.operands) == 1 and \
                    insn.operands[0].type == 2 and insn.operands[0].imm == stub:  # 2: CS_OP_IMM
                calls += 1
                found.add(_esi_load(previous))
            previous = insn
    if calls == 0:
        raise SymbolNotFound(f"{path}: no call of {IDENTITIES_LAYER}")
    if len(found) != 1 or -1 in found:
        raise SymbolNotFound(
            f"{path}: the {calls} calls of {IDENTITIES_LAYER} do not all pass one "
            f"RIP-relative variable as the identity"
        )
    address = found.pop()
    log.debug("%s: ssl_layer_id at %#x (%d call sites)", path, address, calls)
    return address


def _esi_load(insn: Any) -> int:
    """X of `mov esi, dword ptr [rip + X]`, -1 for any other instruction."""
    if insn is None or insn.mnemonic != "mov" or len(insn.operands) != 2:
        return -1
    target, source = insn.operands
    if target.type != 1 or insn.reg_name(target.reg) != "esi":  # 1: CS_OP_REG
        return -1
    if source.type != 3 or source.mem.base != _RIP or source.size != 4:
        return -1
    return int(insn.address + insn.size + source.mem.disp)
