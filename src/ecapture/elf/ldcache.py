"""Where the dynamic linker would find a library by its soname.

The linker's cache is read through `ldconfig -p` (glibc's ld.so.cache format is
private); when ldconfig is missing or fails, the standard multiarch and lib64
directories are searched instead.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

LDCONFIG_TIMEOUT_S = 5.0
# `\tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3`
LDCONFIG_LINE = re.compile(r"^\s*(?P<soname>\S+) \((?P<flags>[^)]*)\)(?: .*)? => (?P<path>/\S.*)$")
# ldconfig's name for the ABI of each machine (glibc elf/cache.c, print_entry)
LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64"}
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


def standard_library_dirs(machine: str | None = None) -> list[Path]:
    """Debian's multiarch directories first, then the generic ones."""
    machine = machine or platform.machine()
    triplet = MULTIARCH.get(machine)
    dirs = [Path("/usr/lib") / triplet, Path("/lib") / triplet] if triplet else []
    return [*dirs, Path("/usr/lib64"), Path("/lib64"), Path("/usr/lib"), Path("/lib")]


def parse_ldconfig(text: str, machine: str | None = None) -> dict[str, list[Path]]:
    """soname -> paths (cache order) from `ldconfig -p` output, for this machine's ABI."""
    arch = LDCONFIG_ARCH.get(machine or platform.machine())
    entries: dict[str, list[Path]] = {}
    for line in text.splitlines():
        match = LDCONFIG_LINE.match(line)
        if match is None:
            continue
        flags = match["flags"]
        # 32-bit entries on a 64-bit host carry no arch tag ("libc6"); skip them.
        if arch is not None and arch not in flags:
            continue
        entries.setdefault(match["soname"], []).append(Path(match["path"]))
    return entries


def ldconfig_entries() -> dict[str, list[Path]]:
    """The linker cache, or {} when ldconfig cannot be run."""
    ldconfig = shutil.which("ldconfig") or next(
        (str(p) for p in (Path("/sbin/ldconfig"), Path("/usr/sbin/ldconfig")) if p.exists()), None
    )
    if ldconfig is None:
        return {}
    try:
        result = subprocess.run(
            [ldconfig, "-p"],
            capture_output=True,
            text=True,
            timeout=LDCONFIG_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_ldconfig(result.stdout) if result.returncode == 0 else {}


def find_library(
    soname: str,
    *,
    near: Path | None = None,
    cache: dict[str, list[Path]] | None = None,
    search_dirs: Sequence[Path] | None = None,
) -> Path | None:
    """The file the linker would load for `soname`: beside `near` first, then cache, then dirs."""
    if near is not None and (near / soname).is_file():
        return near / soname
    entries = ldconfig_entries() if cache is None else cache
    for path in entries.get(soname, ()):
        if path.is_file():
            return path
    for directory in search_dirs if search_dirs is not None else standard_library_dirs():
        if (directory / soname).is_file():
            return directory / soname
    return None
