"""Section 3: zero-loss throughput of the whole pipeline (probe → ring → reader → decode → JSON
lines) fed by the synthetic producer (bench/producer.c): per record size and sink, the highest rate
held for the whole step with 0 lost records and every event delivered, and where it saturates.

Two sinks: a JSON file (as a user would write it) and a TCP connection to bench/sink.c, which
counts the lines and keeps nothing, so that the pipeline is measured apart from this machine's
page cache. How fast the machine writes a fresh file with nothing traced is measured in the same
invocation: on these VMs it is below the JSON of 1 GB/s of payload (docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import capture_count, procs, system, targets
from bench.context import BenchContext
from bench.native import NativeTools
from bench.report import Table, rate_cell
from bench.tracers import OURS, OutputKind, Role, Session, Tracer, attach, emulated_floor, ours

SINKS = ("file", "tcp")
# The file-write reference: this many bytes in blocks of FILE_BLOCK, nothing traced.
FILE_PROBE_BYTES = 1 << 30
FILE_BLOCK = 4 << 20

# Steps in capture events per second (one SSL_write + one SSL_read per record = 2 events).
# 62k events/s of 16 KiB is 1.02 GB/s, the goal; 500k of 64 B its other one.
LADDERS: dict[int, tuple[int, ...]] = {
    64: (25_000, 50_000, 100_000, 200_000, 300_000, 400_000, 500_000, 600_000, 800_000,
         1_000_000, 1_500_000),
    16384: (5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 62_000, 80_000, 120_000, 160_000),
}


@dataclass(frozen=True, slots=True)
class ProducerRun:
    pid: int
    records_written: int
    records_read: int
    seconds: float
    behind_ms: float   # the writer's largest lag behind its schedule


@dataclass(slots=True)
class Step:
    size: int
    sink: str
    target_events_per_second: int
    load_average: float
    events_expected: int = 0
    events_captured: int = 0
    lost_records: int = 0
    held: bool = False
    behind_ms: float = 0.0
    seconds: float = 0.0
    verdict: str = ""
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (self.error is None and self.held and self.lost_records == 0
                and self.events_captured >= self.events_expected > 0)


def produce(tools: NativeTools, certificate: targets.Certificate, size: int,
            records_per_second: float, seconds: float) -> ProducerRun:
    process = procs.spawn([str(tools.producer), str(certificate.cert), str(certificate.key),
                           str(size), f"{records_per_second}", f"{seconds}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired as error:
        raise procs.BenchError("producer did not finish") from error
    finally:
        procs.stop(process)
    try:
        report = json.loads(out)
    except json.JSONDecodeError as error:
        raise procs.BenchError(f"producer failed: {err.decode(errors='replace')[-300:]}") from error
    return ProducerRun(process.pid, int(report["records_written"]), int(report["records_read"]),
                       float(report["seconds"]), float(report["behind_ms"]))


def producer_ceiling(tools: NativeTools, certificate: targets.Certificate, size: int) -> float:
    """Events/s the producer reaches when asked for far more than it can do."""
    run_ = produce(tools, certificate, size, 1e8, 1.0)
    return (run_.records_written + run_.records_read) / run_.seconds


def floor_ceiling(context: BenchContext, size: int) -> float | None:
    """The same under the emulated floor's empty probes: what the probes alone leave."""
    try:
        with attach(emulated_floor(), context.workdir):
            return producer_ceiling(context.tools, context.certificate, size)
    except procs.BenchError as error:
        context.log(f"  emulated floor cannot run: {error}")
        return None


def _tcp_tracer(port: int) -> Tracer:
    return Tracer("ours → tcp sink", Role.OURS,
                  lambda _capture: [str(OURS), "tls", "--format", "json",
                                    "--eventaddr", f"tcp://127.0.0.1:{port}"],
                  ready_marker="ready", output=OutputKind.JSON)


