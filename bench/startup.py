"""Section 4: start-up and memory. Launch → first captured event, with a Python client loop
started right after the tracer (exec to the first data event in the capture file); launch → the
tracer's ready line; peak RSS (VmHWM) idle and after the wrk workload."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import loads, procs, system, targets
from bench.context import BenchContext
from bench.report import Table, loads_cell
from bench.tracers import ROOT, Role, Tracer, attach

# How a data event starts in each kind of output: ours writes compact JSON (msgspec), sslsniff
# prints "READ/RECV" or "WRITE/SEND" before each dump.
FIRST_EVENT_MARKERS: dict[str, tuple[bytes, ...]] = {
    "ours": (b'"type":"data"', b'"type": "data"'),
    "sslsniff": (b"READ/RECV", b"WRITE/SEND"),
}


@dataclass(slots=True)
class StartupResult:
    tracer: str
    round: int
    load_average: float
    first_event_seconds: float | None = None
    ready_seconds: float | None = None
    rss_idle_mb: float | None = None
    rss_load_mb: float | None = None
    own_rss_load_mb: float | None = None  # RSS after wrk without the mapped BPF maps
    error: str | None = None


def _first_event(tracer: Tracer, server: targets.Server, workdir: Path, markers: tuple[bytes, ...],
                 timeout: float) -> float:
    capture, log = workdir / "startup.capture", workdir / "startup.log"
    capture.unlink(missing_ok=True)
    assert tracer.command is not None
    # As tracers.attach does: only a tracer whose stdout is its output gets the
    # file made here; ecapture creates its --eventaddr file itself (0600) and
    # refuses an existing one others may read.
    with log.open("wb") as log_sink, contextlib.ExitStack() as files:
        stdout = files.enter_context(capture.open("wb")) if tracer.stdout_is_output else log_sink
        started = time.monotonic()
        tool = procs.spawn(tracer.command(capture), stdout=stdout,
                           stderr=log_sink, env={**os.environ, **tracer.env})
    client = procs.spawn([sys.executable, "-m", "bench.python_client", str(server.port),
                          f"{timeout}"], cwd=ROOT)
    try:
        while time.monotonic() - started < timeout:
            head = capture.read_bytes()[: 1 << 20] if capture.exists() else b""
            if any(marker in head for marker in markers):
                return time.monotonic() - started
            if tool.poll() is not None:
                raise procs.BenchError(f"exited with {tool.returncode}: {procs.reason(log)}")
            time.sleep(0.002)
        raise procs.BenchError(f"no event within {timeout:.0f} s: {procs.tail(log)}")
    finally:
        procs.stop(client)
        procs.stop(tool, tracer.stop_signal, grace=30)
        capture.unlink(missing_ok=True)


def _memory(context: BenchContext, tracer: Tracer, server: targets.Server,
            result: StartupResult) -> None:
    with attach(tracer, context.workdir) as session:
        result.ready_seconds = session.ready_seconds
        assert session.pid is not None
        time.sleep(1.0)
        result.rss_idle_mb = system.peak_rss_mb(session.pid)
        loads.wrk(server.port, context.seconds)
        result.rss_load_mb = system.peak_rss_mb(session.pid)
        result.own_rss_load_mb = system.rss_without_bpf_maps_mb(session.pid)
    if session.capture is not None:
        session.capture.unlink(missing_ok=True)


def run(context: BenchContext, tracers: list[Tracer]) -> list[StartupResult]:
    measured = [tracer for tracer in tracers if tracer.role in (Role.OURS, Role.PEER)]
    results: list[StartupResult] = []
    broken: set[str] = set()
    with targets.nginx(context.workdir, context.certificate) as server:
        for round_number in range(1, context.rounds + 1):
            for tracer in measured:
                if tracer.name in broken:
                    continue
                result = StartupResult(tracer.name, round_number, system.load_average())
                try:
                    markers = FIRST_EVENT_MARKERS.get(
                        "ours" if tracer.role is Role.OURS else tracer.name)
                    if markers:
                        result.first_event_seconds = _first_event(
                            tracer, server, context.workdir, markers, tracer.ready_timeout)
                    _memory(context, tracer, server, result)
                except procs.BenchError as error:
                    result.error = str(error)
                    broken.add(tracer.name)
                context.log(f"  startup round {round_number} {tracer.name}: first event "
                    f"{result.first_event_seconds} ready {result.ready_seconds} rss "
                    f"{result.rss_idle_mb}/{result.rss_load_mb} {result.error or ''}")
                results.append(result)
    return results


def _mean(values: list[float | None], pattern: str) -> str:
    present = [value for value in values if value is not None]
    return pattern.format(statistics.fmean(present)) if present else "—"


def table(results: list[StartupResult]) -> Table:
    out = Table("Start-up and memory (launch = exec of the tool; client loop started right after)",
                ["tool", "launch → first event s", "launch → ready s", "peak RSS idle MB",
                 "peak RSS after wrk MB", "RSS after wrk without BPF maps MB", "load"])
    for name in dict.fromkeys(result.tracer for result in results):
        rows = [result for result in results if result.tracer == name]
        good = [result for result in rows if result.error is None]
        if not good:
            out.notes.append(f"{name} cannot run: {rows[0].error}")
            continue
        out.add(name, _mean([r.first_event_seconds for r in good], "{:.3f}"),
                _mean([r.ready_seconds for r in good], "{:.3f}"),
                _mean([r.rss_idle_mb for r in good], "{:.0f}"),
                _mean([r.rss_load_mb for r in good], "{:.0f}"),
                _mean([r.own_rss_load_mb for r in good], "{:.0f}"),
                loads_cell([r.load_average for r in good]))
    out.notes.append("ready = the tool's own ready line (ours: stderr 'ready'; sslsniff: its "
                     "header); RSS = VmHWM of the tool's process; a BPF ring buffer's pages "
                     "are mapped twice into its reader, so ours (64 MiB ring) carries 128 MiB "
                     "of kernel-owned pages in VmHWM: the last column leaves them out")
    return out


def as_json(results: list[StartupResult]) -> list[dict[str, Any]]:
    return [asdict(result) for result in results]

