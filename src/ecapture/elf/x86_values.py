"""What x86-64 registers hold along a stretch of machine code, as symbolic values.

Enough to prove facts such as "this function tail-calls that one with its
second argument as the first" or "the code compares *(*(arg1 + 0x9a8) +
0x3d0) with 0": moves, `lea`, immediate loads, 64-bit loads from
register + displacement, add/sub of an immediate and `cmov` are modelled;
any other instruction that writes a register makes it unknown (capstone's
`regs_access` says which it writes), so a fact is only ever claimed from code
that states it. Argument registers are those of the System V x86-64 ABI
("Parameter Passing": rdi, rsi, rdx, rcx, r8, r9).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import capstone
from capstone import x86

ARGUMENT_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
# Clobbered by a call (System V x86-64 ABI, "Registers").
CALLER_SAVED = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"})
_GENERAL = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{n}" for n in range(8, 16))
)
# 32-bit names: writing one zero-extends into the whole register (Intel SDM vol. 1, 3.4.1.1).
_DWORD = {
    **{f"e{name[1:]}": name for name in _GENERAL[:8]},
    **{f"r{n}d": f"r{n}" for n in range(8, 16)},
}
# 8- and 16-bit names: writing one keeps the other bits, so the value becomes unknown.
_PARTIAL = {
    **{name[1:]: name for name in _GENERAL[:8]},
    **{f"{name[1]}l": name for name in ("rax", "rbx", "rcx", "rdx")},
    **{f"{name[1]}h": name for name in ("rax", "rbx", "rcx", "rdx")},
    "sil": "rsi", "dil": "rdi", "bpl": "rbp", "spl": "rsp",
    **{f"r{n}{suffix}": f"r{n}" for n in range(8, 16) for suffix in ("w", "b")},
}


@dataclass(frozen=True, slots=True)
class Arg:
    """The value argument register `index` had at the start (0 = rdi)."""

    index: int

    def __str__(self) -> str:
        return f"arg{self.index}"


@dataclass(frozen=True, slots=True)
class Const:
    value: int

    def __str__(self) -> str:
        return f"{self.value:#x}"


@dataclass(frozen=True, slots=True)
class Address:
    """A RIP-relative address (`lea reg, [rip + d]`): a virtual address of the file."""

    vaddr: int

    def __str__(self) -> str:
        return f"@{self.vaddr:#x}"


@dataclass(frozen=True, slots=True)
class Offset:
    """base + delta (delta != 0)."""

    base: Value
    delta: int

    def __str__(self) -> str:
        return f"({self.base} + {self.delta:#x})"


@dataclass(frozen=True, slots=True)
class Load:
    """The 8 bytes at address `address`."""

    address: Value

    def __str__(self) -> str:
        return f"*{self.address}"


@dataclass(frozen=True, slots=True)
class OneOf:
    """Either of several values (a `cmov` joined two)."""

    choices: frozenset[Value]

    def __str__(self) -> str:
        return "{" + " | ".join(sorted(map(str, self.choices))) + "}"


Value = Arg | Const | Address | Offset | Load | OneOf


def add(base: Value, delta: int) -> Value:
    """base + delta, folded: (b + 1) + 2 is b + 3; Const + k is a Const."""
    if delta == 0:
        return base
    if isinstance(base, Const):
        return Const((base.value + delta) & (2**64 - 1))
    if isinstance(base, Offset):
        return add(base.base, base.delta + delta)
    return Offset(base, delta)


def choices(value: Value) -> frozenset[Value]:
    return value.choices if isinstance(value, OneOf) else frozenset({value})


@dataclass(frozen=True, slots=True)
class Branch:
    """A direct call or jmp and the registers at that point."""

    site: int  # address of the call/jmp instruction
    target: int
    tail: bool  # jmp (a tail call) rather than call
    registers: dict[str, Value]

    def argument(self, index: int) -> Value | None:
        return self.registers.get(ARGUMENT_REGISTERS[index])


@dataclass(frozen=True, slots=True)
class ZeroTest:
    """`cmp qword ptr [m], 0` (or `test` of a register with itself): is `value` zero?"""

    site: int
    value: Value


@dataclass(slots=True)
class Trace:
    """What a linear walk saw."""

    branches: list[Branch] = field(default_factory=list)
    zero_tests: list[ZeroTest] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)  # every value a register took
    end: str = "limit"  # "ret", "jmp", "indirect", "limit", "undecodable", "branch"
    instructions: int = 0
    registers: dict[str, Value] = field(default_factory=dict)  # the state at the end


def disassembler() -> Any:
    engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    engine.detail = True
    return engine


def full_register(name: str) -> str | None:
    """`ecx` -> `rcx`; None for anything but a general-purpose register."""
    if name in _GENERAL:
        return name
    return _DWORD.get(name) or _PARTIAL.get(name)


class _Walker:
    def __init__(self, registers: dict[str, Value]) -> None:
        self.registers = registers
        self.trace = Trace()

    def read(self, instruction: Any, operand: Any) -> Value | None:
        if operand.type == x86.X86_OP_IMM:
            return Const(operand.imm & (2**64 - 1))
        if operand.type == x86.X86_OP_REG:
            name = instruction.reg_name(operand.reg)
            if name in _GENERAL:
                return self.registers.get(name)
            return None
        return None

    def address(self, instruction: Any, operand: Any) -> Value | None:
        """The address a memory operand names, when it is base + displacement or RIP-relative."""
        memory = operand.mem
        if memory.index != 0 or memory.segment != 0:
            return None
        if memory.base == x86.X86_REG_RIP:
            return Address(instruction.address + instruction.size + memory.disp)
        if memory.base == 0:
            return None
        base = self.registers.get(instruction.reg_name(memory.base))
        return None if base is None else add(base, memory.disp)

    def write(self, name: str, value: Value | None) -> None:
        register = full_register(name)
        if register is None:
            return
        if value is None or (register != name and name not in _DWORD):
            self.registers.pop(register, None)  # a partial write leaves an unknown mix
            return
        self.registers[register] = value
        self.trace.values.append(value)

    def clobber_written(self, instruction: Any) -> None:
        _, written = instruction.regs_access()
        for register in written:
            name = full_register(instruction.reg_name(register))
            if name is not None and name != "rsp":
                self.registers.pop(name, None)

    def step(self, instruction: Any) -> bool:
        """Apply one instruction; False ends the walk."""
        mnemonic = instruction.mnemonic
        operands = instruction.operands
        groups = set(instruction.groups)
        if capstone.CS_GRP_RET in groups:
            self.trace.end = "ret"
            return False
        if capstone.CS_GRP_CALL in groups or mnemonic == "jmp":
            tail = mnemonic == "jmp"
            if operands and operands[0].type == x86.X86_OP_IMM:
                self.trace.branches.append(
                    Branch(instruction.address, operands[0].imm, tail, dict(self.registers))
                )
            elif tail:
                self.trace.end = "indirect"
                return False
            if tail:
                self.trace.end = "jmp"
                return False
            for register in CALLER_SAVED:
                self.registers.pop(register, None)
            return True
        if capstone.CS_GRP_JUMP in groups:
            return self.on_conditional(instruction)
        if len(operands) == 2:
            self.two_operands(instruction, mnemonic, operands[0], operands[1])
            return True
        self.clobber_written(instruction)
        return True

    def on_conditional(self, _instruction: Any) -> bool:
        return True  # linear walk: follow the fall-through path

    def two_operands(self, instruction: Any, mnemonic: str, target: Any, source: Any) -> None:
        if mnemonic in ("cmp", "test") and target.type == x86.X86_OP_MEM:
            if source.type == x86.X86_OP_IMM and source.imm == 0 and target.size == 8:
                address = self.address(instruction, target)
                if address is not None:
                    self.trace.zero_tests.append(ZeroTest(instruction.address, Load(address)))
            return
        if mnemonic == "test" and target.type == source.type == x86.X86_OP_REG:
            if target.reg == source.reg and target.size == 8:
                tested = self.read(instruction, target)
                if tested is not None:
                    self.trace.zero_tests.append(ZeroTest(instruction.address, tested))
            return
        if target.type != x86.X86_OP_REG:
            self.clobber_written(instruction)  # a store: registers unchanged but for flags
            return
        name = instruction.reg_name(target.reg)
        value: Value | None = None
        if mnemonic == "mov":
            if source.type == x86.X86_OP_MEM:
                address = self.address(instruction, source)
                value = Load(address) if address is not None and target.size == 8 else None
            else:
                value = self.read(instruction, source)
                if target.size == 4 and not isinstance(value, Const):
                    value = None  # a 32-bit copy truncates: no longer the same value
                elif isinstance(value, Const) and target.size == 4:
                    value = Const(value.value & 0xFFFFFFFF)
        elif mnemonic == "lea" and target.size == 8:
            value = self.address(instruction, source)
        elif mnemonic in ("add", "sub") and target.size == 8 and source.type == x86.X86_OP_IMM:
            current = self.registers.get(name)
            delta = source.imm if mnemonic == "add" else -source.imm
            value = None if current is None else add(current, delta)
        elif mnemonic == "xor" and source.type == x86.X86_OP_REG and source.reg == target.reg:
            value = Const(0) if target.size in (4, 8) else None
        elif mnemonic.startswith("cmov") and target.size == 8:
            current = self.registers.get(name)
            other = self.read(instruction, source)
            if current is not None and other is not None:
                value = OneOf(choices(current) | choices(other))
        else:
            self.clobber_written(instruction)
            return
        self.write(name, value)


class _StraightWalker(_Walker):
    def on_conditional(self, _instruction: Any) -> bool:
        self.trace.end = "branch"
        return False


def walk(
    code: bytes,
    vaddr: int,
    *,
    registers: dict[str, Value] | None = None,
    limit: int = 64,
    stop_at_branch: bool = False,
) -> Trace:
    """Walk `code` (at virtual address `vaddr`) linearly for at most `limit` instructions.

    `registers` is the state at the start (default: a function entry, where
    each argument register holds its Arg). Conditional branches are followed
    along their fall-through path, or end the walk when `stop_at_branch`.
    The walk ends at a ret, a jmp, or the first undecodable byte.
    """
    state = dict(registers) if registers is not None else entry_registers()
    walker = (_StraightWalker if stop_at_branch else _Walker)(state)
    count = 0
    for instruction in _instructions(code, vaddr):
        if count >= limit:
            break
        count += 1
        if not walker.step(instruction):
            walker.trace.instructions = count
            walker.trace.registers = dict(walker.registers)
            return walker.trace
    else:
        if count < limit:
            walker.trace.end = "undecodable"
    walker.trace.instructions = count
    walker.trace.registers = dict(walker.registers)
    return walker.trace


def entry_registers() -> dict[str, Value]:
    return {name: Arg(index) for index, name in enumerate(ARGUMENT_REGISTERS)}


def _instructions(code: bytes, vaddr: int) -> Iterator[Any]:
    yield from disassembler().disasm(code, vaddr)
