"""A capture module defined only here, with its BPF object tests/bpf/plugin_probe.bpf.c.

The module below registers itself when imported; the test makes it an
`ecapture.modules` entry point (a dist-info directory on PYTHONPATH, as an
installed package would have), then checks that it is listed by `ecapture
--help` and runs end to end through JSON and text output. No file of the
package knows it: what it needs (two readers of two kinds, a decoder per
record kind, its own stats layout, a uprobe by symbol, a program left
unloaded in this mode, its item type's renderers) is declared here.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import msgspec
import pytest

from ecapture.events import Clock
from ecapture.modules.base import Module
from ecapture.modules.parts import (
    AttachStep,
    BpfObject,
    Decoder,
    ProbeSpec,
    Reader,
    ReaderKind,
    StatsLayout,
)
from ecapture.modules.registry import register
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.render import json_renderer, text_renderer
from ecapture.output.text import TextWriter

REPO = Path(__file__).resolve().parents[2]
OBJECT = REPO / "build" / "tests" / "plugin_probe.bpf.o"
# struct plugin_mark: kind, pid, timestamp_ns, value, comm[16]
MARK = struct.Struct("<IIQQ16s")
RING_MARK, PERF_MARK = 0x70, 0x71
PROGRAM_PATH_ENV = "ECAPTURE_PLUGIN_PROGRAM"  # the traced binary, told by the test
MARKS = 6

PROGRAM = r"""
#include <stdio.h>
__attribute__((noinline)) void mark(unsigned long value) { __asm__ volatile("" ::: "memory"); }
int main(void)
{
	char line[8];
	if (!fgets(line, sizeof(line), stdin))  /* wait until the probes are attached */
		return 2;
	for (unsigned long value = 1; value <= 6; value++)
		mark(value * 10 + (value & 1));
	puts("done");
	return 0;
}
"""


class PluginMark(msgspec.Struct, frozen=True):
    timestamp_ns: int
    pid: int
    comm: str
    value: int
    via: str  # "ring" or "perf"


def decode_mark(raw: bytes, clock: Clock) -> PluginMark:
    kind, pid, ts, value, comm = MARK.unpack_from(raw)
    return PluginMark(clock.to_epoch(ts), pid, comm.split(b"\0", 1)[0].decode(), value,
                      "ring" if kind == RING_MARK else "perf")


class MarkEvent(msgspec.Struct):
    type: Literal["plugin_mark"]
    module: str
    ts: int
    pid: int
    tid: None
    comm: str
    uid: None
    value: int
    via: str


@json_renderer(PluginMark)
def _mark_json(writer: JsonLinesWriter, item: PluginMark) -> MarkEvent:
    return MarkEvent("plugin_mark", writer.module, item.timestamp_ns, item.pid, None,
                     item.comm, None, item.value, item.via)


@text_renderer(PluginMark)
def _mark_text(writer: TextWriter, item: PluginMark) -> str:
    return f"{writer.time_text(item.timestamp_ns)} {item.comm} pid {item.pid} mark {item.value}\n"


@register("testprobe")
class PluginProbeModule(Module):
    """Marks of a test program (a module that exists only in the tests)."""

    summary: ClassVar[str] = "test-only: count mark() calls of a test program"
    stats_layout: ClassVar[StatsLayout | None] = StatsLayout(
        "plugin_stats", {0: "marks submitted", 1: "ring full", 2: "perf failed"},
        records=0, ring_full_records=1,
    )
    event_types: ClassVar[tuple[type, ...]] = (PluginMark,)

    def prepare(self) -> None:
        self.program = Path(os.environ[PROGRAM_PATH_ENV])

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (BpfObject(
            OBJECT,
            readers=(Reader("marks", sized_by_mapsize=False),
                     Reader("perf_marks", ReaderKind.PERF, pages_per_cpu=8)),
            programs=frozenset({"plugin_mark"}),
        ),)

    def attach_steps(self) -> Sequence[AttachStep]:
        return (ProbeSpec("plugin_mark", self.program, symbol="mark", label="mark()"),)

    def decoders(self) -> Mapping[int, Decoder]:
        return {RING_MARK: decode_mark, PERF_MARK: decode_mark}

    def summary_counts(self) -> str:
        records = self._pipeline.counters.records if self._pipeline else 0
        return f"{records} records, {records} marks seen"


# -- the test --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which this file is an installed ecapture.modules plugin."""
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF)")
    if not OBJECT.is_file():
        pytest.skip(f"{OBJECT} is missing: run make test-bpf")
    site = tmp_path_factory.mktemp("site")
    info = site / "ecapture_test_plugin-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ecapture-test-plugin\n"
                                   "Version: 0\n")
    (info / "entry_points.txt").write_text(
        f"[ecapture.modules]\ntestprobe = e2e.{Path(__file__).stem}\n")
    program = site / "marks"
    source = site / "marks.c"
    source.write_text(PROGRAM)
    subprocess.run(["gcc", "-O1", "-o", str(program), str(source)], check=True, timeout=60)
    return {**os.environ, "PYTHONPATH": f"{site}:{REPO / 'tests'}",
            PROGRAM_PATH_ENV: str(program)}


def tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecapture", *args]


def test_the_plugin_is_listed_in_help(plugin_env: dict[str, str]) -> None:
    listed = subprocess.run(tool("--help"), env=plugin_env, capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert "testprobe" in listed and "test-only: count mark() calls" in listed, listed


def run_capture(env: dict[str, str], output: Path, *args: str) -> str:
    """Capture while the program makes its marks; ecapture's stderr."""
    capture = subprocess.Popen(
        tool("testprobe", "--eventaddr", str(output), *args), env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert capture.stderr is not None
        stderr = b""
        while b"ready" not in stderr:
            line = capture.stderr.readline()
            assert line, f"ecapture exited {capture.wait()}: {stderr.decode()}"
            stderr += line
        done = subprocess.run([env[PROGRAM_PATH_ENV]], input=b"go\n", capture_output=True,
                              timeout=30, check=True)
        assert done.stdout == b"done\n"
    finally:
        capture.send_signal(2)
        rest = capture.communicate(timeout=20)[1]
    assert capture.returncode == 0, (stderr + rest).decode()
    return (stderr + rest).decode()


def test_the_plugin_runs_through_json_and_text(plugin_env: dict[str, str],
                                                tmp_path: Path) -> None:
    json_file = tmp_path / "marks.jsonl"
    stderr = run_capture(plugin_env, json_file, "--format", "json")
    values = [10 * n + (n & 1) for n in range(1, MARKS + 1)]
    events = [msgspec.json.decode(line) for line in json_file.read_bytes().splitlines()]
    marks = [event for event in events if event["type"] == "plugin_mark"]
    assert sorted(event["value"] for event in marks) == values
    assert {event["via"] for event in marks} == {"ring", "perf"}  # both readers
    assert all(event["module"] == "testprobe" and event["comm"] == "marks" for event in marks)
    assert [event for event in events if event["type"] != "plugin_mark"] == []
    # its own counters and summary wording
    assert f"{MARKS} marks seen" in stderr and f"{MARKS} marks submitted" in stderr, stderr

    text_file = tmp_path / "marks.txt"
    run_capture(plugin_env, text_file, "--format", "text")
    lines = text_file.read_text().splitlines()
    assert sorted(int(line.rsplit(" ", 1)[1]) for line in lines) == values, lines
    assert all(" marks pid " in line for line in lines), lines
