"""What every section of one bench invocation shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.native import NativeTools
from bench.targets import Certificate


@dataclass(frozen=True, slots=True)
class BenchContext:
    workdir: Path                    # scratch directory (captures, logs, server prefixes)
    certificate: Certificate         # self-signed, for every server and the producer
    tools: NativeTools               # the C helpers built for this run
    rounds: int                      # interleaved rounds per comparison
    seconds: float                   # length of one load run
    log: Callable[[str], None]       # progress lines (stderr)
