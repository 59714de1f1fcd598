"""Facts read from /proc: load average, CPU seconds and peak RSS of a process."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    """The 1-minute load average (/proc/loadavg, first field)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), proc(5) fields 14 and 15."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()   # comm may hold spaces: split after it
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) in MB, proc(5)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_without_bpf_maps_mb(pid: int) -> float:
    """Current RSS minus the pages of mmapped BPF maps, in MB (proc(5) smaps).

    A BPF ring buffer's data pages are mapped twice into the reader (so a
    record that wraps around reads contiguously): a 64 MiB ring adds 128 MiB
    of kernel-owned pages to VmRSS/VmHWM although the process allocated none
    of them. This is the memory the tool itself uses."""
    total = bpf = 0
    in_bpf_map = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
            in_bpf_map = line.endswith("anon_inode:bpf-map")
        elif fields[0] == "Rss:":
            total += int(fields[1])
            if in_bpf_map:
                bpf += int(fields[1])
    return (total - bpf) / 1024


def children(pid: int) -> list[int]:
    """Direct children of a process (nginx master → worker)."""
    result: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        result.extend(int(child) for child in text)
    return result
