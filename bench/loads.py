"""Load generators and what they report: wrk (HTTP/1.1), h2load (HTTP/2), a Python client loop
and the paced C client (bench/paced.c) for fixed-rate latency."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.native import NativeTools

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Completed requests in `seconds` (requests the tracer must find twice: client and server)."""

    requests: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class PacedResult:
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int


def wrk(port: int, seconds: float, threads: int = 1, connections: int = 8) -> LoadResult:
    """`wrk -t1 -c8 -dNs` with HTTP/1.1 keep-alive (the judging workload:
    docs/performance.md#judging-workload); more threads and connections for the heavy variant."""
    result = procs.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
                        f"https://127.0.0.1:{port}/"], timeout=seconds + 30)
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", result.stdout)
    if not match:
        raise procs.BenchError(f"wrk printed no count: {(result.stdout + result.stderr)[-300:]}")
    unit = 1e-3 if match.group(3) == "ms" else 1.0
    return LoadResult(int(match.group(1)), float(match.group(2)) * unit)


def wrk_heavy(port: int, seconds: float) -> LoadResult:
    """`wrk -t2 -c100`: two load threads, 100 connections (issue 22's second load)."""
    return wrk(port, seconds, threads=2, connections=100)


def h2load(port: int, seconds: float) -> LoadResult:
    """h2load for `seconds` over 8 connections, 10 streams each; counts its "succeeded"."""
    result = procs.run(
        ["h2load", "-t1", "-c8", "-m10", "-D", f"{max(1, round(seconds))}",
         f"https://127.0.0.1:{port}/"],
        timeout=seconds + 30,
    )
    succeeded = re.search(r"requests: .*?(\d+) succeeded", result.stdout)
    finished = re.search(r"finished in ([\d.]+)(m?s)", result.stdout)
    if not succeeded or not finished:
        raise procs.BenchError(f"h2load printed no count: {result.stdout[-300:]}")
    unit = 1e-3 if finished.group(2) == "ms" else 1.0
    return LoadResult(int(succeeded.group(1)), float(finished.group(1)) * unit)


def python_client(port: int, seconds: float) -> LoadResult:
    result = procs.run([sys.executable, "-m", "bench.python_client", str(port), f"{seconds}"],
                       timeout=seconds + 30, cwd=ROOT)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise procs.BenchError(f"python client failed: {result.stderr[-300:]}") from error
    return LoadResult(int(report["requests"]), float(report["seconds"]))


def paced(tools: NativeTools, port: int, rate: int, seconds: float,
          connections: int = 8) -> PacedResult:
    """The paced C client: latency measured from each request's scheduled send time, so a
    stalled server cannot hide its queueing (no coordinated omission)."""
    argv = [str(tools.paced), "127.0.0.1", str(port), str(rate), f"{seconds}", str(connections)]
    result = procs.run(argv, timeout=seconds + 30)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise procs.BenchError(f"paced client failed: {result.stderr[-300:]}") from error
    return PacedResult(int(report["requests"]), float(report["seconds"]),
                       float(report["p50_us"]), float(report["p99_us"]), int(report["errors"]))
