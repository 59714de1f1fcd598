"""Run `ecapture tls --format json` around some traffic and read what it wrote.

    with capture(tool, tmp_path, "--probe-placement", "exported") as running:
        run_client(curl_argv(url))
    result = running.result            # events, exit code, stderr text
    hits = find_marker(result.events, marker)

`capture` waits for the `ready` line (the tool logs it once every probe is
attached), then stops the tool with SIGINT (or SIGTERM) when the block ends;
a tool that does not stop in time is killed and the test fails. Reassembly
follows the JSON contract: the payloads of "data" events with the same
(pid, conn_id, direction), concatenated in file order.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TLS_OBJECT = REPO_ROOT / "src" / "ecapture" / "objects" / "tls.bpf.o"
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
FAIL_TIMEOUT_S = 20.0
READY = re.compile(r"\bready\b", re.IGNORECASE)
ERROR_LINE = re.compile(r"^ecapture: error: \S.*$")

Event = dict[str, Any]


class CaptureError(AssertionError):
    """ecapture did not start, stop or write what the contract says."""


@dataclass(frozen=True, slots=True)
class Ecapture:
    """How to start the tool: the venv's console script, else `python -m ecapture`."""

    argv: tuple[str, ...]

    @classmethod
    def find(cls) -> Ecapture:
        script = Path(sys.executable).parent / "ecapture"
        if script.exists():
            return cls((str(script),))
        return cls((sys.executable, "-m", "ecapture"))

    def command(self, *args: str) -> list[str]:
        return [*self.argv, *args]


