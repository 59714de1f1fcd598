"""Bounded, always-cleaned-up subprocesses: every process the bench starts is registered here.

Each child gets its own session so that a Ctrl-C in the terminal reaches only the bench, which
then stops the children in reverse order (SIGINT or SIGTERM first, SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

_RUNNING: list[subprocess.Popen[bytes]] = []


class BenchError(RuntimeError):
    """A step of the bench could not run; the message says which and why (shown in one line)."""


def spawn(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | int | None = subprocess.DEVNULL,
    stderr: IO[bytes] | int | None = subprocess.DEVNULL,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a registered child in its own session (never hit by the terminal's Ctrl-C)."""
    try:
        process = subprocess.Popen(
            list(argv), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            cwd=cwd, env=env, start_new_session=True,
        )
    except OSError as error:
        raise BenchError(f"cannot start {argv[0]}: {error}") from error
    _RUNNING.append(process)
    return process


def stop(process: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace: float = 10.0) -> int:
    """Send `first`, wait up to `grace` seconds, then SIGKILL the whole session; return the code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, first)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # A daemon's children (nginx's worker) live on in the session: end them too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process in _RUNNING:
        _RUNNING.remove(process)
    return process.returncode


def stop_all() -> None:
    """Stop every child still running, newest first (called on any exit, Ctrl-C included)."""
    for process in reversed(list(_RUNNING)):
        stop(process, grace=3.0)


@contextlib.contextmanager
def running(process: subprocess.Popen[bytes], first: int = signal.SIGTERM) -> Iterator[
    subprocess.Popen[bytes]
]:
    try:
        yield process
    finally:
        stop(process, first)


def run(
    argv: Sequence[str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run to completion with a timeout; the child is killed (whole session) when it expires."""
    process = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as error:
        stop(process, signal.SIGKILL, grace=1.0)
        raise BenchError(f"{argv[0]} did not finish within {timeout:.0f} s") from error
    stop(process)
    return subprocess.CompletedProcess(
        list(argv), process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )


def wait_for_text(
    path: Path, needle: str, timeout: float, process: subprocess.Popen[bytes],
    log: Path | None = None,
) -> float:
    """Poll a log file until it contains `needle`; return seconds waited. Fails fast if the
    process died (its log tail is the reason)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(FileNotFoundError):
            if needle in path.read_text(errors="replace"):
                return time.monotonic() - start
        if process.poll() is not None:
            raise BenchError(f"exited with {process.returncode}: {reason(log or path)}")
        time.sleep(0.01)
    raise BenchError(f"no {needle!r} within {timeout:.0f} s: {reason(log or path)}")


# In order of preference: a library's own diagnosis ("Unable to find kernel headers") beats the
# traceback line that reports it ("Failed to compile BPF module"), which may come first in the log.
REASON_WORDS = ("unable", "error:", "cannot", "can't", "denied", "not permitted", "error",
                "failed")


def reason(path: Path) -> str:
    """Why a process failed, in one line: its first line that names a failure, then its last."""
    try:
        text = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except FileNotFoundError:
        return "(no output)"
    text = [line for line in text if line]
    first = next((line for word in REASON_WORDS for line in text if word in line.lower()), None)
    if first is None or first == text[-1]:
        return tail(path, 2)
    return f"{first} … {text[-1]}"


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log, joined on one line (a peer's reason for not running)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no output)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(no output)"
