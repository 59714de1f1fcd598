"""GnuTLS's key-log entry point, found and proven by disassembly (`ecapture gnutls -m keylog`).

GnuTLS 3.7 logs every secret through `_gnutls_nss_keylog_write(session, label,
secret, secret_size)` (lib/kx.c): TLS 1.2 calls it directly with
"CLIENT_RANDOM" and the 48-byte master secret, TLS 1.3 through the session's
default key-log function (`_gnutls_call_keylog_func` → `_gnutls_nss_keylog_func`,
set by gnutls_init). It runs whether or not SSLKEYLOGFILE is set (the file
test is inside it), and the client random is the session's own:
`session->security_parameters.client_random`. Neither function is exported.

The proof, each step refused unless unambiguous:
- the "CLIENT_RANDOM" string (NUL-terminated) in the file;
- every `lea REG, [rip + X]` of it loads `rsi` (the label argument) and is
  followed, before any other call, by a direct `call T` with `ecx`/`rcx` = 48
  (GNUTLS_MASTER_SIZE): all such sites must name the same T;
- the client random's offset in the session from the exported
  `gnutls_session_get_random(session, client, server)`: `lea rax, [rdi + OFF]`,
  `mov dword [rsi + 8], 32`, `mov [rsi], rax` (client->data, client->size).

A program that installs its own key-log function
(gnutls_session_set_keylog_function) logs its TLS 1.3 secrets elsewhere: they
are then not seen (never a wrong key: the label, random and secret all come
from this one call).
"""

from __future__ import annotations

import bisect
import functools
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from ecapture.elf.symbols import Executable
from ecapture.elf.x86_values import disassembler
from ecapture.errors import SymbolNotFound

LABEL = b"CLIENT_RANDOM\0"
MASTER_SIZE = 48  # GNUTLS_MASTER_SIZE
RANDOM_SIZE = 32  # GNUTLS_RANDOM_SIZE
GET_RANDOM = "gnutls_session_get_random"
SITE_WINDOW = 12  # instructions between the label's load and its call
_RIP = 41  # capstone X86_REG_RIP
_OP_REG, _OP_IMM, _OP_MEM = 1, 2, 3  # capstone CS_OP_*


@dataclass(frozen=True, slots=True)
class GnutlsKeylogHook:
    vaddr: int  # _gnutls_nss_keylog_write
    file_offset: int  # where the uprobe goes
    random_offset: int  # client random = session + random_offset
    sites: int  # CLIENT_RANDOM call sites that agree


def _string_address(elf: ELFFile, text: bytes) -> int:
    found: list[int] = []
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_PROGBITS" or section["sh_flags"] & 0x4:  # SHF_EXECINSTR
            continue
        data = section.data()
        start = data.find(text)
        while start >= 0:
            if start == 0 or data[start - 1] == 0:  # a whole string, not a suffix of one
                found.append(int(section["sh_addr"]) + start)
            start = data.find(text, start + 1)
    if len(found) != 1:
        raise SymbolNotFound(f"{len(found)} copies of the {text[:-1].decode()} label")
    return found[0]


def _function_starts(elf: ELFFile) -> list[int]:
    """Function start addresses from .eh_frame_hdr's binary search table (LSB: its
    entries are (initial location, FDE) pairs, encoded DW_EH_PE_datarel | sdata4)."""
    section = elf.get_section_by_name(".eh_frame_hdr")
    if section is None:
        raise SymbolNotFound("no .eh_frame_hdr to tell where functions start")
    data = section.data()
    version, _ptr_enc, count_enc, table_enc = data[:4]
    if version != 1 or count_enc != 0x03 or table_enc != 0x3B:  # udata4 count, datarel sdata4
        raise SymbolNotFound(f".eh_frame_hdr encodings {data[:4].hex()} not handled")
    (count,) = struct.unpack_from("<I", data, 8)
    base = int(section["sh_addr"])
    pairs = struct.unpack_from(f"<{2 * count}i", data, 12)
    return sorted(base + pairs[i] for i in range(0, 2 * count, 2))


def _function_code(executable: Executable, starts: list[int], site: int) -> tuple[int, bytes]:
    """The code of the function that holds `site`: from its start to the next one."""
    index = bisect.bisect_right(starts, site) - 1
    if index < 0:
        raise SymbolNotFound(f"{site:#x} is in no function of .eh_frame_hdr")
    start = starts[index]
    end = starts[index + 1] if index + 1 < len(starts) else site + 4096
    return start, executable.read_code(start, end - start)


def _rip_target(insn: Any, operand: Any) -> int:
    return int(insn.address + insn.size + operand.mem.disp)


