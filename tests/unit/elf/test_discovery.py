"""Finding libssl: the system's, and the files running processes map."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecapture.elf.discovery import (
    LIBSSL_SONAMES,
    TargetScanner,
    parse_maps,
    process_ssl_targets,
    system_libssl,
)
from ecapture.elf.symbols import Executable

from .conftest import LIBSSL3, require_file

MAPS_WAIT_S = 10.0
SSL_SLEEPER = "import ssl, time; time.sleep(30)"


def test_system_libssl_is_openssl_not_nss() -> None:
    found = system_libssl()
    if found is None:
        pytest.skip("no OpenSSL libssl on this machine")
    assert found.name in LIBSSL_SONAMES
    assert Executable(found).exports_function("SSL_write")
    if LIBSSL3.is_file():
        assert found.stat().st_ino == LIBSSL3.stat().st_ino


MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1001 /usr/bin/python3.11
55d0c0a01000-55d0c0b00000 r-xp 00001000 fd:01 1001 /usr/bin/python3.11
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
7f0000001000-7f0000002000 r-xp 00020000 fd:01 2002 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000002000-7f0000003000 r-xp 00021000 fd:01 2002 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00000000 fd:01 3003 /tmp/my dir/libx.so
7f0000004000-7f0000005000 r-xp 00000000 fd:01 4004 /tmp/old.so (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
"""


def test_parse_maps_keeps_each_executable_file_once() -> None:
    mapped = list(parse_maps(MAPS))
    assert [(m.device, m.inode, m.path) for m in mapped] == [
        ("fd:01", 1001, "/usr/bin/python3.11"),
        ("fd:01", 2002, "/usr/lib/x86_64-linux-gnu/libssl.so.3"),
        ("fd:01", 3003, "/tmp/my dir/libx.so"),
    ]


@pytest.fixture
def ssl_process() -> Iterator[subprocess.Popen[bytes]]:
    """A Python that has libssl mapped (it imported ssl), killed after the test."""
    require_file(LIBSSL3)
    process = subprocess.Popen([sys.executable, "-c", SSL_SLEEPER])
    try:
        deadline = time.monotonic() + MAPS_WAIT_S
        maps = Path(f"/proc/{process.pid}/maps")
        while "libssl.so" not in maps.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"python -c {SSL_SLEEPER!r} did not map libssl in {MAPS_WAIT_S} s")
            time.sleep(0.02)
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def same_file(a: Path, b: Path) -> bool:
    first, second = a.stat(), b.stat()
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def test_finds_the_libssl_a_process_maps(ssl_process: subprocess.Popen[bytes]) -> None:
    [target] = process_ssl_targets(ssl_process.pid)
    assert same_file(target.path, LIBSSL3)
    assert target.pids == (ssl_process.pid,)
    assert target.flavor == "openssl"


def test_whole_scan_lists_the_process_but_not_ourselves(
    ssl_process: subprocess.Popen[bytes],
) -> None:
    scanner = TargetScanner()
    targets = scanner.scan()
    [libssl] = [t for t in targets if same_file(t.path, LIBSSL3)]
    assert ssl_process.pid in libssl.pids
    assert all(os.getpid() not in t.pids for t in targets)
    parsed = scanner.files_parsed
    assert parsed > 0
    judged = dict(scanner._files)
    scanner.scan()
    # Each (device, inode) is judged once: the second scan parses only files that
    # processes started in between map (other tests' programs), never one judged before.
    assert all(scanner._files[key] is verdict for key, verdict in judged.items())
    assert scanner.files_parsed - parsed == len(scanner._files) - len(judged)


def test_vanished_process_gives_no_targets() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    assert process_ssl_targets(process.pid) == []


def test_kernel_thread_is_skipped() -> None:
    # pid 2 is kthreadd on Linux: an empty maps file
    if not Path("/proc/2/maps").exists() or Path("/proc/2/maps").read_text():
        pytest.skip("pid 2 is not a kernel thread here")
    assert process_ssl_targets(2) == []


def test_process_in_another_mount_namespace_is_read_through_its_root(tmp_path: Path) -> None:
    """A libssl only visible inside a private mount namespace is found via /proc/PID/root."""
    require_file(LIBSSL3)
    if os.geteuid() != 0:
        pytest.skip("needs root to create a mount namespace")
    mount_point = tmp_path / "private"
    mount_point.mkdir()
    inner = mount_point / "libssl.so.3"
    script = (
        f"mount -t tmpfs none {mount_point} && cp {LIBSSL3} {inner} && exec {sys.executable} -c "
        f"'import ctypes, time; ctypes.CDLL(\"{inner}\"); time.sleep(30)'"
    )
    process = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    try:
        deadline = time.monotonic() + MAPS_WAIT_S
        maps = Path(f"/proc/{process.pid}/maps")
        while str(inner) not in maps.read_text():
            if process.poll() is not None:
                pytest.skip("unshare -m is not permitted here")
            if time.monotonic() > deadline:
                pytest.fail(f"the namespaced process did not map {inner}")
            time.sleep(0.02)
        assert not inner.exists()  # not visible from our namespace
        [target] = process_ssl_targets(process.pid)
        assert target.path == Path(f"/proc/{process.pid}/root") / str(inner).lstrip("/")
        assert target.pids == (process.pid,)
        assert Executable(target.path).exports_function("SSL_write")
    finally:
        process.kill()
        process.wait(timeout=10)
