"""Section 1: the judging workload and its HTTP/2 and Python-client variants.

Per round the tracers run in a fixed interleaved order (baseline, floors, ours, peers) against
one long-running server; each traced rate is divided by the same round's baseline rate.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import capture_count, loads, procs, system, targets
from bench.context import BenchContext
from bench.report import Table, loads_cell, rate_cell, ratio_cell
from bench.tracers import OutputKind, Role, Session, Tracer, attach

ServerFactory = Callable[
    [Path, targets.Certificate], contextlib.AbstractContextManager[targets.Server]
]
LoadFunction = Callable[[int, float], loads.LoadResult]


class CountKind:
    REQUEST_LINE = "request line"      # `GET / HTTP/1.1` in reassembled payloads
    H2_HEADERS = "h2 HEADERS frames"   # client HEADERS frames after the preface


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    server: ServerFactory
    load: LoadFunction
    count: str


@dataclass(slots=True)
class RunResult:
    tracer: str
    round: int
    load_average: float
    requests: int = 0
    rate: float = 0.0
    ratio: float | None = None
    captured: int | None = None
    expected: int | None = None
    lost_records: int | None = None
    lost_bytes: int | None = None
    ready_seconds: float | None = None
    tracer_cpu_seconds: float | None = None
    exit_code: int | None = None
    summary: str = ""
    error: str | None = None


def scenarios() -> list[Scenario]:
    return [
        Scenario("http1", "HTTP/1.1: nginx 1.22 (1 worker, TLS) + wrk -t1 -c8 (keep-alive)",
                 targets.nginx, loads.wrk, CountKind.REQUEST_LINE),
        Scenario("http1-c100", "HTTP/1.1: nginx 1.22 (1 worker, TLS) + wrk -t2 -c100 (keep-alive)",
                 targets.nginx, loads.wrk_heavy, CountKind.REQUEST_LINE),
        Scenario("http2", "HTTP/2: nghttpd + h2load -t1 -c8 -m10 (TLS, h2)",
                 targets.nghttpd, loads.h2load, CountKind.H2_HEADERS),
        Scenario("python", "Python http.client loop over ssl (SSL_read_ex/SSL_write_ex) + nginx",
                 targets.nginx, loads.python_client, CountKind.REQUEST_LINE),
    ]


def count_capture(session: Session, count: str) -> tuple[int | None, int | None, int | None]:
    """(captured, lost records, lost bytes) from the tracer's output file."""
    if session.capture is None or not session.capture.exists():
        return None, None, None
    kind = session.tracer.output
    if kind is OutputKind.JSON:
        capture = capture_count.read_json_capture(session.capture)
        found = (capture.request_lines() if count == CountKind.REQUEST_LINE
                 else capture.h2_request_headers())
        return found, capture.lost_records, capture.lost_bytes
    if kind is OutputKind.TEXT and count == CountKind.REQUEST_LINE:
        return capture_count.count_in_text(session.capture), None, None
    return None, None, None


def run_once(context: BenchContext, tracer: Tracer, scenario: Scenario, server: targets.Server,
             round_number: int) -> RunResult:
    result = RunResult(tracer.name, round_number, system.load_average())
    session: Session | None = None
    try:
        with attach(tracer, context.workdir) as session:
            result.ready_seconds = session.ready_seconds if session.pid else None
            cpu_before = system.cpu_seconds(session.pid) if session.pid else 0.0
            load = scenario.load(server.port, context.seconds)
            if session.pid:
                result.tracer_cpu_seconds = system.cpu_seconds(session.pid) - cpu_before
        result.requests, result.rate = load.requests, load.rate
        result.exit_code = session.exit_code
        if session.log is not None:
            result.summary = procs.tail(session.log, 4)
        if tracer.output is not OutputKind.NONE:
            result.expected = 2 * load.requests
            result.captured, result.lost_records, result.lost_bytes = count_capture(
                session, scenario.count)
    except procs.BenchError as error:
        result.error = str(error)
    finally:
        if session is not None and session.capture is not None:
            session.capture.unlink(missing_ok=True)   # captures grow to GBs
    return result


def run_scenario(context: BenchContext, scenario: Scenario, tracers: list[Tracer],
                 rounds: int) -> list[RunResult]:
    results: list[RunResult] = []
    broken: dict[str, str] = {}   # a tracer that could not start is not retried
    with scenario.server(context.workdir, context.certificate) as server:
        for round_number in range(1, rounds + 1):
            baseline_rate: float | None = None
            for tracer in tracers:
                if tracer.name in broken:
                    continue
                result = run_once(context, tracer, scenario, server, round_number)
                if tracer.role is Role.BASELINE and result.error is None:
                    baseline_rate = result.rate
                if result.error is None and baseline_rate:
                    result.ratio = result.rate / baseline_rate
                if result.error is not None and tracer.role is not Role.BASELINE:
                    broken[tracer.name] = result.error
                context.log(f"  {scenario.name} round {round_number} {tracer.name}: "
                    + (f"{result.rate:.0f} req/s ratio {result.ratio or 0:.3f} "
                       f"captured {result.captured}/{result.expected} lost {result.lost_records}"
                       if result.error is None else f"cannot run: {result.error}"))
                results.append(result)
    return results


def table(scenario: Scenario, results: list[RunResult], seconds: float) -> Table:
    out = Table(f"{scenario.title}, {seconds:g} s per run",
                ["run", "req/s vs baseline (rounds)", "req/s", "captured/expected", "lost",
                 "tool CPU s", "load"])
    names = list(dict.fromkeys(result.tracer for result in results))
    for name in names:
        rows = [result for result in results if result.tracer == name]
        good = [result for result in rows if result.error is None]
        if not good:
            out.notes.append(f"{name} cannot run: {rows[0].error}")
            continue
        captured = [result for result in good if result.captured is not None and result.expected]
        captured_cell = "—"
        if captured:
            found = sum(result.captured or 0 for result in captured)
            expected = sum(result.expected or 0 for result in captured)
            captured_cell = f"{found / expected:.1%} ({found}/{expected})"
        lost = [result.lost_records for result in good if result.lost_records is not None]
        cpu = [result.tracer_cpu_seconds for result in good
               if result.tracer_cpu_seconds is not None]
        out.add(
            name,
            "1.00" if name == "no tracing" else ratio_cell([result.ratio for result in good]),
            rate_cell(statistics.fmean(result.rate for result in good)),
            captured_cell,
            str(sum(lost)) if lost else "—",
            f"{statistics.fmean(cpu):.2f}" if cpu else "—",
            loads_cell([result.load_average for result in good]),
        )
    if scenario.count == CountKind.H2_HEADERS:
        out.notes.append("HTTP/2 count: client HEADERS frames parsed from reassembled streams that "
                         "start with the client preface; expected = 2 x h2load's 'succeeded'. "
                         "Text peers cannot be counted this way (—).")
    else:
        out.notes.append("expected = 2 x completed requests (client write + server read); "
                         "requests in flight when the load stops can push it past 100 %.")
    return out


def as_json(results: list[RunResult]) -> list[dict[str, Any]]:
    return [asdict(result) for result in results]
