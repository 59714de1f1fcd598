"""Section 2: at a fixed 20k req/s (bench/paced.c, since Debian has no wrk2), the target's
p50/p99 latency and nginx's CPU with and without capture, and the tool's CPU per 1,000 requests.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from bench import capture_count, loads, procs, system, targets
from bench.context import BenchContext
from bench.report import Table, loads_cell
from bench.tracers import OutputKind, Role, Session, Tracer, attach, emulated_floor, ours

RATE = 20_000
CONNECTIONS = 8


@dataclass(slots=True)
class FixedRateResult:
    tracer: str
    round: int
    load_average: float
    requests: int = 0
    seconds: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    nginx_cpu_per_second: float = 0.0
    tool_cpu_seconds: float | None = None
    captured_requests: float | None = None   # request lines found / 2 (each request seen twice)
    lost_records: int | None = None
    error: str | None = None


def _measure(context: BenchContext, tracer: Tracer, server: targets.Server,
             round_number: int) -> FixedRateResult:
    result = FixedRateResult(tracer.name, round_number, system.load_average())
    session: Session | None = None
    try:
        with attach(tracer, context.workdir) as session:
            nginx_before = system.cpu_seconds(server.pid)
            tool_before = system.cpu_seconds(session.pid) if session.pid else 0.0
            paced = loads.paced(context.tools, server.port, RATE, context.seconds, CONNECTIONS)
            nginx_cpu = system.cpu_seconds(server.pid) - nginx_before
            result.nginx_cpu_per_second = nginx_cpu / paced.seconds
            if session.pid:
                result.tool_cpu_seconds = system.cpu_seconds(session.pid) - tool_before
        result.requests, result.seconds = paced.requests, paced.seconds
        result.p50_us, result.p99_us = paced.p50_us, paced.p99_us
        if tracer.output is OutputKind.JSON and session.capture and session.capture.exists():
            capture = capture_count.read_json_capture(session.capture)
            result.captured_requests = capture.request_lines() / 2
            result.lost_records = capture.lost_records
    except procs.BenchError as error:
        result.error = str(error)
    finally:
        if session is not None and session.capture is not None:
            session.capture.unlink(missing_ok=True)
    return result


def run(context: BenchContext) -> list[FixedRateResult]:
    tracers = [Tracer("no tracing", Role.BASELINE), emulated_floor(), ours()]
    results: list[FixedRateResult] = []
    broken: set[str] = set()
    with targets.nginx(context.workdir, context.certificate) as server:
        for round_number in range(1, context.rounds + 1):
            for tracer in tracers:
                if tracer.name in broken:
                    continue
                result = _measure(context, tracer, server, round_number)
                if result.error:
                    broken.add(tracer.name)
                context.log(f"  fixed-rate round {round_number} {tracer.name}: "
                    f"p50 {result.p50_us:.0f} us p99 {result.p99_us:.0f} us "
                    f"nginx CPU {result.nginx_cpu_per_second:.2f} "
                    f"{result.error or ''}")
                results.append(result)
    return results


def table(results: list[FixedRateResult]) -> Table:
    out = Table(f"Fixed rate: {RATE // 1000}k req/s, paced C client (latency from the scheduled "
                f"send time), {CONNECTIONS} keep-alive connections, nginx 1 worker",
                ["run", "req/s held", "p50 µs", "p99 µs", "p50/p99 vs baseline",
                 "nginx CPU (cores)", "vs baseline", "tool CPU s / 1k req", "captured", "load"])
    baseline = [result for result in results if result.tracer == "no tracing" and not result.error]
    base_p50 = statistics.fmean(r.p50_us for r in baseline) if baseline else 0.0
    base_p99 = statistics.fmean(r.p99_us for r in baseline) if baseline else 0.0
    base_cpu = statistics.fmean(r.nginx_cpu_per_second for r in baseline) if baseline else 0.0
    for name in dict.fromkeys(result.tracer for result in results):
        rows = [result for result in results if result.tracer == name]
        good = [result for result in rows if not result.error]
        if not good:
            out.notes.append(f"{name} cannot run: {rows[0].error}")
            continue
        p50 = statistics.fmean(r.p50_us for r in good)
        p99 = statistics.fmean(r.p99_us for r in good)
        cpu = statistics.fmean(r.nginx_cpu_per_second for r in good)
        held = statistics.fmean(r.requests / r.seconds for r in good if r.seconds)
        tool = [r.tool_cpu_seconds / r.captured_requests * 1000 for r in good
                if r.tool_cpu_seconds is not None and r.captured_requests]
        captured = [r.captured_requests / r.requests for r in good
                    if r.captured_requests is not None and r.requests]
        out.add(name, f"{held:.0f}", f"{p50:.0f}", f"{p99:.0f}",
                f"{p50 / base_p50:.2f}/{p99 / base_p99:.2f}" if base_p50 and base_p99 else "—",
                f"{cpu:.3f}", f"{cpu / base_cpu:.2f}" if base_cpu else "—",
                f"{statistics.fmean(tool):.4f}" if tool else "—",
                f"{statistics.fmean(captured):.1%}" if captured else "—",
                loads_cell([r.load_average for r in good]))
    out.notes.append("tool CPU = utime+stime of the capture process during the load, per 1,000 "
                     "requests found (request lines / 2: each request is seen at both ends)")
    return out


def as_json(results: list[FixedRateResult]) -> list[dict[str, Any]]:
    return [asdict(result) for result in results]
