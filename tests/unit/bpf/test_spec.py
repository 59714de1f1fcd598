"""ObjectSpec without the kernel: BTF .rodata lookup, constants, error messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecapture.bpf import ObjectSpec
from ecapture.errors import BpfError, ConfigError

TEST_OBJECT = Path(__file__).parents[3] / "build" / "tests" / "wrapper_test.bpf.o"


@pytest.fixture
def spec() -> Iterator[ObjectSpec]:
    if not TEST_OBJECT.is_file():
        pytest.skip(f"{TEST_OBJECT} is not built (make test-bpf)")
    opened = ObjectSpec.open(TEST_OBJECT)
    yield opened
    opened.close()


def test_rodata_constants_have_btf_offsets_and_sizes(spec: ObjectSpec) -> None:
    # tests/bpf/wrapper_test.bpf.c: __u64 magic; __u32 use_perf; __u32 target_tgid
    found = {name: (c.offset, c.size) for name, c in spec.constants().items()}
    assert found == {"magic": (0, 8), "use_perf": (8, 4), "target_tgid": (12, 4)}


def test_set_constant_packs_little_endian_at_its_offset(spec: ObjectSpec) -> None:
    spec.set_constant("magic", 0x1122334455667788)
    spec.set_constant("target_tgid", 4321)
    spec.set_constant("use_perf", b"\x01\x00\x00\x00")
    assert spec.constant_bytes("magic") == bytes.fromhex("8877665544332211")
    assert spec.constant_bytes("target_tgid") == (4321).to_bytes(4, "little")
    assert spec.constant_bytes("use_perf") == b"\x01\x00\x00\x00"


def test_negative_int_is_twos_complement(spec: ObjectSpec) -> None:
    spec.set_constant("target_tgid", -1)
    assert spec.constant_bytes("target_tgid") == b"\xff\xff\xff\xff"


def test_unknown_constant_names_it_and_the_known_ones(spec: ObjectSpec) -> None:
    with pytest.raises(BpfError, match=r"no constant 'target_pid'.*magic, target_tgid, use_perf"):
        spec.set_constant("target_pid", 1)


def test_value_that_does_not_fit_names_the_constant(spec: ObjectSpec) -> None:
    with pytest.raises(ConfigError, match=r"'use_perf' \(4 bytes\) cannot hold 4294967296"):
        spec.set_constant("use_perf", 1 << 32)
    with pytest.raises(ConfigError, match=r"'magic' is 8 bytes; got 4 bytes"):
        spec.set_constant("magic", b"abcd")


def test_program_names_in_object_order(spec: ObjectSpec) -> None:
    assert spec.program_names() == [
        "on_marked_call",
        "on_burst",
        "count_sys_enter_btf",
        "count_sys_enter_raw",
        "count_getppid",
        "rejected_by_verifier",
    ]


def test_unknown_program_and_map_are_named(spec: ObjectSpec) -> None:
    with pytest.raises(BpfError, match=r"no program named 'nope' \(it has: on_marked_call, "):
        spec.set_autoload("nope", False)
    with pytest.raises(BpfError, match=r"no map named 'nope'"):
        spec.set_map_max_entries("nope", 4096)
    spec.set_autoload("rejected_by_verifier", False)
    spec.set_map_max_entries("events", 1 << 16)


def test_spec_is_unusable_after_close_and_close_is_idempotent(spec: ObjectSpec) -> None:
    spec.close()
    spec.close()
    with pytest.raises(BpfError, match="already loaded or closed"):
        spec.program_names()


def test_missing_object_file_says_how_to_build_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.bpf.o"
    with pytest.raises(BpfError, match=rf"BPF object file {missing} does not exist.*make bpf"):
        ObjectSpec.open(missing)


def test_file_that_is_not_elf_carries_libbpf_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bpf.o"
    garbage.write_bytes(b"not an ELF file at all" * 10)
    with pytest.raises(BpfError, match=r"opening BPF object .*garbage\.bpf\.o: .*\(errno \d+\)"):
        ObjectSpec.open(garbage)


def test_constant_bytes_reads_back_initial_zeroes(spec: ObjectSpec) -> None:
    assert spec.constant_bytes("magic") == bytes(8)


def test_libbpf_messages_reach_python_logging_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    if not TEST_OBJECT.is_file():
        pytest.skip(f"{TEST_OBJECT} is not built (make test-bpf)")
    with caplog.at_level(logging.DEBUG, logger="ecapture.bpf.libbpf"):
        ObjectSpec.open(TEST_OBJECT).close()
    messages = [r.getMessage() for r in caplog.records if r.name == "ecapture.bpf.libbpf"]
    assert any(m.startswith("libbpf: ") and "wrapper_test" in m for m in messages), messages
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name.startswith("ecapture"))


def test_libbpf_stays_quiet_without_debug(caplog: pytest.LogCaptureFixture) -> None:
    if not TEST_OBJECT.is_file():
        pytest.skip(f"{TEST_OBJECT} is not built (make test-bpf)")
    with caplog.at_level(logging.INFO):
        ObjectSpec.open(TEST_OBJECT).close()
    assert not [r for r in caplog.records if r.name == "ecapture.bpf.libbpf"]
