"""`python -m bench [--quick] [--full] [--only workload,fixed-rate,zero-loss,startup]`."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import fixed_rate, native, procs, startup, system, targets, workload, zero_loss
from bench.context import BenchContext
from bench.report import write_json
from bench.tracers import all_tracers

SECTIONS = ("workload", "fixed-rate", "zero-loss", "startup")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round each, shorter runs")
    parser.add_argument("--full", action="store_true",
                        help="zero-loss steps of 30 s (as the issue asks; the default is shorter)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of interleaved runs")
    arguments = parser.parse_args(argv)
    arguments.sections = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = set(arguments.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {SECTIONS}")
    return arguments


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    rounds = arguments.rounds or (1 if arguments.quick else 3)
    seconds = 2.0 if arguments.quick else 4.0
    started = time.monotonic()
    payload: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "load_average_start": system.load_average(),
                               "arguments": vars(arguments)}
    tables = []
    try:
        with tempfile.TemporaryDirectory(prefix="ecapture-bench-") as scratch:
            workdir = Path(scratch)
            tools = native.compile_tools()
            certificate = targets.make_certificate(workdir)
            context = BenchContext(workdir, certificate, tools, rounds, seconds, log)
            tracers, notes = all_tracers()
            payload["notes"] = notes
            for note in notes:
                log(note)
            if "workload" in arguments.sections:
                for scenario in workload.scenarios():
                    scenario_rounds = rounds if scenario.name == "http1" else max(1, rounds - 1)
                    results = workload.run_scenario(context, scenario, tracers, scenario_rounds)
                    tables.append(workload.table(scenario, results, seconds))
                    payload[f"workload_{scenario.name}"] = workload.as_json(results)
            if "fixed-rate" in arguments.sections:
                results_fixed = fixed_rate.run(context)
                tables.append(fixed_rate.table(results_fixed))
                payload["fixed_rate"] = fixed_rate.as_json(results_fixed)
            if "zero-loss" in arguments.sections:
                step = 30.0 if arguments.full else (2.0 if arguments.quick else 4.0)
                results_zero = zero_loss.run(context, step)
                tables.append(zero_loss.table(results_zero, step))
                payload["zero_loss"] = zero_loss.as_json(results_zero)
            if "startup" in arguments.sections:
                results_start = startup.run(context, tracers)
                tables.append(startup.table(results_start))
                payload["startup"] = startup.as_json(results_start)
    except KeyboardInterrupt:
        log("interrupted: stopping every process the bench started")
        return 130
    except procs.BenchError as error:
        log(f"bench failed: {error}")
        return 1
    finally:
        procs.stop_all()
    payload["seconds"] = time.monotonic() - started
    payload["load_average_end"] = system.load_average()
    header = (f"ecapture-py bench: {payload['started']}, load average "
              f"{payload['load_average_start']:.2f} → {payload['load_average_end']:.2f}, "
              f"{payload['seconds']:.0f} s; every ratio is to 'no tracing' in the same round")
    print(header)
    for note in payload["notes"]:
        print(f"  {note}")
    for table in tables:
        print()
        print(table.render())
    payload["tables"] = [table.render() for table in tables]
    path = write_json(payload)
    print(f"\nJSON copy: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
