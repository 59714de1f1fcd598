"""Where the "emulated floor" puts its empty probes: the internal function that SSL_write_ex
and SSL_read_ex call first (its first instruction is a `push`, emulated by the kernel:
docs/kernel.md#probe-placement). The project's own planner decides when it is importable; otherwise
objdump's disassembly gives the first `call` target of each exported function."""

from __future__ import annotations

import functools
import re

from bench import procs

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
CALL = re.compile(r"^\s*[0-9a-f]+:\s+call\s+([0-9a-f]+)\s", re.MULTILINE)


@functools.cache
def internal_hook_addresses() -> tuple[int, int]:
    """(write, read) file offsets of the internal functions."""
    try:
        from ecapture.elf.placement import plan_ssl_hooks
        from ecapture.elf.symbols import Executable
        from ecapture.events import Direction
    except ImportError:
        return _from_objdump()
    plan = plan_ssl_hooks(Executable(LIBSSL))
    write = [point for point in plan if point.direction is Direction.SEND]
    read = [point for point in plan if point.direction is Direction.RECV]
    if len(write) != 1 or len(read) != 1 or not (write[0].emulated and read[0].emulated):
        return _from_objdump()   # the planner fell back to exported functions: no internal hook
    return write[0].file_offset, read[0].file_offset


def _first_call(function: str) -> int:
    result = procs.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={function}", LIBSSL],
                       timeout=60)
    match = CALL.search(result.stdout)
    if not match:
        raise procs.BenchError(
            f"no call in {function} of {LIBSSL}: cannot place the emulated floor")
    return int(match.group(1), 16)


def _from_objdump() -> tuple[int, int]:
    # In this library text virtual addresses equal file offsets (its executable PT_LOAD has
    # p_offset == p_vaddr); bpftrace takes the address form.
    return _first_call("SSL_write_ex"), _first_call("SSL_read_ex")
