"""Small ELF files compiled for the tests, and the system TLS libraries they read."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MULTIARCH = Path("/usr/lib/x86_64-linux-gnu")
LIBSSL3 = MULTIARCH / "libssl.so.3"
LIBCRYPTO3 = MULTIARCH / "libcrypto.so.3"
BORINGSSL = MULTIARCH / "android" / "libssl.so.0"
COMPILE_TIMEOUT_S = 60

PROGRAM_C = r"""
#include <stdio.h>
__attribute__((noinline)) int target_function(int x) { return x * 3 + 1; }
int main(int argc, char **argv) { (void)argv; printf("%d\n", target_function(argc)); return 0; }
"""

LIBRARY_C = r"""
__attribute__((noinline)) long demo_send(long a, long b) { return a * 7 + b; }
__attribute__((noinline)) long demo_recv(long a) { return demo_send(a, 2) - 1; }
"""
LIBRARY_VERSIONS = "DEMO_1.0 { global: demo_send; demo_recv; local: *; };\n"


def require_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent (Debian package not installed)")
    return path


def run_tool(*argv: str | Path) -> str:
    """Run a binutils/gcc tool; skip when it is not installed."""
    if shutil.which(str(argv[0])) is None:
        pytest.skip(f"{argv[0]} is not installed")
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("elf-build")


def compile_c(build_dir: Path, name: str, source: str, *flags: str) -> Path:
    source_path = build_dir / f"{name}.c"
    source_path.write_text(source)
    output = build_dir / name
    run_tool("gcc", "-O1", "-g0", *flags, "-o", output, source_path)
    return output


@pytest.fixture(scope="session")
def pie_program(build_dir: Path) -> Path:
    return compile_c(build_dir, "pie", PROGRAM_C, "-fPIE", "-pie")


@pytest.fixture(scope="session")
def non_pie_program(build_dir: Path) -> Path:
    return compile_c(build_dir, "nopie", PROGRAM_C, "-fno-PIE", "-no-pie")


@pytest.fixture(scope="session")
def shared_library(build_dir: Path) -> Path:
    """A stripped shared library with versioned exports: only .dynsym is left."""
    versions = build_dir / "demo.map"
    versions.write_text(LIBRARY_VERSIONS)
    library = compile_c(
        build_dir, "libdemo.so", LIBRARY_C, "-shared", "-fPIC", f"-Wl,--version-script={versions}"
    )
    run_tool("strip", "--strip-all", library)
    return library
