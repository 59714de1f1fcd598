"""The bench's C helpers, compiled at bench time into build/bench/ (never committed binaries).
They need gcc and OpenSSL's headers (Debian's libssl-dev)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bench import procs

SOURCES = Path(__file__).resolve().parent
BUILD = SOURCES.parent / "build" / "bench"


@dataclass(frozen=True, slots=True)
class NativeTools:
    producer: Path   # bench/producer.c: paced SSL_write/SSL_read over a socketpair
    paced: Path      # bench/paced.c: fixed-rate HTTP/1.1 client
    sink: Path       # bench/sink.c: counting JSON-lines sink on TCP


def _compiler() -> str:
    """gcc as the issue asks; clang (already a build dependency for the BPF objects) otherwise."""
    for name in ("gcc", "clang", "cc"):
        if shutil.which(name):
            return name
    raise procs.BenchError("no C compiler (gcc or clang) to build bench/*.c")


def compile_tools() -> NativeTools:
    BUILD.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in ("producer", "paced", "sink"):
        source, binary = SOURCES / f"{name}.c", BUILD / name
        if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
            result = procs.run(
                [_compiler(), "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(source),
                 "-lssl", "-lcrypto", "-lpthread"],
                timeout=120,
            )
            if result.returncode != 0:
                raise procs.BenchError(
                    f"compiling {source.name} failed (is libssl-dev installed?): "
                    f"{result.stderr[-300:]}"
                )
        built[name] = binary
    return NativeTools(producer=built["producer"], paced=built["paced"], sink=built["sink"])
