"""The runs compared in one invocation: no tracing, the two uprobe floors, ours and the peers.

A tracer is data (its command, how it says it is ready, how it stops, what it writes); one
generic `attach` starts it, waits until it is ready and always stops it.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.hook_addresses import LIBSSL, internal_hook_addresses

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / ".venv" / "bin" / "ecapture"
SSLSNIFF = Path("/usr/sbin/sslsniff-bpfcc")


class OutputKind(enum.Enum):
    NONE = "none"        # nothing to count (baseline, floors)
    JSON = "json"        # ours: JSON lines with base64 payloads
    TEXT = "text"        # a peer's human-readable dump


class Role(enum.Enum):
    BASELINE = "baseline"
    FLOOR = "floor"
    OURS = "ours"
    PEER = "peer"


@dataclass(frozen=True, slots=True)
class Tracer:
    name: str
    role: Role
    # Builds argv from the capture file path; None: nothing runs (the baseline).
    command: Callable[[Path], list[str]] | None = None
    ready_marker: str = ""
    output: OutputKind = OutputKind.NONE
    stdout_is_output: bool = False   # the peer prints its capture on stdout
    ready_in_output: bool = False    # its ready marker is in the capture, not in its log
    stop_signal: int = signal.SIGINT
    ready_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Session:
    """One attached tracer: its process, capture file and log while the load runs."""

    tracer: Tracer
    process: subprocess.Popen[bytes] | None
    capture: Path | None
    log: Path | None
    ready_seconds: float = 0.0
    exit_code: int | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


@contextlib.contextmanager
def attach(tracer: Tracer, workdir: Path) -> Iterator[Session]:
    """Start `tracer`, wait for its ready line (raises BenchError with its log tail if it never
    comes), yield, then stop it with its own signal and wait for its exit."""
    if tracer.command is None:
        yield Session(tracer, None, None, None)
        return
    slug = tracer.name.replace(" ", "_")
    capture, log = workdir / f"{slug}.capture", workdir / f"{slug}.log"
    for stale in (capture, log):
        stale.unlink(missing_ok=True)
    env = {**os.environ, **tracer.env}
    argv = tracer.command(capture)
    started = time.monotonic()
    with log.open("wb") as log_sink, contextlib.ExitStack() as files:
        stdout = files.enter_context(capture.open("wb")) if tracer.stdout_is_output else log_sink
        process = procs.spawn(argv, stdout=stdout, stderr=log_sink, env=env)
    session = Session(tracer, process, capture, log)
    try:
        marker_file = capture if tracer.ready_in_output else log
        procs.wait_for_text(marker_file, tracer.ready_marker, tracer.ready_timeout, process, log)
        session.ready_seconds = time.monotonic() - started
        yield session
    finally:
        session.exit_code = procs.stop(process, tracer.stop_signal, grace=60.0)


def _bpftrace(program: str) -> Callable[[Path], list[str]]:
    # BEGIN fires after every probe is attached: its line is the ready signal. --unsafe lets
    # bpftrace 0.17 probe an address inside a stripped library (it cannot check the boundary;
    # the addresses come from a disassembly, see hook_addresses.py).
    script = 'BEGIN { printf("ready\\n"); } ' + program
    return lambda _capture: ["bpftrace", "--unsafe", "-e", script]


def naive_floor() -> Tracer:
    program = (f"uprobe:{LIBSSL}:SSL_write {{}} uprobe:{LIBSSL}:SSL_read {{}} "
               f"uretprobe:{LIBSSL}:SSL_read {{}}")
    return Tracer("naive floor", Role.FLOOR, _bpftrace(program), ready_marker="ready")


def emulated_floor() -> Tracer:
    write, read = internal_hook_addresses()
    program = (f"uprobe:{LIBSSL}:{write:#x} {{}} uprobe:{LIBSSL}:{read:#x} {{}} "
               f"uretprobe:{LIBSSL}:{read:#x} {{}}")
    return Tracer("emulated floor", Role.FLOOR, _bpftrace(program), ready_marker="ready")


def ours(data_path: str = "native") -> Tracer:
    """ecapture tls --format json to a file: the Rust core's data path, or with
    "python" the Python pipeline it replaced (the reference), for the ratio between them."""
    name = "ours" if data_path == "native" else f"ours ({data_path} data path)"
    return Tracer(
        name, Role.OURS,
        lambda capture: [str(OURS), "tls", "--format", "json", "--data-path", data_path,
                         "--eventaddr", str(capture)],
        ready_marker="ready", output=OutputKind.JSON,
    )


def sslsniff() -> Tracer:
    # Unbuffered, so that its header line ("FUNC ...", printed once the probes are attached)
    # reaches the file at once; output to a file, as in docs/performance.md#reference-points.
    return Tracer(
        "sslsniff", Role.PEER,
        lambda _capture: [str(SSLSNIFF), "--no-gnutls", "--no-nss"],
        ready_marker="FUNC", output=OutputKind.TEXT, stdout_is_output=True, ready_in_output=True,
        env={"PYTHONUNBUFFERED": "1"},
    )


def ecapture_peer(binary: str) -> Tracer:
    return Tracer(
        "eCapture", Role.PEER,
        lambda _capture: [binary, "tls", "-m", "text"],
        ready_marker="start", output=OutputKind.TEXT, stdout_is_output=True, ready_timeout=30,
    )


def all_tracers() -> tuple[list[Tracer], list[str]]:
    """The interleaved run order and one line per peer that cannot even be tried."""
    notes: list[str] = []
    tracers = [Tracer("no tracing", Role.BASELINE), naive_floor(), emulated_floor(), ours(),
               ours("python")]
    if SSLSNIFF.exists():
        tracers.append(sslsniff())
    else:
        notes.append(f"sslsniff: {SSLSNIFF} is missing (Debian package bpfcc-tools)")
    binary = os.environ.get("ECAPTURE_BIN")
    if binary and shutil.which(binary):
        tracers.append(ecapture_peer(binary))
    else:
        notes.append("eCapture: ECAPTURE_BIN is unset (set it to an eCapture binary to compare)"
                     if not binary else f"eCapture: ECAPTURE_BIN={binary} is not executable")
    return tracers, notes
