"""Where each SSL read/write uprobe sits, decided from the machine code.

A uprobe costs ~0.4 µs when the kernel can emulate the probed instruction and
~14 µs when it must single-step it out of line (docs/kernel.md#uprobe-hit-cost
§1). Debian's OpenSSL 3.0 starts SSL_write/SSL_read/SSL_write_ex/SSL_read_ex
with `sub $N,%rsp` (single-stepped), but each of them first calls one static
function (ssl_write_internal / ssl_read_internal: `(SSL *s, const void *buf,
size_t num, size_t *processed)`, > 0 on success with the length in
*processed) that starts with a `push` (emulated). One probe there sees both the
plain and the _ex calls — but only where the disassembly proves it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ecapture.elf.symbols import Executable
from ecapture.errors import SymbolNotFound
from ecapture.events import Direction

X86_64 = "EM_X86_64"
# How far into a function we look for the first call: the prologues seen are < 40 bytes.
SCAN_BYTES = 96
FIRST_INSTRUCTION_BYTES = 16  # the longest x86 instruction is 15 bytes

# The four argument registers of the System V x86-64 ABI that SSL_*_ex and the
# internal functions take, each with the names of its parts as capstone spells them.
ARGUMENT_REGISTERS: dict[str, frozenset[str]] = {
    "rdi": frozenset({"rdi", "edi", "di", "dil"}),
    "rsi": frozenset({"rsi", "esi", "si", "sil"}),
    "rdx": frozenset({"rdx", "edx", "dx", "dl", "dh"}),
    "rcx": frozenset({"rcx", "ecx", "cx", "cl", "ch"}),
}
REGISTER_FAMILY = {part: family for family, parts in ARGUMENT_REGISTERS.items() for part in parts}

# The kernel's own nop encodings, which it emulates like a jump to the next
# instruction (arch/x86/kernel/uprobes.c branch_setup_xol_ops: x86_nops[]).
KERNEL_NOPS = frozenset(
    bytes.fromhex(nop)
    for nop in (
        "90",
        "6690",
        "0f1f00",
        "0f1f4000",
        "0f1f440000",
        "660f1f440000",
        "0f1f8000000000",
        "0f1f840000000000",
    )
)
SIGN_BRANCHES = frozenset({"js", "jl", "jle"})


class CallSemantics(enum.StrEnum):
    """How a hooked function reports the bytes it moved."""

    PLAIN = "plain"  # (ssl, buf, int num) -> int: bytes moved when > 0
    EX = "ex"  # (ssl, buf, size_t num, size_t *out) -> int: success when > 0, bytes in *out


@dataclass(frozen=True, slots=True)
class HookPoint:
    """One uprobe (+ uretprobe) to attach for one direction."""

    direction: Direction
    file_offset: int
    semantics: CallSemantics
    label: str  # e.g. "SSL_write_ex→internal@0x355e0" or "SSL_write"
    emulated: bool  # the first instruction is one the kernel emulates (push/call/jmp/nop)


@dataclass(frozen=True, slots=True)
class _Functions:
    direction: Direction
    plain: str
    ex: str


DIRECTIONS = (
    _Functions(Direction.SEND, "SSL_write", "SSL_write_ex"),
    _Functions(Direction.RECV, "SSL_read", "SSL_read_ex"),
)


def _disassembler() -> Any:
    # capstone is loaded by the first disassembly (its import alone is ~20 ms
    # and several MB), not by every command that imports this module.
    import capstone

    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    disassembler.detail = True
    return disassembler


def is_emulated_instruction(code: bytes) -> bool:
    """Is the instruction at the start of `code` one the x86-64 uprobe code emulates?

    arch/x86/kernel/uprobes.c: push_setup_xol_ops takes `push reg` (50+r, with
    at most a 0x41 REX prefix); branch_setup_xol_ops takes call rel32, jmp
    rel8/rel32, jcc and the kernel's nops, and refuses a 0x66 prefix on them.
    Everything else is single-stepped.
    """
    instruction = next(_disassembler().disasm(code[:FIRST_INSTRUCTION_BYTES], 0, 1), None)
    if instruction is None:
        return False
    raw = bytes(instruction.bytes)
    if raw in KERNEL_NOPS:
        return True
    if raw[0] == 0x41 and len(raw) == 2:  # REX.B: push r8..r15
        return 0x50 <= raw[1] <= 0x57
    if len(raw) == 1:
        return 0x50 <= raw[0] <= 0x57 or raw[0] == 0x90
    opcode = raw[0]
    if opcode in (0xE8, 0xE9) and len(raw) == 5:  # call rel32, jmp rel32
        return True
    if (opcode == 0xEB or 0x70 <= opcode <= 0x7F) and len(raw) == 2:  # jmp rel8, jcc rel8
        return True
    return opcode == 0x0F and len(raw) == 6 and 0x80 <= raw[1] <= 0x8F  # jcc rel32


def is_emulated(exe: Executable, vaddr: int) -> bool:
    """Is the first instruction at `vaddr` emulated by the uprobe code (x86-64 only)?"""
    if exe.machine != X86_64:
        return False  # not analysed: never claim the cheap case
    return is_emulated_instruction(exe.read_code(vaddr, FIRST_INSTRUCTION_BYTES))


@dataclass(frozen=True, slots=True)
class ForwardingCall:
    """The first direct call of a function, found to receive the caller's arguments."""

    target: int  # virtual address of the called function


