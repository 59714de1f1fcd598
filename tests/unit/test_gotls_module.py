"""modules/gotls.py without root: flags, targets, the probes it asks for."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from btf_layout import btf_structs as btf_structs_of

from ecapture.config import CaptureModel
from ecapture.errors import ConfigError, DecodeError, LibraryNotFound
from ecapture.events import Clock, Direction, LossReason, Lost
from ecapture.modules.gotls import (
    COOKIE_READ,
    COOKIE_WRITE,
    GO_UNSEEN_EVENT,
    RECORD_GO_UNSEEN,
    GoTlsConfig,
    GoTlsModule,
    UnseenProcessor,
    decode_unseen,
    inspect_go_binary,
    running_go_programs,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from gobuild import SOURCE, VENV_GO, build  # a file of tests/e2e


def test_modes_need_their_files() -> None:
    with pytest.raises(ConfigError, match="-k/--keylogfile"):
        GoTlsConfig(model=CaptureModel.KEYLOG)
    with pytest.raises(ConfigError, match="-w/--pcapfile"):
        GoTlsConfig(model=CaptureModel.PCAP)
    with pytest.raises(ConfigError, match="--kernel-call-limit"):
        GoTlsConfig(kernel_call_limit=0)


def test_not_go_is_refused() -> None:
    with pytest.raises(LibraryNotFound, match="not a Go program"):
        inspect_go_binary(Path("/bin/ls"))


def test_discovery_skips_non_go_processes(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "exe").symlink_to("/bin/ls")
    (proc / "2").mkdir()  # a kernel thread: no exe
    assert running_go_programs(proc) == []


def test_probes_of_a_go_binary() -> None:
    if not VENV_GO.exists():
        pytest.skip(f"no Go toolchain at {VENV_GO}")
    binary = build(VENV_GO, SOURCE, ("-ldflags=-s -w",), {})
    target = inspect_go_binary(binary)
    assert target.version.startswith("go1.") and target.stripped
    module = GoTlsModule(GoTlsConfig(elfpath=str(binary)))
    module.targets.append(target)
    probes = module.probes()
    entries = {p.program: p.offset for p in probes if p.program.endswith("_enter")}
    assert entries["go_write_enter"] == target.write_entry
    assert entries["go_read_enter"] == target.read_entry
    returns = [p for p in probes if p.program == "go_call_return"]
    assert sorted(p.offset for p in returns if p.cookie == COOKIE_READ) == sorted(
        target.read_returns)
    assert sorted(p.offset for p in returns if p.cookie == COOKIE_WRITE) == sorted(
        target.write_returns)
    with binary.open("rb") as stream:
        for offset in (*target.read_returns, *target.write_returns, *target.handshake_returns):
            stream.seek(offset)
            assert stream.read(1) == b"\xc3"  # RET
    keylog = GoTlsModule(GoTlsConfig(elfpath=str(binary), model=CaptureModel.KEYLOG,
                                     keylog_file="/nonexistent/k"))
    keylog.targets.append(target)
    assert [(p.program, p.offset) for p in keylog.probes()] == [
        ("go_write_key_log", target.keylog_entry)]




def test_unseen_record_decodes_and_becomes_an_in_flight_loss() -> None:
    raw = GO_UNSEEN_EVENT.pack(RECORD_GO_UNSEEN, 7, 8, 0, 1000, 321, b"server\0")
    unseen = decode_unseen(raw, Clock(offset_ns=5))
    assert (unseen.pid, unseen.tid, unseen.comm, unseen.nbytes) == (7, 8, "server", 321)
    assert unseen.direction is Direction.RECV and unseen.timestamp_ns == 1005
    (lost,) = UnseenProcessor().feed(unseen)
    assert isinstance(lost, Lost)
    assert (lost.reason, lost.records, lost.bytes, lost.pid) == (LossReason.IN_FLIGHT, 1, 321, 7)
    with pytest.raises(DecodeError):
        decode_unseen(raw[:-1], Clock(offset_ns=0))
    with pytest.raises(DecodeError):
        decode_unseen(GO_UNSEEN_EVENT.pack(41, 7, 8, 0, 1, 1, b""), Clock(offset_ns=0))


def test_unseen_layout_matches_btf() -> None:
    types = btf_structs_of("gotls.bpf.o")
    unseen = types["go_unseen_event"]
    assert unseen["size"] == GO_UNSEEN_EVENT.size
    assert {m["name"]: m["bits_offset"] // 8 for m in unseen["members"]} == {
        "kind": 0, "pid": 4, "tid": 8, "direction": 12, "timestamp_ns": 16, "bytes": 24,
        "comm": 32}