def _counting_sink(context: BenchContext) -> tuple[subprocess.Popen[bytes], int]:
    port_file = context.workdir / "sink.port"
    port_file.unlink(missing_ok=True)
    process = procs.spawn([str(context.tools.sink), str(port_file)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = port_file.read_text() if port_file.exists() else ""
        if text.endswith("\n"):
            return process, int(text)
        if process.poll() is not None:
            break
        time.sleep(0.01)
    procs.stop(process)
    raise procs.BenchError("bench/sink did not start listening")


def _sink_counts(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired as error:
        raise procs.BenchError("bench/sink did not finish") from error
    finally:
        procs.stop(process)
    try:
        counts: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError as error:
        message = err.decode(errors="replace")[-300:]
        raise procs.BenchError(f"bench/sink failed: {message}") from error
    return counts


def _judge(step: Step, produced: ProducerRun, captured: int, lost: int,
           lost_by_reason: dict[str, int]) -> None:
    # Held: at least 97 % of the scheduled records went out (a brief stall of the VM is
    # tolerated; a producer slowed for the whole step is not).
    step.held = (produced.records_written
                 >= 0.97 * step.target_events_per_second / 2 * produced.seconds)
    step.seconds, step.behind_ms = produced.seconds, produced.behind_ms
    step.events_expected = produced.records_written + produced.records_read
    step.events_captured, step.lost_records = captured, lost
    if not step.held:
        step.verdict = "producer fell behind (the probes slow the traced program)"
    elif step.lost_records:
        reasons = ", ".join(f"{name} {count}" for name, count in lost_by_reason.items())
        step.verdict = f"{step.lost_records} records lost ({reasons})"
    elif step.events_captured < step.events_expected:
        step.verdict = f"{step.events_expected - step.events_captured} events missing"
    else:
        step.verdict = "ok"


def _file_step(context: BenchContext, step: Step, seconds: float) -> None:
    session: Session | None = None
    try:
        with attach(ours(), context.workdir) as session:
            produced = produce(context.tools, context.certificate, step.size,
                               step.target_events_per_second / 2, seconds)
        if session.capture is None or not session.capture.exists():
            raise procs.BenchError("ours wrote no capture file")
        capture = capture_count.read_json_capture(session.capture, reassemble=False)
        _judge(step, produced, capture.data_events_by_pid.get(produced.pid, 0),
               capture.lost_records, capture.lost_by_reason)
    finally:
        if session is not None and session.capture is not None:
            session.capture.unlink(missing_ok=True)


def _tcp_step(context: BenchContext, step: Step, seconds: float) -> None:
    sink, port = _counting_sink(context)
    try:
        with attach(_tcp_tracer(port), context.workdir):
            produced = produce(context.tools, context.certificate, step.size,
                               step.target_events_per_second / 2, seconds)
    except BaseException:
        procs.stop(sink)
        raise
    counts = _sink_counts(sink)   # the tool has stopped: the sink saw its end of stream
    _judge(step, produced, int(counts["data_by_pid"].get(str(produced.pid), 0)),
           int(counts["lost_records"]), {k: int(v) for k, v in counts["lost_by_reason"].items()})


def _step(context: BenchContext, size: int, sink: str, events_per_second: int,
          seconds: float) -> Step:
    step = Step(size, sink, events_per_second, system.load_average())
    try:
        (_file_step if sink == "file" else _tcp_step)(context, step, seconds)
    except procs.BenchError as error:
        step.error = str(error)
        step.verdict = "cannot run"
    return step


def file_write_ceiling(workdir: Path) -> float:
    """MB/s at which this machine writes a fresh file (FILE_PROBE_BYTES in FILE_BLOCK writes,
    into the page cache, as the capture does), with nothing traced."""
    path = workdir / "write-ceiling.bin"
    block = b"x" * FILE_BLOCK
    started = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(FILE_PROBE_BYTES // FILE_BLOCK):
            os.write(fd, block)
    finally:
        os.close(fd)
        elapsed = time.monotonic() - started
        path.unlink(missing_ok=True)
    return FILE_PROBE_BYTES / elapsed / 1e6


def run(context: BenchContext, seconds: float) -> dict[str, Any]:
    outcome: dict[str, Any] = {"file_write_mb_per_second": file_write_ceiling(context.workdir),
                               "sizes": {}}
    context.log(f"  zero-loss: this machine writes a fresh file at "
                f"{outcome['file_write_mb_per_second']:.0f} MB/s")
    for size, ladder in LADDERS.items():
        ceiling = producer_ceiling(context.tools, context.certificate, size)
        under_floor = floor_ceiling(context, size)
        by_sink: dict[str, list[Step]] = {}
        for sink in SINKS:
            steps = by_sink[sink] = []
            for rate in ladder:
                if rate > 0.9 * ceiling:
                    break   # beyond what the producer does untraced: it would measure the producer
                step = _step(context, size, sink, rate, seconds)
                context.log(f"  zero-loss {size} B → {sink} at {rate} events/s: {step.verdict} "
                    f"({step.events_captured}/{step.events_expected}, lost {step.lost_records}) "
                    f"{step.error or ''}")
                steps.append(step)
                if not step.passed:
                    break
        outcome["sizes"][str(size)] = {"producer_ceiling_events_per_second": ceiling,
                                       "producer_under_floor_events_per_second": under_floor,
                                       "sinks": by_sink}
    return outcome


def table(outcome: dict[str, Any], seconds: float) -> Table:
    out = Table(f"Zero-loss throughput: synthetic producer (SSL_write/SSL_read over a socketpair), "
                f"ours → JSON file or → TCP counting sink, {seconds:g} s per step",
                ["record → sink", "highest held, 0 lost", "MB/s", "saturates at", "why",
                 "producer alone", "under emulated floor", "load"])
    for size, data in outcome["sizes"].items():
        for sink, steps in data["sinks"].items():
            passed = [step for step in steps if step.passed]
            failed = next((step for step in steps if not step.passed), None)
            best = passed[-1].target_events_per_second if passed else 0
            if failed and failed.error:
                out.notes.append(f"{size} B → {sink}: cannot run: {failed.error}")
            out.add(f"{size} B → {sink}", f"{rate_cell(best)} events/s" if best else "none",
                    f"{best * int(size) / 1e6:.0f}" if best else "—",
                    rate_cell(failed.target_events_per_second) if failed else "not reached",
                    failed.verdict if failed
                    else "the next step exceeds 90 % of the producer alone",
                    f"{rate_cell(data['producer_ceiling_events_per_second'])} events/s",
                    (f"{rate_cell(data['producer_under_floor_events_per_second'])} events/s"
                     if data["producer_under_floor_events_per_second"] else "—"),
                    " ".join(f"{step.load_average:.2f}" for step in steps) or "—")
    out.notes.append("an event is one SSL_write or SSL_read of one record; a step passes when "
                     "the producer held its schedule, 0 records were lost and every event was "
                     "delivered (file: read back; tcp: counted by bench/sink.c, which keeps "
                     "nothing)")
    written = outcome["file_write_mb_per_second"]
    out.notes.append(f"this machine wrote a fresh file at {written:.0f} MB/s with nothing traced "
                     "(1 GiB of 4 MiB writes); a 16 KiB event's JSON line is ~1.34x its payload "
                     "(base64)")
    return out


def as_json(outcome: dict[str, Any]) -> dict[str, Any]:
    return {"file_write_mb_per_second": outcome["file_write_mb_per_second"],
            "sizes": {size: {
                "producer_ceiling_events_per_second": data["producer_ceiling_events_per_second"],
                "producer_under_floor_events_per_second":
                    data["producer_under_floor_events_per_second"],
                "sinks": {sink: [asdict(step) | {"passed": step.passed} for step in steps]
                          for sink, steps in data["sinks"].items()}}
                for size, data in outcome["sizes"].items()}}
