"""What the kernel side of `ecapture tls` costs per program run, on the judging workload.

`python -m bench.bpf_cost [--rounds 3] [--seconds 4] [--readers skip,json]
    [--workload wrk|producer] [--variant NAME=OBJ ...] [--together NAME=OBJ ...]`

nginx (one worker, TLS, `return 200 "ok"`) + `wrk -t1 -c8` on loopback, as in
bench/workload.py, interleaved per round: no tracing, then each reader. With the kernel's
BPF run-time statistics on (BPF_ENABLE_STATS, held by an fd for the whole invocation, so
another process toggling `kernel.bpf_stats_enabled` cannot switch them off under us), each
program's run_cnt and run_time_ns are read from the reader process's /proc/PID/fdinfo
before and after the load; the difference gives the average ns per run. That average is far
steadier than a throughput ratio on a shared machine, but it still moves with load (cache
misses, interrupts): compare versions in the same invocation or at similar load.

Readers:
  skip  this module's in-process `--serve skip`: tls.bpf.o loaded and attached by ecapture's
        own OpensslModule, and the ring "read" by moving its consumer position to the producer
        position every 10 ms (no record is touched): the kernel side alone.
  json  `ecapture tls --format json --eventaddr FILE` (ecapture refuses /dev/null): the whole
        tool, its output to a scratch file deleted after each run.

  skip:NAME  the skip reader with another build of tls.bpf.o (--variant NAME=OBJ).
  together   every --together build attached at once in one skip reader: each program of
             each build is compared with the first build's in the same run (the attach order
             rotates each round: the build that runs first on a probe hit pays the cache
             misses). Between runs, load noise on this shared machine (±15-30 %) hides changes
             of 5-10 %; within a together run it does not (docs/performance.md#kernel-side-cost).

Every run reports the kernel's `stats` counters (records submitted, lost to a full ring): a
full ring takes a cheaper path through the programs, so avg ns is comparable only between runs
that lost about the same share. A JSON copy goes to bench/results/bpf-cost-*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import mmap
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import loads, native, procs, system, targets
from bench.native import NativeTools
from bench.report import RESULTS, Table

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / ".venv" / "bin" / "ecapture"
PYTHON = ROOT / ".venv" / "bin" / "python"
READERS = ("skip", "json")
SKIP_POLL_S = 0.01
STAT_NAMES = ("records", "ring_full_records", "ring_full_bytes", "truncated_calls",
              "truncated_bytes", "read_faults", "closes_deferred", "closes_lost")

# include/uapi/linux/bpf.h
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_MAP_TYPE_RINGBUF = 27


# ----- kernel statistics -----------------------------------------------------------------


@contextlib.contextmanager
def bpf_stats() -> Iterator[str]:
    """Run-time statistics on for the block: an fd from BPF_ENABLE_STATS (counted by the
    kernel per holder), else the sysctl, restored after. Yields how they were enabled."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint8 * 16)()   # union bpf_attr: enable_stats.type (u32) first
    attr[0] = BPF_STATS_RUN_TIME
    number = SYS_BPF.get(os.uname().machine)
    fd = libc.syscall(number, BPF_ENABLE_STATS, attr, ctypes.sizeof(attr)) if number else -1
    if fd >= 0:
        try:
            yield "BPF_ENABLE_STATS fd"
        finally:
            os.close(fd)
        return
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = sysctl.read_text().strip()
    sysctl.write_text("1")
    try:
        yield "sysctl kernel.bpf_stats_enabled=1"
    finally:
        sysctl.write_text(before)


def _fdinfo(pid: int) -> Iterator[dict[str, str]]:
    """The fdinfo of each BPF object fd the process holds (anon_inode:bpf-prog / bpf-map)."""
    base = Path(f"/proc/{pid}/fd")
    for entry in base.iterdir():
        try:
            target = os.readlink(entry)
            text = Path(f"/proc/{pid}/fdinfo/{entry.name}").read_text()
        except OSError:
            continue   # closed meanwhile
        if not target.startswith("anon_inode:bpf-"):
            continue
        info = {"kind": target.removeprefix("anon_inode:")}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
        yield info


