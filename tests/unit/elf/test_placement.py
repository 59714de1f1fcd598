"""Probe placement: proven internal hooks on OpenSSL, exported hooks elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecapture.elf.placement import (
    CallSemantics,
    HookPoint,
    describe_plan,
    find_forwarding_call,
    find_plain_call,
    is_emulated,
    is_emulated_instruction,
    plan_ssl_hooks,
)
from ecapture.elf.symbols import Executable
from ecapture.errors import SymbolNotFound
from ecapture.events import Direction

from .conftest import BORINGSSL, LIBSSL3, compile_c, require_file
from .tools import objdump_calls, objdump_first_mnemonic

# Debian OpenSSL 3.0.x SSL_write_ex at 0x35a50: sub $0x8,%rsp; call 0x355e0
EX_PROLOGUE = bytes.fromhex("4883ec08") + bytes.fromhex("e887fbffff")
EX_ADDRESS = 0x35A50
# SSL_write at 0x359c0: sub; stack canary; test edx,edx; js; mov rsp,rcx; movslq edx,rdx; call
PLAIN_PROLOGUE = bytes.fromhex(
    "4883ec1864488b042528000000488944240831c085d2782f4889e14863d2e8fdfbffff"
)
PLAIN_ADDRESS = 0x359C0
INTERNAL = 0x355E0


def rel32_call(at: int, target: int) -> bytes:
    return b"\xe8" + (target - (at + 5)).to_bytes(4, "little", signed=True)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("4156", True),  # push %r14
        ("55", True),  # push %rbp
        ("e800000000", True),  # call rel32
        ("eb00", True),  # jmp rel8
        ("0f1f4000", True),  # nopl 0x0(%rax): one of the kernel's nops
        ("90", True),
        ("4883ec08", False),  # sub $0x8,%rsp: single-stepped
        ("f30f1efa", False),  # endbr64
        ("c3", False),  # ret
        ("664150", False),  # push %r8w: 0x66 prefix is refused by the kernel
    ],
)
def test_emulated_instruction_classes(code: str, expected: bool) -> None:
    assert is_emulated_instruction(bytes.fromhex(code)) is expected


def test_ex_forwarding_is_proven_on_openssl_bytes() -> None:
    proof = find_forwarding_call(EX_PROLOGUE, EX_ADDRESS)
    assert proof is not None and proof.target == INTERNAL


@pytest.mark.parametrize(
    "clobber",
    [
        "ba05000000",  # mov $5,%edx: num changed
        "31c9",  # xor %ecx,%ecx: out pointer lost
        "4889f7",  # mov %rsi,%rdi
        "4883c608",  # add $8,%rsi
        "7400",  # je: a path that may skip the call
    ],
)
def test_ex_forwarding_refuses_any_argument_write(clobber: str) -> None:
    prefix = bytes.fromhex("4883ec08" + clobber)
    code = prefix + rel32_call(EX_ADDRESS + len(prefix), INTERNAL)
    assert find_forwarding_call(code, EX_ADDRESS) is None


def test_ex_without_a_call_is_not_proven() -> None:
    assert find_forwarding_call(bytes.fromhex("4883ec08c3"), EX_ADDRESS) is None


def test_plain_call_is_proven_on_openssl_bytes() -> None:
    proof = find_plain_call(PLAIN_PROLOGUE, PLAIN_ADDRESS)
    assert proof is not None and proof.target == INTERNAL


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("4863d2", "4863d6"),  # movslq %esi,%rdx: num taken from the wrong register
        ("4889e1", "4889f9"),  # mov %rdi,%rcx: out pointer is not a stack slot
        ("85d2782f", "85c0782f"),  # test %eax,%eax; js: a branch not on num's sign
    ],
)
def test_plain_call_refuses_other_argument_set_up(old: str, new: str) -> None:
    code = bytes.fromhex(PLAIN_PROLOGUE.hex().replace(old, new, 1))
    assert code != PLAIN_PROLOGUE
    assert find_plain_call(code, PLAIN_ADDRESS) is None


# Synthetic library: the write side clobbers num (rdx) before its call, so it must
# fall back to the exported functions; the read side forwards like OpenSSL does.
SYNTHETIC_ASM = r"""
__asm__(
    ".text\n"
    "write_internal:\n push %r14\n mov %rdx,%rax\n pop %r14\n ret\n"
    "read_internal:\n push %r13\n mov %rdx,%rax\n pop %r13\n ret\n"
    ".globl SSL_write_ex\n.type SSL_write_ex,@function\n"
    "SSL_write_ex:\n sub $8,%rsp\n mov $5,%edx\n call write_internal\n add $8,%rsp\n ret\n"
    ".size SSL_write_ex,.-SSL_write_ex\n"
    ".globl SSL_write\n.type SSL_write,@function\n"
    "SSL_write:\n sub $24,%rsp\n mov %rsp,%rcx\n movslq %edx,%rdx\n call write_internal\n"
    " add $24,%rsp\n ret\n.size SSL_write,.-SSL_write\n"
    ".globl SSL_read_ex\n.type SSL_read_ex,@function\n"
    "SSL_read_ex:\n sub $8,%rsp\n call read_internal\n add $8,%rsp\n ret\n"
    ".size SSL_read_ex,.-SSL_read_ex\n"
    ".globl SSL_read\n.type SSL_read,@function\n"
    "SSL_read:\n sub $24,%rsp\n test %edx,%edx\n js 1f\n lea 8(%rsp),%rcx\n movslq %edx,%rdx\n"
    " call read_internal\n1:\n add $24,%rsp\n ret\n.size SSL_read,.-SSL_read\n"
);
"""


@pytest.fixture(scope="module")
def synthetic_ssl(build_dir: Path) -> Path:
    library = compile_c(build_dir, "libsynthetic.so", SYNTHETIC_ASM, "-shared", "-fPIC")
    return library


def test_clobbered_argument_is_never_hooked_internally(synthetic_ssl: Path) -> None:
    exe = Executable(synthetic_ssl)
    plan = plan_ssl_hooks(exe)
    send = [p for p in plan if p.direction is Direction.SEND]
    recv = [p for p in plan if p.direction is Direction.RECV]
    assert sorted((p.label, p.semantics) for p in send) == [
        ("SSL_write", CallSemantics.PLAIN),
        ("SSL_write_ex", CallSemantics.EX),
    ]
    assert {p.file_offset for p in send} == {
        exe.offset_of("SSL_write"),
        exe.offset_of("SSL_write_ex"),
    }
    assert not any(p.emulated for p in send)  # both start with sub
    # The read side is provably forwarded: one hook on read_internal's push.
    [read_hook] = recv
    assert read_hook.semantics is CallSemantics.EX and read_hook.emulated
    [call_target] = objdump_calls(synthetic_ssl, exe.address("SSL_read_ex"), 16)
    assert read_hook.file_offset == exe.vaddr_to_offset(call_target)
    assert read_hook.label == f"SSL_read_ex→internal@{call_target:#x}"


def test_prefer_internal_off_hooks_exports(synthetic_ssl: Path) -> None:
    plan = plan_ssl_hooks(Executable(synthetic_ssl), prefer_internal=False)
    assert sorted(p.label for p in plan) == ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"]


def test_no_ssl_functions_is_symbol_not_found(shared_library: Path) -> None:
    with pytest.raises(SymbolNotFound, match=r"SSL_write, SSL_write_ex are not in libdemo\.so"):
        plan_ssl_hooks(Executable(shared_library))


def test_openssl_plan_uses_the_shared_internal_functions() -> None:
    library = require_file(LIBSSL3)
    exe = Executable(library)
    plan = plan_ssl_hooks(exe)
    assert [p.direction for p in plan] == [Direction.SEND, Direction.RECV]
    for point, (plain, ex) in zip(
        plan, (("SSL_write", "SSL_write_ex"), ("SSL_read", "SSL_read_ex")), strict=True
    ):
        assert point.semantics is CallSemantics.EX
        assert point.emulated and point.label.startswith(f"{ex}→internal@")
        # objdump, not our disassembler: both exported functions call the hooked one first
        for name in (plain, ex):
            calls = objdump_calls(library, exe.address(name), 48)
            assert calls, f"objdump shows no call in {name}"
            assert exe.vaddr_to_offset(calls[0]) == point.file_offset
        target = int(point.label.rsplit("@", 1)[1], 16)
        assert objdump_first_mnemonic(library, target) == "push"
        assert is_emulated(exe, target)
        assert not is_emulated(exe, exe.address(ex))  # why we move: sub is single-stepped


def test_boringssl_plan_hooks_exported_plain_functions() -> None:
    library = require_file(BORINGSSL)
    exe = Executable(library)
    plan = plan_ssl_hooks(exe)
    assert [(p.direction, p.label, p.semantics) for p in plan] == [
        (Direction.SEND, "SSL_write", CallSemantics.PLAIN),
        (Direction.RECV, "SSL_read", CallSemantics.PLAIN),
    ]
    for point in plan:
        assert point.file_offset == exe.offset_of(point.label)
        first = objdump_first_mnemonic(library, exe.address(point.label))
        assert point.emulated is (first in ("push", "call", "jmp", "nop"))


def test_describe_plan() -> None:
    points = [
        HookPoint(Direction.SEND, 0x355E0, CallSemantics.EX, "SSL_write_ex→internal@0x355e0", True),
        HookPoint(Direction.RECV, 0x35470, CallSemantics.PLAIN, "SSL_read", False),
    ]
    assert describe_plan(points) == (
        "send: SSL_write_ex→internal@0x355e0 (ex, +0x355e0, emulated); "
        "recv: SSL_read (plain, +0x35470, single-stepped)"
    )
    assert describe_plan([]) == "no hooks"