def _written_argument_registers(instruction: Any) -> set[str]:
    _, written = instruction.regs_access()
    return {
        REGISTER_FAMILY[name]
        for name in (instruction.reg_name(register) for register in written)
        if name in REGISTER_FAMILY
    }


def _is_stack_adjustment(instruction: Any) -> bool:
    """`sub/add rsp, imm`, `push reg`, endbr64 or a nop: touches no argument register."""
    mnemonic = instruction.mnemonic
    if mnemonic in ("push", "endbr64", "nop"):
        return not _written_argument_registers(instruction)
    if mnemonic in ("sub", "add"):
        from capstone import x86

        operands = instruction.operands
        return (
            len(operands) == 2
            and operands[0].type == x86.X86_OP_REG
            and instruction.reg_name(operands[0].reg) == "rsp"
            and operands[1].type == x86.X86_OP_IMM
        )
    return False


def _direct_call_target(instruction: Any) -> int | None:
    raw = bytes(instruction.bytes)
    if instruction.mnemonic == "call" and len(raw) == 5 and raw[0] == 0xE8:
        return int(instruction.operands[0].imm)
    return None


def find_forwarding_call(code: bytes, vaddr: int) -> ForwardingCall | None:
    """Prove an _ex function hands its four arguments unchanged to its first call.

    Before the first direct `call rel32` only stack adjustments may run: no
    branch, and no write to rdi, rsi, rdx or rcx. Anything else, or no call in
    `code`, gives None.
    """
    for instruction in _disassembler().disasm(code, vaddr):
        target = _direct_call_target(instruction)
        if target is not None:
            return ForwardingCall(target)
        if not _is_stack_adjustment(instruction):
            return None
    return None


def _writes_allowed_in_plain(instruction: Any, family: str) -> bool:
    """The only argument-register writes a plain SSL_write/SSL_read may make before the call.

    OpenSSL 3.0 ssl/ssl_lib.c: `SSL_write(s, buf, int num)` calls
    `ssl_write_internal(s, buf, (size_t)num, &written)`: rdx is num sign- or
    zero-extended, rcx the address of a stack slot it reads back afterwards.
    """
    from capstone import x86

    operands = instruction.operands
    if family == "rdx":
        registers = [
            instruction.reg_name(op.reg) for op in operands if op.type == x86.X86_OP_REG
        ]
        return (instruction.mnemonic, registers) in (
            ("movsxd", ["rdx", "edx"]),
            ("mov", ["edx", "edx"]),
        )
    if family == "rcx":
        if instruction.mnemonic == "mov" and len(operands) == 2:
            return all(op.type == x86.X86_OP_REG for op in operands) and bool(
                instruction.reg_name(operands[1].reg) == "rsp"
            )
        if instruction.mnemonic == "lea":
            memory = operands[1].mem
            return bool(instruction.reg_name(memory.base) == "rsp" and memory.index == 0)
    return False


def _is_negative_length_guard(previous: Any, branch: Any) -> bool:
    """`test edx, edx` (or `cmp edx, 0`) then js/jl/jle: SSL_write/SSL_read refuse num < 0.

    ssl/ssl_lib.c (OpenSSL 3.0): `if (num < 0) { ERR_raise(..., SSL_R_BAD_LENGTH);
    return -1; }` — that path moves no bytes, so skipping the call there is fine.
    """
    if previous is None or branch.mnemonic not in SIGN_BRANCHES:
        return False
    if previous.mnemonic == "test":
        return str(previous.op_str) == "edx, edx"
    return previous.mnemonic == "cmp" and str(previous.op_str) == "edx, 0"


