"""The files ecapture writes, run as root against planted names: a symlink
(to a file, or dangling), a FIFO, a device. Each start fails with one error
line naming the path, exit 2 (the files are opened before the BPF object
is loaded), and the target is untouched.

The names sit in a directory of root's own (not a sticky /tmp), so that the
kernel's fs.protected_symlinks, which would refuse some of these links by
itself, plays no part: what stops the write is ecapture's own open.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .capture import Ecapture, read_events, run_tool

pytestmark = pytest.mark.e2e

FLAGS = ["--eventaddr", "--har", "--logaddr"]


@dataclass(frozen=True)
class Snapshot:
    mode: int
    uid: int
    size: int
    mtime_ns: int
    digest: str

    @classmethod
    def of(cls, path: Path) -> Snapshot:
        info = path.stat()
        return cls(stat.S_IMODE(info.st_mode), info.st_uid, info.st_size, info.st_mtime_ns,
                   hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def shadow(tmp_path: Path) -> Iterator[Path]:
    """A stand-in for /etc/shadow (root's, 0640): never the real one on a shared host."""
    path = tmp_path / "etc" / "shadow"
    path.parent.mkdir()
    path.write_bytes(b"root:$y$j9T$secret:19700:0:99999:7:::\n")
    path.chmod(0o640)
    before = Snapshot.of(path)
    yield path
    assert Snapshot.of(path) == before, "the symlink's target was changed"


def start_with(ecapture: Ecapture, flag: str, path: Path) -> str:
    args = ["--format", "json", flag, str(path)]
    if flag != "--eventaddr":
        args += ["--eventaddr", "-"]
    run = run_tool(ecapture, "tls", *args)
    assert run.exit_code == 2, run.stderr
    return run.error_line()


@pytest.mark.parametrize("flag", FLAGS)
def test_a_planted_symlink_leaves_its_target_untouched(
    ecapture: Ecapture, tmp_path: Path, shadow: Path, flag: str
) -> None:
    link = tmp_path / "capture.out"
    link.symlink_to(shadow)
    line = start_with(ecapture, flag, link)
    assert line == (f"ecapture: error: {flag} {link}: is a symbolic link: refusing to follow "
                    "it (name the file itself)")


@pytest.mark.parametrize("flag", FLAGS)
def test_a_dangling_symlink_creates_nothing(
    ecapture: Ecapture, tmp_path: Path, flag: str
) -> None:
    target = tmp_path / "etc" / "cron.d" / "job"
    target.parent.mkdir(parents=True)
    link = tmp_path / "capture.out"
    link.symlink_to(target)
    line = start_with(ecapture, flag, link)
    assert f"{flag} {link}: is a symbolic link" in line
    assert not target.exists()


def test_a_fifo_is_refused_without_blocking(ecapture: Ecapture, tmp_path: Path) -> None:
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo, 0o600)
    line = start_with(ecapture, "--eventaddr", fifo)  # run_tool's timeout catches a hang
    assert line.endswith(f"--eventaddr {fifo}: is a FIFO, not a regular file: refusing to "
                         "write to it")


def test_a_device_is_refused(ecapture: Ecapture) -> None:
    line = start_with(ecapture, "--har", Path("/dev/null"))
    assert "--har /dev/null: is a character device, not a regular file" in line


def test_a_file_others_can_read_is_not_narrowed_or_emptied(
    ecapture: Ecapture, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"yesterday's capture\n")
    path.chmod(0o644)
    before = Snapshot.of(path)
    line = start_with(ecapture, "--eventaddr", path)
    assert f"--eventaddr {path}: exists with mode 0644" in line
    assert Snapshot.of(path) == before


def test_files_are_created_0600_and_an_own_file_is_replaced(
    ecapture: Ecapture, tmp_path: Path
) -> None:
    """The tcpdump -w case: our own 0600 file from the last run is replaced."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b'{"type": "stale"}\n')
    events.chmod(0o600)
    har, log = tmp_path / "flows.har", tmp_path / "ecapture.log"
    process = subprocess.Popen(
        ecapture.command("tls", "--format", "json", "--eventaddr", str(events), "--har",
                         str(har), "--logaddr", str(log)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not (log.exists() and "ready" in log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, (
                log.read_text() if log.exists() else "no log file")
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stderr == b""  # everything went to the log file
    for path in (events, har, log):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert all(event["type"] != "stale" for event in read_events(events))
    assert "summary" in log.read_text()