def _keylog_sites(engine: Any, code: bytes, vaddr: int, label: int) -> list[int]:
    """Call targets of each `lea rsi, label` ... `call T` with ecx = 48 at the call."""
    targets: list[int] = []
    pending: int | None = None  # instructions since the label went into rsi
    ecx: int | None = None  # the immediate last moved into ecx/rcx, None: unknown
    for insn in engine.disasm(code, vaddr):
        operands = insn.operands
        if insn.mnemonic == "lea" and len(operands) == 2 and operands[1].type == _OP_MEM \
                and operands[1].mem.base == _RIP and _rip_target(insn, operands[1]) == label:
            if insn.reg_name(operands[0].reg) != "rsi":
                raise SymbolNotFound(f"the label is loaded into {insn.reg_name(operands[0].reg)}"
                                     f" at {insn.address:#x}, not the label argument")
            pending = 0
            continue
        if pending is not None:
            pending += 1
            if insn.mnemonic == "call":
                if not (len(operands) == 1 and operands[0].type == _OP_IMM and
                        ecx == MASTER_SIZE):
                    raise SymbolNotFound(f"the CLIENT_RANDOM call at {insn.address:#x} is not a "
                                         f"direct call with a {MASTER_SIZE}-byte secret")
                targets.append(int(operands[0].imm))
                pending = None
            elif pending > SITE_WINDOW or insn.mnemonic in ("ret", "jmp"):
                raise SymbolNotFound(f"a CLIENT_RANDOM load without a call after it "
                                     f"(at {insn.address:#x})")
        # ecx as the next call sees it: a `mov ecx, imm`, else unknown once written
        # (or clobbered by a call: it is caller-saved).
        if insn.mnemonic == "mov" and len(operands) == 2 and operands[0].type == _OP_REG \
                and insn.reg_name(operands[0].reg) in ("ecx", "rcx") \
                and operands[1].type == _OP_IMM:
            ecx = int(operands[1].imm)
        elif insn.mnemonic in ("call", "ret", "jmp") or any(
                insn.reg_name(reg) in ("ecx", "rcx", "cx", "cl") for reg in insn.regs_access()[1]):
            ecx = None
    return targets


def _random_offset(executable: Executable, engine: Any) -> int:
    vaddr = executable.address(GET_RANDOM)
    insns = list(engine.disasm(executable.read_code(vaddr, 64), vaddr))
    for first, second, third in zip(insns, insns[1:], insns[2:], strict=False):
        if first.mnemonic == "lea" and first.operands[1].type == _OP_MEM \
                and first.reg_name(first.operands[1].mem.base) == "rdi" \
                and first.operands[1].mem.index == 0 \
                and second.op_str == f"dword ptr [rsi + 8], {RANDOM_SIZE:#x}" \
                and third.mnemonic == "mov" and third.op_str == \
                f"qword ptr [rsi], {first.reg_name(first.operands[0].reg)}":
            return int(first.operands[1].mem.disp)
        if first.mnemonic == "ret":
            break
    raise SymbolNotFound(f"{GET_RANDOM} does not read the client random at session + OFF")


@functools.lru_cache(maxsize=8)
def find_gnutls_keylog(path: Path) -> GnutlsKeylogHook:
    """The proven key-log hook of the GnuTLS library at `path`."""
    engine = disassembler()
    executable = Executable(path)
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        label = _string_address(elf, LABEL)
        text = elf.get_section_by_name(".text")
        if text is None:
            raise SymbolNotFound(f"{path} has no .text")
        starts = _function_starts(elf)
        code, code_vaddr = text.data(), int(text["sh_addr"])
    # Candidate loads: `lea r64, [rip + disp32]` (REX.W 8d, ModRM mod=00 rm=101) whose
    # target is the label; each is then read in its whole function, from its start.
    functions: set[int] = set()
    for match in re.finditer(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", code):
        at = code_vaddr + match.start()
        (disp,) = struct.unpack_from("<i", code, match.start() + 3)
        if at + 7 + disp == label:
            functions.add(_function_code(executable, starts, at)[0])
    targets: list[int] = []
    for function in sorted(functions):
        _, body = _function_code(executable, starts, function)
        targets += _keylog_sites(engine, body, function, label)
    if not targets:
        raise SymbolNotFound("no code logs CLIENT_RANDOM")
    if len(set(targets)) != 1:
        raise SymbolNotFound(
            "CLIENT_RANDOM is logged through " + ", ".join(f"{t:#x}" for t in sorted(set(targets))))
    vaddr = targets[0]
    return GnutlsKeylogHook(vaddr, executable.vaddr_to_offset(vaddr),
                            _random_offset(executable, engine), len(targets))
