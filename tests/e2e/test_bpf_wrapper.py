"""The libbpf wrapper against the kernel: tests/bpf/wrapper_test.bpf.c on a tiny C program.

The program waits for a line on stdin before it calls anything, so probes are
attached (and its pid is known) first. Needs root, kernel BTF, gcc and the
built test object (make test-bpf).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ecapture.bpf import LoadedObject, LostSamples, ObjectSpec, PerfReader, RingReader
from ecapture.bpf.environment import KERNEL_BTF, can_trace, effective_capabilities
from ecapture.errors import BpfError, BpfLoadError, LibraryNotFound

pytestmark = pytest.mark.e2e

TEST_OBJECT = Path(__file__).parents[2] / "build" / "tests" / "wrapper_test.bpf.o"
RECORD = struct.Struct("<QQII")  # struct test_record of wrapper_test.bpf.c
MARK, BURST = 1, 2
WAIT_S = 20.0

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

/* noinline + an empty asm: the calls stay real calls with real symbols */
#define KEEP() __asm__ volatile("" ::: "memory")
__attribute__((noinline)) void marked_call(unsigned long value) { KEEP(); }
__attribute__((noinline)) void burst(unsigned long count, unsigned long size) { KEEP(); }

int main(int argc, char **argv)
{
	char line[16];
	unsigned long count = strtoul(argv[2], NULL, 10);

	if (!fgets(line, sizeof(line), stdin))
		return 2;
	if (strcmp(argv[1], "mark") == 0)
		for (unsigned long i = 0; i < count; i++)
			marked_call(i);
	else if (strcmp(argv[1], "burst") == 0)
		burst(count, strtoul(argv[3], NULL, 10));
	else if (strcmp(argv[1], "syscalls") == 0)
		for (unsigned long i = 0; i < count; i++)
			syscall(SYS_getppid);
	return 0;
}
"""


def _skip_reason() -> str | None:
    capabilities = effective_capabilities(Path("/proc/self/status").read_text())
    if os.geteuid() != 0 or not can_trace(capabilities):
        return "needs root (CAP_BPF, CAP_PERFMON)"
    if not KERNEL_BTF.exists():
        return f"needs kernel BTF at {KERNEL_BTF}"
    if shutil.which("gcc") is None:
        return "needs gcc to build the traced program"
    if not TEST_OBJECT.is_file():
        return f"{TEST_OBJECT} is not built (make test-bpf)"
    return None


@pytest.fixture(scope="module")
def traced_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("traced")
    source = directory / "traced.c"
    source.write_text(PROGRAM)
    binary = directory / "traced"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True, timeout=60)
    return binary


class Traced:
    """One run of the traced program, held until `release()`."""

    def __init__(self, binary: Path, *arguments: object, cpu: int | None = None) -> None:
        command = [str(binary), *map(str, arguments)]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]  # taskset execs: same pid
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.pid = self.process.pid

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()
        assert self.process.wait(timeout=WAIT_S) == 0

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT_S)


@pytest.fixture
def run_traced(traced_program: Path) -> Iterator[Callable[..., Traced]]:
    started: list[Traced] = []

    def start(*arguments: object, cpu: int | None = None) -> Traced:
        traced = Traced(traced_program, *arguments, cpu=cpu)
        started.append(traced)
        return traced

    yield start
    for traced in started:
        traced.kill()


def open_spec(*, ring_bytes: int = 1 << 22, **constants: int) -> ObjectSpec:
    spec = ObjectSpec.open(TEST_OBJECT)
    spec.set_autoload("rejected_by_verifier", False)
    spec.set_map_max_entries("events", ring_bytes)
    for name, value in constants.items():
        spec.set_constant(name, value)
    return spec


def read_until(reader: RingReader | PerfReader, count: int) -> list[bytes | LostSamples]:
    records: list[bytes | LostSamples] = []
    deadline = time.monotonic() + WAIT_S
    while len(records) < count and time.monotonic() < deadline:
        records.extend(reader.poll(10))
    return records