@dataclass(frozen=True, slots=True)
class ToolRun:
    exit_code: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The one `ecapture: error: ...` line a failed start must print, checked."""
        if self.exit_code == 0:
            raise CaptureError(f"expected a failure, got exit 0; stderr:\n{self.stderr}")
        if "Traceback" in self.stderr:
            raise CaptureError(f"a traceback instead of one error line:\n{self.stderr}")
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if len(lines) != 1 or not ERROR_LINE.match(lines[0]):
            raise CaptureError(f"expected one 'ecapture: error: ...' line, got:\n{self.stderr}")
        return lines[0]


@dataclass(frozen=True, slots=True)
class CaptureResult:
    events: list[Event]
    exit_code: int
    stderr: str
    events_path: Path


@dataclass(slots=True)
class RunningCapture:
    process: subprocess.Popen[bytes]
    events_path: Path
    stderr_path: Path
    result: CaptureResult | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        return self.stderr_path.read_bytes().decode(errors="replace")

    def finished(self) -> CaptureResult:
        if self.result is None:
            raise CaptureError("the capture has not stopped yet")
        return self.result


def read_events(path: Path) -> list[Event]:
    """Every line of a JSON-lines file as an object; anything else fails the test."""
    events: list[Event] = []
    if not path.exists():
        return events
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            raise CaptureError(f"{path}:{number} is not JSON ({error}): {line[:200]!r}") from error
        if not isinstance(event, dict):
            raise CaptureError(f"{path}:{number} is not a JSON object: {line[:200]!r}")
        events.append(event)
    return events


def _wait_ready(running: RunningCapture) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if READY.search(running.stderr_text()):
            return
        if running.process.poll() is not None:
            raise CaptureError(
                f"ecapture exited with {running.process.returncode} before it was ready:\n"
                f"{running.stderr_text()}"
            )
        time.sleep(0.05)
    raise CaptureError(f"ecapture not ready after {READY_TIMEOUT_S} s:\n{running.stderr_text()}")


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def capture(
    tool: Ecapture,
    directory: Path,
    *args: str,
    stop_signal: signal.Signals = signal.SIGINT,
    module: str = "tls",
) -> Iterator[RunningCapture]:
    """`ecapture MODULE --format json --eventaddr FILE ARGS...` while the block runs."""
    directory.mkdir(parents=True, exist_ok=True)
    events_path = directory / "events.jsonl"
    stderr_path = directory / "ecapture.stderr"
    stdout_path = directory / "ecapture.stdout"
    argv = tool.command(module, "--format", "json", "--eventaddr", str(events_path), *args)
    with stderr_path.open("wb") as stderr_file, stdout_path.open("wb") as stdout_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout_file, stderr=stderr_file
        )
    running = RunningCapture(process, events_path, stderr_path)
    try:
        _wait_ready(running)
        yield running
    except BaseException:
        _kill(process)
        raise
    process.send_signal(stop_signal)
    try:
        exit_code = process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise CaptureError(
            f"ecapture did not stop within {STOP_TIMEOUT_S} s of {stop_signal.name}:\n"
            f"{running.stderr_text()}"
        ) from None
    running.result = CaptureResult(
        read_events(events_path), exit_code, running.stderr_text(), events_path
    )


def run_tool(
    tool: Ecapture,
    *args: str,
    prefix: Sequence[str] = (),
    timeout: float = FAIL_TIMEOUT_S,
) -> ToolRun:
    """Run ecapture expected to exit by itself (a failed start); killed after `timeout`."""
    process = subprocess.Popen(
        [*prefix, *tool.command(*args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill(process)
        raise CaptureError(f"ecapture {' '.join(args)} kept running for {timeout} s") from None
    return ToolRun(
        process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


# -- reassembly ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamKey:
    pid: int
    conn_id: int
    direction: str


@dataclass(slots=True)
class Stream:
    """One direction of one connection in one process, as the capture saw it."""

    key: StreamKey
    data: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)

    def count(self, marker: bytes) -> int:
        return bytes(self.data).count(marker)


def payload(event: Event) -> bytes:
    return base64.b64decode(event["payload_b64"], validate=True)


def data_events(events: Sequence[Event]) -> list[Event]:
    return [event for event in events if event.get("type") == "data"]


def streams(events: Sequence[Event]) -> dict[StreamKey, Stream]:
    """Reassemble every direction of every connection, in file order."""
    found: dict[StreamKey, Stream] = {}
    for event in data_events(events):
        key = StreamKey(event["pid"], event["conn_id"], event["direction"])
        stream = found.setdefault(key, Stream(key))
        stream.data += payload(event)
        stream.events.append(event)
    return found


def find_marker(events: Sequence[Event], marker: bytes) -> list[Stream]:
    """The reassembled streams that contain `marker` (a stream may hold it twice)."""
    return [stream for stream in streams(events).values() if marker in stream.data]


def streams_of(events: Sequence[Event], pid: int, direction: str) -> list[Stream]:
    return [
        stream
        for key, stream in streams(events).items()
        if key.pid == pid and key.direction == direction
    ]


# -- contract checks ----------------------------------------------------------

COMMON_KEYS = {"type", "module", "ts", "pid", "tid", "comm", "uid"}
DATA_KEYS = COMMON_KEYS | {
    "fd", "conn_id", "direction", "src", "dst", "len", "offset", "truncated", "payload_b64",
}
ENDPOINT = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):\d{1,5}$")


def contract_problems(events: Sequence[Event]) -> list[str]:
    """What in `events` breaks the JSON contract (keys, types, chunk offsets)."""
    problems: list[str] = []
    open_calls: dict[StreamKey, tuple[int, int]] = {}  # key -> (call len, next offset)
    for index, event in enumerate(events):
        missing = COMMON_KEYS - event.keys()
        if missing:
            problems.append(f"event {index} lacks {sorted(missing)}: {event}")
            continue
        if event["type"] != "data":
            continue
        missing = DATA_KEYS - event.keys()
        if missing:
            problems.append(f"data event {index} lacks {sorted(missing)}")
            continue
        if event["direction"] not in ("send", "recv"):
            problems.append(f"data event {index}: direction {event['direction']!r}")
        for side in ("src", "dst"):
            if event[side] is not None and not ENDPOINT.match(event[side]):
                problems.append(f"data event {index}: {side} {event[side]!r} is not ip:port")
        size = len(payload(event))
        key = StreamKey(event["pid"], event["conn_id"], event["direction"])
        expected = open_calls.pop(key, None)
        if event["offset"] == 0:
            if expected is not None:
                problems.append(f"data event {index}: a new call before the last one ended")
        elif expected is None or expected != (event["len"], event["offset"]):
            problems.append(
                f"data event {index}: chunk at offset {event['offset']} of a {event['len']}-byte"
                f" call does not follow {expected}"
            )
        end = event["offset"] + size
        if end > event["len"]:
            problems.append(f"data event {index}: payload ends at {end} > len {event['len']}")
        elif end < event["len"] and not event["truncated"]:
            open_calls[key] = (event["len"], end)
    problems += [f"call of {key} ended early (len, next offset) = {state}"
                 for key, state in open_calls.items()]
    return problems


# -- BPF objects in the kernel ------------------------------------------------


def bpftool_json(*args: str) -> list[dict[str, Any]]:
    completed = subprocess.run(
        ["bpftool", "-j", *args], capture_output=True, timeout=30, check=True
    )
    listed = json.loads(completed.stdout or b"[]")
    return listed if isinstance(listed, list) else []


def loaded_program_ids() -> set[int]:
    return {int(program["id"]) for program in bpftool_json("prog", "list")}


def loaded_link_ids() -> set[int]:
    return {int(link["id"]) for link in bpftool_json("link", "list")}


def programs_held_by(pid: int) -> set[int]:
    """Ids of the BPF programs that `pid` holds an fd of (its own or through a link).

    /proc/PID/fdinfo/FD of a BPF program or link fd has a `prog_id:` line
    (kernel/bpf/syscall.c, bpf_prog_show_fdinfo / bpf_link_show_fdinfo).
    """
    held: set[int] = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except (FileNotFoundError, PermissionError):
            continue
        held |= {int(value) for value in re.findall(r"^prog_id:\s*(\d+)", text, re.MULTILINE)}
    return held


def wait_until_gone(program_ids: set[int], timeout: float = 5.0) -> tuple[set[int], set[int]]:
    """(programs, links) of `program_ids` still in the kernel once both are empty or
    `timeout` passed: a closed uprobe link is freed after an RCU grace period."""
    deadline = time.monotonic() + timeout
    while True:
        programs = program_ids & loaded_program_ids()
        links = links_of_programs(program_ids)
        if not (programs or links) or time.monotonic() > deadline:
            return programs, links
        time.sleep(0.1)


def links_of_programs(program_ids: set[int]) -> set[int]:
    """Ids of the BPF links still attaching any of `program_ids`."""
    return {
        int(link["id"])
        for link in bpftool_json("link", "list")
        if int(link.get("prog_id", -1)) in program_ids
    }


def our_program_names(source: Path = REPO_ROOT / "bpf" / "tls.bpf.c") -> set[str]:
    """Names of the programs in `source`: the C function after each SEC("...")
    (BPF_KPROBE(name) included)."""
    if not source.exists():
        return set()
    pattern = r'SEC\("[^"]*"\)\s*int\s+(?:BPF_K(?:RET)?PROBE\(\s*)?(\w+)'
    return set(re.findall(pattern, source.read_text()))


def loaded_programs_named(names: set[str]) -> set[int]:
    """Ids of loaded programs with one of `names`. The kernel keeps
    BPF_OBJ_NAME_LEN - 1 = 15 bytes of a name; bpftool shows the whole one from BTF."""
    short = {name[:15] for name in names}
    return {
        int(program["id"])
        for program in bpftool_json("prog", "list")
        if str(program.get("name", ""))[:15] in short
    }


# -- assertions shared by the capture tests ----------------------------------


def assert_clean_stop(result: CaptureResult, pids: Collection[int] = ()) -> None:
    """Exit 0, no traceback, the events of `pids` well-formed and nothing of theirs lost.

    The tool sees every process on the machine; a benchmark running beside the
    tests may fill the ring with its own records. Losses named for other pids
    are theirs; a loss named for no pid counts against us unless such a
    foreign flood is evident. With no `pids`, every event and loss counts.
    """
    assert result.exit_code == 0, f"ecapture exited {result.exit_code}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    ours = [event for event in result.events if not pids or event.get("pid") in pids]
    assert contract_problems(ours) == []
    lost = [event for event in result.events if event["type"] == "lost"]
    foreign = any(event.get("pid") not in (None, *pids) for event in lost) if pids else False
    counted = [event for event in lost if event.get("pid") is None and not foreign]
    counted += [event for event in lost if event.get("pid") is not None and event in ours]
    assert counted == [], f"lost events: {counted}"


def only_stream(events: Sequence[Event], marker: bytes, pid: int, direction: str) -> Stream:
    """The one stream of `pid` in `direction` that holds `marker`."""
    matching = [
        stream
        for stream in find_marker(events, marker)
        if stream.key.pid == pid and stream.key.direction == direction
    ]
    seen = sorted({(s.key.pid, s.key.direction) for s in find_marker(events, marker)})
    assert len(matching) == 1, f"{marker!r}: {len(matching)} {direction} streams of {pid}; {seen=}"
    return matching[0]


def marker_holders(events: Sequence[Event], marker: bytes) -> set[tuple[int, str]]:
    """(pid, direction) of every stream that holds `marker`."""
    return {(stream.key.pid, stream.key.direction) for stream in find_marker(events, marker)}


def assert_stream_identity(
    stream: Stream, *, comm: str, server_port: int, client_side: bool, fd: int | None = None
) -> str:
    """Every event of `stream`: comm, fd, and the server end on 127.0.0.1:server_port.

    src is who sent the bytes, dst who got them; returns the client's ip:port.
    """
    server_end = f"127.0.0.1:{server_port}"
    client_ends: set[str] = set()
    for event in stream.events:
        assert event["comm"] == comm, event
        assert event["fd"] > 0, event
        if fd is not None:
            assert event["fd"] == fd, event
        sent = event["direction"] == "send"
        server_is_src = sent != client_side  # the server sends what the client receives
        server, client = (
            (event["src"], event["dst"]) if server_is_src else (event["dst"], event["src"])
        )
        assert server == server_end, event
        assert client is not None and client.startswith("127.0.0.1:"), event
        assert client != server_end, event
        client_ends.add(client)
    assert len(client_ends) == 1, client_ends
    return client_ends.pop()