def find_plain_call(code: bytes, vaddr: int) -> ForwardingCall | None:
    """Prove a plain SSL_write/SSL_read reaches its first call with (ssl, buf, num) intact.

    Allowed before the call: anything that leaves rdi and rsi alone, writes rdx
    only to widen num, writes rcx only with a stack address, and branches only
    on the sign of num.
    """
    from capstone import CS_GRP_CALL, CS_GRP_IRET, CS_GRP_JUMP, CS_GRP_RET

    previous = None
    for instruction in _disassembler().disasm(code, vaddr):
        target = _direct_call_target(instruction)
        if target is not None:
            return ForwardingCall(target)
        groups = set(instruction.groups)
        if groups & {CS_GRP_CALL, CS_GRP_RET, CS_GRP_IRET}:
            return None
        if CS_GRP_JUMP in groups and not _is_negative_length_guard(previous, instruction):
            return None
        for family in _written_argument_registers(instruction):
            if not _writes_allowed_in_plain(instruction, family):
                return None
        previous = instruction
    return None


def _internal_hook(exe: Executable, functions: _Functions) -> HookPoint | None:
    """One EX hook on the function both SSL_x and SSL_x_ex call first, when proven."""
    if exe.machine != X86_64 or not exe.has(functions.ex):
        return None
    ex_address = exe.address(functions.ex)
    forwarded = find_forwarding_call(exe.read_code(ex_address, SCAN_BYTES), ex_address)
    if forwarded is None:
        return None
    if exe.has(functions.plain):
        plain_address = exe.address(functions.plain)
        plain = find_plain_call(exe.read_code(plain_address, SCAN_BYTES), plain_address)
        if plain is None or plain.target != forwarded.target:
            return None
    try:
        offset = exe.vaddr_to_offset(forwarded.target)
    except SymbolNotFound:
        return None  # the call leaves the file's code (e.g. a PLT stub resolved elsewhere)
    if not is_emulated(exe, forwarded.target):
        return None  # no gain over the exported functions
    return HookPoint(
        direction=functions.direction,
        file_offset=offset,
        semantics=CallSemantics.EX,
        label=f"{functions.ex}→internal@{forwarded.target:#x}",
        emulated=True,
    )


def _exported_hooks(exe: Executable, functions: _Functions) -> list[HookPoint]:
    hooks = []
    for name, semantics in (
        (functions.plain, CallSemantics.PLAIN),
        (functions.ex, CallSemantics.EX),
    ):
        if exe.has(name):
            address = exe.address(name)
            hooks.append(
                HookPoint(
                    direction=functions.direction,
                    file_offset=exe.vaddr_to_offset(address),
                    semantics=semantics,
                    label=name,
                    emulated=is_emulated(exe, address),
                )
            )
    return hooks


def plan_ssl_hooks(exe: Executable, *, prefer_internal: bool = True) -> list[HookPoint]:
    """The hooks that see every SSL read and write of `exe`, cheapest proven placement first.

    Per direction: one EX hook on the shared internal function when the
    disassembly proves it (see `_internal_hook`), else the exported functions
    with their own semantics.
    """
    plan: list[HookPoint] = []
    for functions in DIRECTIONS:
        internal = _internal_hook(exe, functions) if prefer_internal else None
        hooks = [internal] if internal is not None else _exported_hooks(exe, functions)
        if not hooks:
            raise SymbolNotFound(
                f"{functions.plain}, {functions.ex} are not in {exe.name} (.dynsym, .symtab); "
                "pass --libssl PATH"
            )
        plan.extend(hooks)
    return plan


def describe_plan(points: Iterable[HookPoint]) -> str:
    """One log line: `send: SSL_write_ex→internal@0x355e0 (ex, +0x355e0, emulated); recv: ...`."""
    parts: list[str] = []
    for point in points:
        cost = "emulated" if point.emulated else "single-stepped"
        parts.append(
            f"{point.direction.label}: {point.label} "
            f"({point.semantics.value}, +{point.file_offset:#x}, {cost})"
        )
    return "; ".join(parts) if parts else "no hooks"


def hooks_for(points: Sequence[HookPoint], direction: Direction) -> list[HookPoint]:
    """The hooks of one direction, in plan order."""
    return [point for point in points if point.direction is direction]