def decode(records: list[bytes | LostSamples]) -> list[tuple[int, int, int, int]]:
    return [RECORD.unpack_from(r) for r in records if isinstance(r, bytes)]


def counter(loaded: LoadedObject, index: int) -> int:
    values = loaded.map("counters").lookup_percpu(struct.pack("<I", index))
    return sum(struct.unpack("<Q", value)[0] for value in values)


def bpf_fds() -> set[str]:
    """Targets of this process's BPF and perf-event fds (anon_inode:bpf-prog, ...)."""
    targets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
        if target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]")):
            targets.add(f"{fd}:{target}")
    return targets


def own_ids(key: str) -> set[int]:
    """prog_id / link_id values of this process's fds, from /proc/self/fdinfo."""
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(f"{key}:"):
                ids.add(int(line.split()[1]))
    return ids


def bpftool_ids(kind: str) -> set[int]:
    output = subprocess.run(
        ["bpftool", "-j", kind, "list"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    return {int(entry["id"]) for entry in json.loads(output or "[]")}


def test_uprobe_records_carry_the_constant_and_arguments_in_order(
    run_traced: Callable[..., Traced], traced_program: Path
) -> None:
    magic = random.getrandbits(64)
    count = 2000
    traced = run_traced("mark", count)
    with open_spec(magic=magic).load() as loaded:
        link = loaded.attach_uprobe("on_marked_call", traced_program, symbol="marked_call")
        assert link.description == "uprobe traced:marked_call pid=all"
        reader = loaded.ring_reader("events")
        traced.release()
        records = decode(read_until(reader, count))
        assert reader.poll(0) == []  # nothing beyond the calls made
        assert counter(loaded, 2) == 0  # no failed submission
    assert records == [(magic, value, traced.pid, MARK) for value in range(count)]


def test_pid_filter_and_retprobe(run_traced: Callable[..., Traced], traced_program: Path) -> None:
    traced = run_traced("mark", 300)
    other = run_traced("mark", 300)
    with open_spec(magic=7).load() as loaded:
        link = loaded.attach_uprobe(
            "on_marked_call", traced_program, symbol="marked_call", retprobe=True, pid=traced.pid
        )
        assert link.description == f"uretprobe traced:marked_call pid={traced.pid}"
        reader = loaded.ring_reader("events")
        other.release()
        traced.release()
        records = decode(read_until(reader, 300))
        time.sleep(0.05)
        records += decode(reader.poll(0))
    # A uretprobe sees the return; the argument register is clobbered by then, so only
    # the pid and the number of calls are checked.
    assert len(records) == 300
    assert {pid for _magic, _value, pid, _kind in records} == {traced.pid}


def file_offset(binary: Path, symbol: str) -> int:
    """Virtual address → file offset through the PT_LOAD segment that holds it."""
    with binary.open("rb") as stream:
        elf = ELFFile(stream)
        table = elf.get_section_by_name(".symtab")
        address = table.get_symbol_by_name(symbol)[0]["st_value"]
        for segment in elf.iter_segments():
            start, size = segment["p_vaddr"], segment["p_filesz"]
            if segment["p_type"] == "PT_LOAD" and start <= address < start + size:
                return int(address - start + segment["p_offset"])
    raise AssertionError(f"{symbol} is in no PT_LOAD segment")


def test_uprobe_by_file_offset_alone(
    run_traced: Callable[..., Traced], traced_program: Path
) -> None:
    offset = file_offset(traced_program, "marked_call")
    traced = run_traced("mark", 50)
    with open_spec(magic=3).load() as loaded:
        link = loaded.attach_uprobe("on_marked_call", traced_program, offset=offset)
        assert link.description == f"uprobe traced:0x{offset:x} pid=all"
        reader = loaded.ring_reader("events")
        traced.release()
        records = decode(read_until(reader, 50))
    assert [value for _magic, value, _pid, _kind in records] == list(range(50))


def test_tp_btf_and_raw_tp_count_the_process_syscalls(run_traced: Callable[..., Traced]) -> None:
    calls = 5000
    traced = run_traced("syscalls", calls)
    with open_spec(target_tgid=traced.pid).load() as loaded:
        assert loaded.attach("count_sys_enter_btf").description == (
            "tp_btf/sys_enter (count_sys_enter_btf)"
        )
        loaded.attach_raw_tracepoint("count_sys_enter_raw", "sys_enter")
        traced.release()
        by_btf, by_raw = counter(loaded, 0), counter(loaded, 1)
    # getppid `calls` times, plus the few syscalls around it (read of stdin, exit)
    assert calls <= by_btf < calls + 50
    assert by_raw == by_btf


TRACEPOINT_SCRIPT = """
import json, os, struct, sys
from pathlib import Path
from ecapture.bpf import ObjectSpec
spec = ObjectSpec.open(Path(sys.argv[1]))
spec.set_autoload("rejected_by_verifier", False)
spec.set_constant("target_tgid", os.getpid())
with spec.load() as loaded:
    auto = loaded.attach("count_getppid")
    for _ in range(100):
        os.getppid()
    auto.close()
    explicit = loaded.attach_tracepoint("count_getppid", "syscalls", "sys_enter_getppid")
    for _ in range(50):
        os.getppid()
    explicit.close()
    for _ in range(20):
        os.getppid()  # detached: not counted
    values = loaded.map("counters").lookup_percpu(struct.pack("<I", 3))
    print(json.dumps({
        "descriptions": [auto.description, explicit.description],
        "count": sum(struct.unpack("<Q", value)[0] for value in values),
    }))
"""


def test_tracepoint_attach_inside_a_private_tracefs_mount(tmp_path: Path) -> None:
    """tracepoint/* needs tracefs; it is mounted only in a private mount namespace
    (never on the host's /sys: docs/kernel.md#tracefs)."""
    if _skip_reason():
        pytest.skip(_skip_reason() or "")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private mount namespace")
    script = tmp_path / "tracepoint.py"
    script.write_text(TRACEPOINT_SCRIPT)
    source = Path(__file__).parents[2] / "src"
    environment = {**os.environ, "PYTHONPATH": f"{source}:{os.environ.get('PYTHONPATH', '')}"}
    command = (
        "mount -t tracefs nodev /sys/kernel/tracing && "
        f'exec "{sys.executable}" "{script}" "{TEST_OBJECT}"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {
        "descriptions": [
            "tracepoint/syscalls/sys_enter_getppid (count_getppid)",
            "tracepoint/syscalls/sys_enter_getppid (count_getppid)",
        ],
        "count": 150,
    }


def test_tracepoint_without_tracefs_names_the_failure() -> None:
    if _skip_reason():
        pytest.skip(_skip_reason() or "")
    if Path("/sys/kernel/tracing/events").exists():
        pytest.skip("tracefs is mounted here")
    with (
        open_spec().load() as loaded,
        pytest.raises(
            BpfError, match=r"attaching tracepoint/syscalls/sys_enter_getppid .*\(errno 2\)"
        ),
    ):
        loaded.attach_tracepoint("count_getppid", "syscalls", "sys_enter_getppid")


def test_close_leaves_no_program_link_or_fd(traced_program: Path) -> None:
    fds_before = bpf_fds()
    loaded = open_spec().load()
    loaded.attach_uprobe("on_marked_call", traced_program, symbol="marked_call")
    loaded.attach("count_sys_enter_btf")
    loaded.attach_raw_tracepoint("count_sys_enter_raw", "sys_enter")
    loaded.ring_reader("events")
    programs, links = own_ids("prog_id"), own_ids("link_id")
    assert len(programs) == 5 and len(links) >= 2  # uprobes are perf-event links or plain fds
    assert programs <= bpftool_ids("prog") and links <= bpftool_ids("link")
    loaded.close()
    loaded.close()  # idempotent
    assert not programs & bpftool_ids("prog")
    assert not links & bpftool_ids("link")
    assert bpf_fds() == fds_before


def test_use_after_close_is_an_error_not_a_crash(traced_program: Path) -> None:
    loaded = open_spec().load()
    link = loaded.attach_uprobe("on_marked_call", traced_program, symbol="marked_call")
    reader = loaded.ring_reader("events")
    table = loaded.map("table")
    link.close()
    link.close()
    loaded.close()
    assert reader.poll(10) == []
    assert reader.fileno() == -1
    reader.close()
    with pytest.raises(BpfError, match="'table' used after its BPF object was closed"):
        table.lookup(bytes(4))
    with pytest.raises(BpfError, match="is closed"):
        loaded.map("table")


def test_close_waits_for_a_poll_on_another_thread() -> None:
    with open_spec().load() as loaded:
        reader = loaded.ring_reader("events")
        results: list[list[bytes]] = []
        poller = threading.Thread(target=lambda: results.append(reader.poll(300)))
        poller.start()
        time.sleep(0.05)  # let the poll block in epoll_wait
        started = time.monotonic()
        reader.close()
        waited = time.monotonic() - started
        poller.join(timeout=WAIT_S)
    assert results == [[]]
    assert waited < 1.0  # bounded by the poll's timeout, not forever
    assert reader.poll(10) == []


def test_failed_attach_leaves_the_object_usable(traced_program: Path) -> None:
    with open_spec().load() as loaded:
        with pytest.raises(BpfError, match=r"attaching uprobe traced:no_such_function pid=all: "):
            loaded.attach_uprobe("on_marked_call", traced_program, symbol="no_such_function")
        with pytest.raises(LibraryNotFound, match=r"/nonexistent/libssl\.so\.3 does not exist"):
            loaded.attach_uprobe("on_marked_call", "/nonexistent/libssl.so.3", symbol="SSL_write")
        with pytest.raises(BpfError, match=r"no program named 'nope'"):
            loaded.attach("nope")
        loaded.attach_uprobe("on_marked_call", traced_program, symbol="marked_call")


def test_failed_load_carries_the_verifier_log_and_closes_everything() -> None:
    fds_before = bpf_fds()
    spec = ObjectSpec.open(TEST_OBJECT)  # rejected_by_verifier stays on
    with pytest.raises(BpfLoadError) as raised:
        spec.load()
    message = str(raised.value)
    assert message.startswith(f"loading BPF object {TEST_OBJECT}: Permission denied (errno 13)")
    assert "prog 'rejected_by_verifier' verifier log" in message
    assert "invalid mem access" in message
    assert bpf_fds() == fds_before
    with pytest.raises(BpfError, match="already loaded or closed"):
        spec.load()


def test_missing_custom_btf_fails_the_load(tmp_path: Path) -> None:
    spec = ObjectSpec.open(TEST_OBJECT, btf_custom_path=str(tmp_path / "absent.btf"))
    spec.set_autoload("rejected_by_verifier", False)
    with pytest.raises(BpfLoadError, match=r"No such file or directory \(errno 2\)"):
        spec.load()


def test_map_update_lookup_delete() -> None:
    with open_spec().load() as loaded:
        table = loaded.map("table")
        assert (table.key_size, table.value_size, table.max_entries) == (4, 8, 16)
        key = struct.pack("<I", 42)
        assert table.lookup(key) is None
        table.update(key, struct.pack("<Q", 99))
        assert table.lookup(key) == struct.pack("<Q", 99)
        table.delete(key)
        assert table.lookup(key) is None
        with pytest.raises(BpfError, match=r"deleting a key from map 'table': .*\(errno 2\)"):
            table.delete(key)
        with pytest.raises(BpfError, match="4-byte keys; got 2 bytes"):
            table.lookup(b"ab")
        with pytest.raises(BpfError, match="not a ring buffer"):
            loaded.ring_reader("table")
        with pytest.raises(BpfError, match=r"map 'perf_events': .*\(ENOTSUPP\) \(errno 524\)"):
            loaded.map("perf_events").lookup(bytes(4))


def test_perf_reader_reports_lost_samples_in_band(
    run_traced: Callable[..., Traced], traced_program: Path
) -> None:
    flood, after = 20000, 10
    # Both runs on CPU 0: the kernel writes the lost-sample record into that CPU's buffer
    # at its next sample once there is room again, i.e. during the second run.
    first = run_traced("mark", flood, cpu=0)
    second = run_traced("mark", after, cpu=0)
    with open_spec(magic=5, use_perf=1).load() as loaded:
        loaded.attach_uprobe("on_marked_call", traced_program, symbol="marked_call")
        # one page per CPU holds ~100 samples: most of the flood is lost before the poll
        reader = loaded.perf_reader("perf_events", pages_per_cpu=1)
        first.release()
        items = reader.poll(10)
        second.release()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            items.extend(reader.poll(10))
            if sum(1 if isinstance(i, bytes) else i.count for i in items) >= flood + after:
                break
    lost = [item for item in items if isinstance(item, LostSamples)]
    assert lost, "a 4 KiB perf buffer cannot hold 20000 samples"
    assert {item.cpu for item in lost} == {0}
    samples = decode(items)
    assert len(samples) + sum(item.count for item in lost) == flood + after
    by_pid = {
        pid: [value for _magic, value, p, _kind in samples if p == pid]
        for pid in (first.pid, second.pid)
    }
    assert by_pid[second.pid] == list(range(after))  # after the gap, in order
    first_values = by_pid[first.pid]
    assert first_values == sorted(first_values) and len(set(first_values)) == len(first_values)
    # the gap is in band: the lost record comes after the flood's samples, before the rest
    position = items.index(lost[0])
    before_gap = decode(items[:position])
    assert all(pid == first.pid for _magic, _value, pid, _kind in before_gap)


@pytest.mark.parametrize(("size", "count"), [(64, 400_000), (16384, 3000)])
def test_ring_reader_throughput(
    run_traced: Callable[..., Traced], traced_program: Path, size: int, count: int
) -> None:
    """Reader alone: the producer fills the ring first, then the reader drains it."""
    traced = run_traced("burst", count, size)
    with open_spec(magic=11, ring_bytes=1 << 26).load() as loaded:
        loaded.attach_uprobe("on_burst", traced_program, symbol="burst")
        reader = loaded.ring_reader("events")
        traced.release()
        records: list[bytes] = []
        started = time.perf_counter()
        deadline = time.monotonic() + WAIT_S
        while len(records) < count and time.monotonic() < deadline:
            records.extend(reader.poll(10))
        elapsed = time.perf_counter() - started
        failed = counter(loaded, 2)
    assert failed == 0
    assert len(records) == count
    assert all(len(record) == size for record in records)
    assert [RECORD.unpack_from(r)[1] for r in records] == list(range(count))
    rate = count / elapsed
    print(
        f"\nring reader, {size}-byte records: {count} in {elapsed * 1e3:.1f} ms = "
        f"{rate / 1e3:.0f}k records/s, {rate * size / 1e9:.2f} GB/s "
        f"({elapsed / count * 1e6:.2f} µs/record; load {os.getloadavg()[0]:.2f})",
        file=sys.stderr,
    )


@pytest.mark.parametrize(
    ("limits", "largest"),
    [({"max_batch": 64}, 64), ({"max_batch_bytes": 64 * 40}, 40)],
)
def test_ring_reader_returns_bounded_batches_and_loses_nothing(
    run_traced: Callable[..., Traced], traced_program: Path, limits: dict[str, int],
    largest: int,
) -> None:
    """A poll stops at max_batch records (or max_batch_bytes); the record that
    ended it is kept, not retried."""
    count = 1000
    traced = run_traced("burst", count, 64)
    with open_spec(magic=12).load() as loaded:
        loaded.attach_uprobe("on_burst", traced_program, symbol="burst")
        reader = loaded.ring_reader("events", **limits)
        traced.release()
        batches: list[list[bytes]] = []
        deadline = time.monotonic() + WAIT_S
        while sum(map(len, batches)) < count and time.monotonic() < deadline:
            batch = reader.poll(10)
            if batch:
                batches.append(batch)
        assert reader.poll(0) == []
    assert max(map(len, batches)) == largest
    records = [record for batch in batches for record in batch]
    assert [RECORD.unpack_from(r)[1] for r in records] == list(range(count))
