"""Section 3: zero-loss throughput of the whole pipeline (probe → ring → reader → decode → JSON
file) fed by the synthetic producer (bench/producer.c): per record size, the highest rate held
for the whole step with 0 lost records and every event in the file, and where it saturates."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from bench import capture_count, procs, system, targets
from bench.context import BenchContext
from bench.native import NativeTools
from bench.report import Table, rate_cell
from bench.tracers import Session, attach, emulated_floor, ours

# Steps in capture events per second (one SSL_write + one SSL_read per record = 2 events).
LADDERS: dict[int, tuple[int, ...]] = {
    64: (25_000, 50_000, 100_000, 200_000, 400_000, 600_000, 800_000, 1_000_000, 1_500_000),
    16384: (5_000, 10_000, 20_000, 40_000, 60_000, 80_000, 120_000, 160_000),
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


def _step(context: BenchContext, size: int, events_per_second: int, seconds: float) -> Step:
    step = Step(size, events_per_second, system.load_average())
    session: Session | None = None
    try:
        with attach(ours(), context.workdir) as session:
            produced = produce(context.tools, context.certificate, size, events_per_second / 2,
                               seconds)
        # Held: at least 97 % of the scheduled records went out (a brief stall of the VM is
        # tolerated; a producer slowed for the whole step is not).
        step.held = produced.records_written >= 0.97 * events_per_second / 2 * produced.seconds
        step.seconds, step.behind_ms = produced.seconds, produced.behind_ms
        step.events_expected = produced.records_written + produced.records_read
        if session.capture is None or not session.capture.exists():
            raise procs.BenchError("ours wrote no capture file")
        capture = capture_count.read_json_capture(session.capture, reassemble=False)
        step.events_captured = capture.data_events_by_pid.get(produced.pid, 0)
        step.lost_records = capture.lost_records
        if not step.held:
            step.verdict = "producer fell behind (the probes slow the traced program)"
        elif step.lost_records:
            reasons = ", ".join(f"{name} {count}" for name, count in capture.lost_by_reason.items())
            step.verdict = f"{step.lost_records} records lost ({reasons})"
        elif step.events_captured < step.events_expected:
            step.verdict = f"{step.events_expected - step.events_captured} events missing"
        else:
            step.verdict = "ok"
    except procs.BenchError as error:
        step.error = str(error)
        step.verdict = "cannot run"
    finally:
        if session is not None and session.capture is not None:
            session.capture.unlink(missing_ok=True)
    return step


def run(context: BenchContext, seconds: float) -> dict[str, Any]:
    outcome: dict[str, Any] = {}
    for size, ladder in LADDERS.items():
        ceiling = producer_ceiling(context.tools, context.certificate, size)
        under_floor = floor_ceiling(context, size)
        steps: list[Step] = []
        for rate in ladder:
            if rate > 0.9 * ceiling:
                break   # beyond what the producer does untraced: it would measure the producer
            step = _step(context, size, rate, seconds)
            context.log(f"  zero-loss {size} B at {rate} events/s: {step.verdict} "
                f"({step.events_captured}/{step.events_expected}, lost {step.lost_records}) "
                f"{step.error or ''}")
            steps.append(step)
            if not step.passed:
                break
        outcome[str(size)] = {"producer_ceiling_events_per_second": ceiling,
                              "producer_under_floor_events_per_second": under_floor,
                              "steps": steps}
    return outcome


def table(outcome: dict[str, Any], seconds: float) -> Table:
    out = Table(f"Zero-loss throughput: synthetic producer (SSL_write/SSL_read over a socketpair), "
                f"ours → JSON file, {seconds:g} s per step",
                ["record", "highest held, 0 lost", "MB/s", "saturates at", "why",
                 "producer alone", "under emulated floor", "load"])
    for size, data in outcome.items():
        steps: list[Step] = data["steps"]
        passed = [step for step in steps if step.passed]
        failed = next((step for step in steps if not step.passed), None)
        best = passed[-1].target_events_per_second if passed else 0
        if failed and failed.error:
            out.notes.append(f"{size} B: cannot run: {failed.error}")
        out.add(f"{size} B", f"{rate_cell(best)} events/s" if best else "none",
                f"{best * int(size) / 1e6:.0f}" if best else "—",
                rate_cell(failed.target_events_per_second) if failed else "not reached",
                failed.verdict if failed else "the next step exceeds 90 % of the producer alone",
                f"{rate_cell(data['producer_ceiling_events_per_second'])} events/s",
                (f"{rate_cell(data['producer_under_floor_events_per_second'])} events/s"
                 if data["producer_under_floor_events_per_second"] else "—"),
                " ".join(f"{step.load_average:.2f}" for step in steps) or "—")
    out.notes.append("an event is one SSL_write or SSL_read of one record; a step passes when "
                     "the producer held its schedule, 0 records were lost and every event is in "
                     "the file")
    return out


def as_json(outcome: dict[str, Any]) -> dict[str, Any]:
    return {size: {"producer_ceiling_events_per_second": data["producer_ceiling_events_per_second"],
                   "producer_under_floor_events_per_second":
                       data["producer_under_floor_events_per_second"],
                   "steps": [asdict(step) | {"passed": step.passed} for step in data["steps"]]}
            for size, data in outcome.items()}