@dataclass(frozen=True, slots=True)
class ProgCounters:
    run_cnt: int
    run_time_ns: int


def program_counters(pid: int) -> dict[int, ProgCounters]:
    """prog_id → (run_cnt, run_time_ns) of every program the process holds."""
    out: dict[int, ProgCounters] = {}
    for info in _fdinfo(pid):
        if info["kind"] == "bpf-prog" and "prog_id" in info:
            out[int(info["prog_id"])] = ProgCounters(int(info.get("run_cnt", 0)),
                                                     int(info.get("run_time_ns", 0)))
    return out


def _bpftool(*argv: str) -> Any:
    result = subprocess.run(["bpftool", "-j", *argv], capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode:
        raise procs.BenchError(f"bpftool {' '.join(argv)}: {result.stderr.strip()[-200:]}")
    return json.loads(result.stdout)


def program_names(ids: Iterator[int] | list[int]) -> dict[int, str]:
    return {prog_id: str(_bpftool("prog", "show", "id", str(prog_id))["name"]) for prog_id in ids}


def stats_map_id(pid: int) -> int | None:
    """The id of the process's per-CPU `stats` map (tls.bpf.o's counters)."""
    for info in _fdinfo(pid):
        if info["kind"] != "bpf-map" or "map_id" not in info:
            continue
        map_id = int(info["map_id"])
        if _bpftool("map", "show", "id", str(map_id)).get("name") == "stats":
            return map_id
    return None


def stats_counters(map_id: int | None) -> dict[str, int]:
    """The `stats` map summed over CPUs, by the names of enum stat_index."""
    if map_id is None:
        return {}
    out: dict[str, int] = {}
    for entry in _bpftool("map", "dump", "id", str(map_id)):
        formatted = entry.get("formatted", entry)
        index = int(formatted["key"]) if not isinstance(formatted["key"], list) else int(
            "".join(byte.removeprefix("0x") for byte in reversed(formatted["key"])), 16)
        total = 0
        for cpu in formatted["values"]:
            value = cpu["value"]
            total += value if isinstance(value, int) else int(
                "".join(byte.removeprefix("0x") for byte in reversed(value)), 16)
        if index < len(STAT_NAMES):
            out[STAT_NAMES[index]] = total
    return out


# ----- the skip reader (runs in its own process: `--serve skip`) --------------------------


class _SkippedRing:
    """A ring buffer "read" by moving its consumer position to its producer position."""

    def __init__(self, fd: int) -> None:
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        # One 8-byte store (docs/performance.md: a split store makes the kernel drop records).
        self._consumer_pos = memoryview(self._consumer).cast("Q")
        self._producer_pos = memoryview(self._producer).cast("Q")

    def skip(self) -> int:
        position = self._producer_pos[0]
        skipped = position - self._consumer_pos[0]
        self._consumer_pos[0] = position
        return skipped

    def close(self) -> None:
        self._consumer_pos.release()
        self._producer_pos.release()
        self._consumer.close()
        self._producer.close()


def _own_bpf_fds(kind: str) -> dict[int, str]:
    """fd → fdinfo text of this process's BPF fds of `kind` (bpf-prog, bpf-map)."""
    out = {}
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(entry) == f"anon_inode:{kind}":
                out[int(entry.name)] = Path(f"/proc/self/fdinfo/{entry.name}").read_text()
    return out


def _prog_ids() -> set[int]:
    return {int(line.split()[1]) for info in _own_bpf_fds("bpf-prog").values()
            for line in info.splitlines() if line.startswith("prog_id:")}


def serve_skip(mapsize_kib: int, object_files: list[str]) -> int:
    """Load and attach `ecapture tls` (text model, every process) once per object file (""
    = the installed tls.bpf.o; several: all attached at once, in this order) and drop every
    record by moving each ring's consumer position to its producer position, until
    SIGINT/SIGTERM. Logs `objects [[prog ids of the first], ...]`, then `ready`."""
    from ecapture.modules.openssl import OpensslModule, TlsConfig

    stop = [False]

    def on_signal(_signum: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    os.setpriority(os.PRIO_PROCESS, 0, 10)   # as ecapture's default --nice 10
    size = mapsize_kib * 1024
    with contextlib.ExitStack() as stack:
        owned: list[list[int]] = []
        for object_file in object_files or [""]:
            attributes = {"object_file": str(Path(object_file).resolve())} if object_file else {}
            variant = type("Variant", (OpensslModule,), attributes)
            module = variant(TlsConfig(mapsize_kib=mapsize_kib))
            before = _prog_ids()
            stack.callback(module.close)
            stack.callback(module.stop)
            stack.callback(module.stop)   # twice: close() does not drain
            module.init([])
            module.start()
            owned.append(sorted(_prog_ids() - before))
        rings = [_SkippedRing(fd) for fd, info in _own_bpf_fds("bpf-map").items()
                 if f"map_type:\t{BPF_MAP_TYPE_RINGBUF}\n" in info
                 and f"max_entries:\t{size}\n" in info]
        if len(rings) != len(owned):
            raise procs.BenchError(f"{len(rings)} rings of --mapsize for {len(owned)} objects")
        for ring in rings:
            stack.callback(ring.close)
        print(f"objects {json.dumps(owned)}", file=sys.stderr, flush=True)
        print("ready", file=sys.stderr, flush=True)
        skipped = 0
        while not stop[0]:
            time.sleep(SKIP_POLL_S)
            skipped += sum(ring.skip() for ring in rings)
        print(f"skipped {skipped} ring bytes", file=sys.stderr, flush=True)
    return 0


# ----- runs --------------------------------------------------------------------------------


@dataclass(slots=True)
class ProgramRun:
    name: str
    run_cnt: int
    run_time_ns: int

    @property
    def avg_ns(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else float("nan")


@dataclass(slots=True)
class Run:
    reader: str
    round: int
    load_before: float
    load_after: float = 0.0
    requests: int = 0
    rate: float = 0.0
    ratio: float | None = None
    programs: list[ProgramRun] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    load: Callable[[], loads.LoadResult]   # one run of the workload
    seconds: float
    workdir: Path
    eventaddr: str | None   # None: a file in workdir, deleted after each run
    mapsize_kib: int
    variants: dict[str, str]   # skip:NAME → the tls.bpf.o build it loads
    together: dict[str, str]   # NAME → a build attached at once with the others (--together)


def together_order(settings: Settings, round_number: int) -> list[tuple[str, str]]:
    """The --together builds in this round's attach order (rotated each round, so that no
    build always runs first on a probe hit)."""
    items = list(settings.together.items())
    shift = (round_number - 1) % len(items) if items else 0
    return items[shift:] + items[:shift]


def reader_command(reader: str, settings: Settings, eventaddr: Path,
                   round_number: int) -> list[str]:
    if reader == "together":
        objects = [arg for _name, path in together_order(settings, round_number)
                   for arg in ("--object", path)]
        return [str(PYTHON), "-m", "bench.bpf_cost", "--serve", "skip",
                "--mapsize", str(settings.mapsize_kib), *objects]
    if reader.startswith("skip"):
        variant = settings.variants.get(reader.removeprefix("skip:"))
        return [str(PYTHON), "-m", "bench.bpf_cost", "--serve", "skip",
                "--mapsize", str(settings.mapsize_kib),
                *(["--object", variant] if variant else [])]
    return [str(OURS), "tls", "--format", "json", "--eventaddr", str(eventaddr),
            "--mapsize", str(settings.mapsize_kib)]


def run_reader(reader: str, round_number: int, settings: Settings) -> Run:
    result = Run(reader, round_number, system.load_average())
    log = settings.workdir / f"{reader.replace(':', '_')}.log"
    eventaddr = Path(settings.eventaddr or settings.workdir / "events.json")
    with log.open("wb") as sink:
        process = procs.spawn(reader_command(reader, settings, eventaddr, round_number),
                              stdout=sink, stderr=sink, cwd=ROOT)
    try:
        procs.wait_for_text(log, "ready", 60, process)
        owner: dict[int, str] = {}   # prog id → its build's name (reader "together")
        if reader == "together":
            line = next(line for line in log.read_text().splitlines()
                        if line.startswith("objects "))
            for (name, _path), ids in zip(together_order(settings, round_number),
                                          json.loads(line.removeprefix("objects ")),
                                          strict=True):
                owner.update(dict.fromkeys(ids, name))
        map_id = stats_map_id(process.pid)
        before, stats_before = program_counters(process.pid), stats_counters(map_id)
        load = settings.load()
        after, stats_after = program_counters(process.pid), stats_counters(map_id)
        names = {prog_id: f"{owner[prog_id]}/{name}" if prog_id in owner else name
                 for prog_id, name in program_names(list(after)).items()}
        result.requests, result.rate = load.requests, load.rate
        for prog_id, counters in sorted(after.items(), key=lambda item: names[item[0]]):
            start = before.get(prog_id, ProgCounters(0, 0))
            result.programs.append(ProgramRun(names[prog_id], counters.run_cnt - start.run_cnt,
                                              counters.run_time_ns - start.run_time_ns))
        result.stats = {name: stats_after.get(name, 0) - stats_before.get(name, 0)
                        for name in stats_after}
    except procs.BenchError as error:
        result.error = str(error)
    finally:
        code = procs.stop(process, signal.SIGINT, grace=60.0)
        if code and result.error is None:
            result.error = f"{reader} exited with {code}: {procs.tail(log)}"
        result.load_after = system.load_average()
        if settings.eventaddr is None:
            eventaddr.unlink(missing_ok=True)   # grows by ~100 MB a second
    return result


def run_baseline(round_number: int, settings: Settings) -> Run:
    result = Run("no tracing", round_number, system.load_average())
    load = settings.load()
    result.requests, result.rate = load.requests, load.rate
    result.load_after = system.load_average()
    return result


def producer_load(tools: NativeTools, certificate: targets.Certificate, size: int, rate: int,
                  seconds: float) -> loads.LoadResult:
    """bench/producer.c: SSL_write of `size` bytes at `rate` records/s over a socketpair, read
    by its second thread; a "request" is one record (one SSL_write, one SSL_read)."""
    result = procs.run([str(tools.producer), str(certificate.cert), str(certificate.key),
                        str(size), str(rate), f"{seconds}"], timeout=seconds + 60)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise procs.BenchError(f"producer failed: {result.stderr[-300:]}") from error
    return loads.LoadResult(int(report["records_read"]), float(report["seconds"]))


def tables(runs: list[Run], title: str, together: list[str]) -> list[Table]:
    good = [run for run in runs if run.error is None]
    readers = list(dict.fromkeys(run.reader for run in good if run.reader != "no tracing"))
    out: list[Table] = []
    summary = Table(title,
                    ["run", "req/s vs baseline (rounds)", "req/s", "records", "ring full",
                     "load before→after"])
    for name in ["no tracing", *readers]:
        rows = [run for run in good if run.reader == name]
        if not rows:
            continue
        ratios = [run.ratio for run in rows if run.ratio is not None]
        summary.add(
            name,
            "1.00" if name == "no tracing" else
            f"{statistics.fmean(ratios):.3f} ({' '.join(f'{r:.2f}' for r in ratios)})",
            f"{statistics.fmean(run.rate for run in rows) / 1e3:.1f}k",
            "—" if name == "no tracing" else str(sum(run.stats.get("records", 0) for run in rows)),
            "—" if name == "no tracing" else str(
                sum(run.stats.get("ring_full_records", 0) for run in rows)),
            " ".join(f"{run.load_before:.1f}→{run.load_after:.1f}" for run in rows),
        )
    out.append(summary)
    for reader in readers:
        rows = [run for run in good if run.reader == reader]
        names = list(dict.fromkeys(p.name for run in rows for p in run.programs))
        table = Table(f"reader {reader}: per program (avg over all rounds; per round in ())",
                      ["program", "run_cnt / request", "avg ns per run", "ns per request"])
        for name in names:
            progs = [p for run in rows for p in run.programs if p.name == name]
            count = sum(p.run_cnt for p in progs)
            if not count:
                continue
            total_ns = sum(p.run_time_ns for p in progs)
            requests = sum(run.requests for run in rows)
            per_round = " ".join(f"{p.avg_ns:.0f}" for p in progs if p.run_cnt)
            table.add(name, f"{count / requests:.2f}", f"{total_ns / count:.0f} ({per_round})",
                      f"{total_ns / requests:.0f}")
        all_ns = sum(p.run_time_ns for run in rows for p in run.programs)
        table.add("(all)", "", "", f"{all_ns / max(1, sum(run.requests for run in rows)):.0f}")
        table.notes.append("run_cnt includes other processes' TLS calls on this shared machine")
        out.append(table)
    if len(readers) > 1:
        out.append(paired(good, readers))
    together_runs = [run for run in good if run.reader == "together"]
    if together_runs:
        out.append(together_table(together_runs, together))
    for run in runs:
        if run.error is not None:
            out[0].notes.append(f"{run.reader} round {run.round} failed: {run.error}")
    return out


def _bpf_ns_per_request(run: Run, program: str | None = None) -> float:
    """Kernel time of our programs per completed request (one program, or all)."""
    total = sum(p.run_time_ns for p in run.programs if program is None or p.name == program)
    return total / run.requests if run.requests else float("nan")


def _ratio_cell(values: list[float]) -> str:
    """Median of per-round ratios (robust to one disturbed round), the mean, the rounds."""
    values = [value for value in values if not math.isnan(value)]
    if not values:
        return "—"
    return (f"{statistics.median(values):.3f} / {statistics.fmean(values):.3f} "
            f"({' '.join(f'{value:.2f}' for value in values)})")


def paired(runs: list[Run], readers: list[str]) -> Table:
    """Each reader against the first one of the same round: the comparison that load
    drift between rounds does not blur. Programs that run less than once per 10 requests
    are left out (too few runs to compare)."""
    first = readers[0]
    table = Table(f"paired with {first} in the same round: median / mean of per-round ratios "
                  "(each round)", ["run", "measure", "ratio to " + first])
    rounds = sorted({run.round for run in runs})
    pairs = []
    for number in rounds:
        base = next((r for r in runs if r.reader == first and r.round == number), None)
        if base is not None and base.requests:
            pairs.append((number, base))
    common = [p.name for p in pairs[0][1].programs
              if p.run_cnt >= 0.1 * pairs[0][1].requests] if pairs else []
    for reader in readers[1:]:
        mine_by_round = {r.round: r for r in runs if r.reader == reader}
        matched = [(mine_by_round[number], base) for number, base in pairs
                   if number in mine_by_round and mine_by_round[number].requests]
        for name in common:
            ratios = []
            for mine, base in matched:
                a = next((p for p in mine.programs if p.name == name), None)
                b = next((p for p in base.programs if p.name == name), None)
                if a and b and a.run_cnt and b.run_cnt:
                    ratios.append(a.avg_ns / b.avg_ns)
            table.add(reader, f"{name} avg ns", _ratio_cell(ratios))
        table.add(reader, "all programs ns/request",
                  _ratio_cell([_bpf_ns_per_request(mine) / _bpf_ns_per_request(base)
                               for mine, base in matched]))
        table.add(reader, "req/s", _ratio_cell([mine.rate / base.rate for mine, base in matched
                                                if base.rate]))
    return table


def _cycle_cell(values: list[float], period: int) -> str:
    """Ratios of rounds whose attach order rotates with `period`: the build that runs first
    on a probe hit pays the cache misses (measured: up to ±12 %), so each full rotation is
    one measurement (its geometric mean); then their mean, range and the rounds."""
    cycles = [math.prod(values[start:start + period]) ** (1 / period)
              for start in range(0, len(values) - period + 1, period)]
    rounds = " ".join(f"{value:.2f}" for value in values)
    if not cycles:
        return f"— (rounds {rounds}: no full rotation)"
    return (f"{statistics.fmean(cycles):.3f} [{min(cycles):.3f}..{max(cycles):.3f}] "
            f"(rounds {rounds})")


def together_table(runs: list[Run], builds: list[str]) -> Table:
    """Builds attached at once: each program of each build against the same program of the
    first build (--together order), per run."""
    first_name = builds[0]
    period = len(builds)
    table = Table(f"builds attached together, each against {first_name} in the same run: mean "
                  f"over full attach-order rotations ({period} rounds each) [their range]",
                  ["build", "program", f"{first_name} avg ns", "ratio"])
    requests = sum(run.requests for run in runs)
    programs = list(dict.fromkeys(p.name.split("/", 1)[1] for run in runs for p in run.programs
                                  if p.name.startswith(f"{first_name}/")))
    for build in builds[1:]:
        for program in programs:
            ratios, base_ns, base_runs = [], 0, 0
            for run in runs:
                by_name = {p.name: p for p in run.programs}
                mine, base = by_name.get(f"{build}/{program}"), by_name.get(
                    f"{first_name}/{program}")
                if mine and base and mine.run_cnt and base.run_cnt:
                    ratios.append(mine.avg_ns / base.avg_ns)
                if base:
                    base_ns += base.run_time_ns
                    base_runs += base.run_cnt
            if base_runs < 0.1 * requests or len(ratios) != len(runs):
                continue   # too rare in this workload to compare
            table.add(build, program, f"{base_ns / base_runs:.0f}", _cycle_cell(ratios, period))
        ratios = []
        for run in runs:
            build_ns = sum(p.run_time_ns for p in run.programs
                           if p.name.startswith(f"{build}/"))
            first_ns = sum(p.run_time_ns for p in run.programs
                           if p.name.startswith(f"{first_name}/"))
            if first_ns:
                ratios.append(build_ns / first_ns)
        table.add(build, "(all programs, ns)", "", _cycle_cell(ratios, period))
    table.notes.append("attach order rotated each round; both builds run on every call, so "
                       "the req/s of this run is not the cost of either alone")
    return table


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bpf_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", choices=["wrk", "producer"], default="wrk",
                        help="wrk: nginx + wrk -t1 -c8 (the judging workload); producer: "
                        "bench/producer.c at --rate records/s of --size bytes")
    parser.add_argument("--size", type=int, default=16384, help="producer: record size")
    parser.add_argument("--rate", type=int, default=20000, help="producer: records/s")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--readers", default=",".join(READERS),
                        help=f"comma-separated, from {', '.join(READERS)}")
    parser.add_argument("--eventaddr", default=None,
                        help="json reader: the file ecapture writes its events to (default: "
                        "a scratch file, deleted after each run)")
    parser.add_argument("--mapsize", type=int, default=65536, help="ring size in KiB")
    parser.add_argument("--label", default="", help="a name for this run in the JSON copy")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OBJECT",
                        help="also run the skip reader with this build of tls.bpf.o (run "
                        "'skip:NAME'), interleaved with the others: an A/B of kernel-side "
                        "changes under the same load; repeatable")
    parser.add_argument("--together", action="append", default=[], metavar="NAME=OBJECT",
                        help="attach these builds of tls.bpf.o all at once in one skip reader "
                        "(run 'together'; attach order rotated each round) and compare their "
                        "programs within the same run: every build sees the same load, so "
                        "the ratios are far steadier than between runs; give two or more")
    parser.add_argument("--serve", choices=["skip"], help=argparse.SUPPRESS)
    parser.add_argument("--object", action="append", default=[], help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    arguments.reader_list = [name.strip() for name in arguments.readers.split(",") if name]
    unknown = set(arguments.reader_list) - set(READERS)
    if unknown:
        parser.error(f"unknown reader(s) {', '.join(sorted(unknown))}")
    arguments.variants = {}
    for item in arguments.variant:
        name, _, path = item.partition("=")
        if not name or not path or not Path(path).is_file():
            parser.error(f"--variant {item!r}: give NAME=PATH of a built tls.bpf.o")
        arguments.variants[name] = str(Path(path).resolve())
        arguments.reader_list.append(f"skip:{name}")
    together: dict[str, str] = {}
    for item in arguments.together:
        name, _, path = item.partition("=")
        if not name or "/" in name or not path or not Path(path).is_file():
            parser.error(f"--together {item!r}: give NAME=PATH of a built tls.bpf.o")
        together[name] = str(Path(path).resolve())
    if len(together) == 1:
        parser.error("--together needs two builds or more")
    arguments.together = together
    if together:
        arguments.reader_list.append("together")
    return arguments


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    if arguments.serve == "skip":
        return serve_skip(arguments.mapsize, arguments.object)
    signal.signal(signal.SIGTERM, lambda _s, _f: (_ for _ in ()).throw(KeyboardInterrupt()))
    payload: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "label": arguments.label, "arguments": vars(arguments),
                               "kernel": os.uname().release}
    runs: list[Run] = []
    try:
        with bpf_stats() as how, tempfile.TemporaryDirectory(prefix="bpf-cost-") as scratch:
            payload["stats_enabled_by"] = how
            workdir = Path(scratch)
            certificate = targets.make_certificate(workdir)
            with contextlib.ExitStack() as stack:
                if arguments.workload == "wrk":
                    server = stack.enter_context(targets.nginx(workdir, certificate))
                    load = functools.partial(loads.wrk, server.port, arguments.seconds)
                    title = f"nginx + wrk -t1 -c8, {arguments.seconds:g} s per run"
                else:
                    load = functools.partial(producer_load, native.compile_tools(), certificate,
                                             arguments.size, arguments.rate, arguments.seconds)
                    title = (f"bench/producer.c, {arguments.size} B records at "
                             f"{arguments.rate}/s, {arguments.seconds:g} s per run "
                             "(a request = one record: SSL_write + SSL_read)")
                payload["title"] = title
                settings = Settings(load, arguments.seconds, workdir, arguments.eventaddr,
                                    arguments.mapsize, arguments.variants, arguments.together)
                for round_number in range(1, arguments.rounds + 1):
                    baseline = run_baseline(round_number, settings)
                    runs.append(baseline)
                    print(f"round {round_number} no tracing: {baseline.rate:.0f} req/s "
                          f"(load {baseline.load_before:.1f})", file=sys.stderr, flush=True)
                    # Alternate the order each round: load drifts within a round.
                    order = arguments.reader_list if round_number % 2 else \
                        arguments.reader_list[::-1]
                    for reader in order:
                        run = run_reader(reader, round_number, settings)
                        if run.error is None and baseline.rate:
                            run.ratio = run.rate / baseline.rate
                        runs.append(run)
                        call = next((p for p in run.programs if p.name == "call_return"), None)
                        print(f"round {round_number} {reader}: "
                              + (run.error or f"{run.rate:.0f} req/s ratio {run.ratio:.3f}, "
                                 f"call_return {call.avg_ns if call else float('nan'):.0f} ns, "
                                 f"ring full {run.stats.get('ring_full_records', 0)}"),
                              file=sys.stderr, flush=True)
    finally:
        procs.stop_all()
    for table in tables(runs, str(payload.get("title", "")), list(arguments.together)):
        print(table.render())
        print()
    payload["runs"] = [asdict(run) | {"programs": [asdict(p) | {"avg_ns": p.avg_ns}
                                                   for p in run.programs]} for run in runs]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bpf-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"JSON copy: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
