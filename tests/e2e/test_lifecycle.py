"""ecapture's start and stop: one clear error line when it cannot start, exit 0
after SIGINT/SIGTERM, and no BPF program or link left in the kernel either way."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from .capture import (
    BTF_PATH,
    Ecapture,
    assert_clean_stop,
    capture,
    links_of_programs,
    loaded_programs_named,
    marker_holders,
    our_program_names,
    programs_held_by,
    run_tool,
    wait_until_gone,
)
from .conftest import require_programs
from .targets import AS_NOBODY, Server, curl_argv, run_client

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_clean_stop_leaves_no_probe_behind(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    require_programs("curl", "bpftool")
    marker = uuid.uuid4().hex
    with capture(ecapture, tmp_path, stop_signal=stop_signal) as running:
        held = programs_held_by(running.pid)
        links = links_of_programs(held)
        client = run_client(curl_argv(nginx.url(f"/echo/{marker}"))).check()
    result = running.finished()
    assert held, "the running tool holds no BPF program: nothing was checked"
    assert links, "no BPF link attaches the tool's programs while it runs"
    assert_clean_stop(result, {client.pid, nginx.pid})
    assert "summary" in result.stderr.lower(), result.stderr
    # Events read before the signal were flushed, not dropped on the way out.
    assert marker_holders(result.events, marker.encode())
    assert wait_until_gone(held) == (set(), set())


def niceness(pid: int) -> int:
    """proc(5) /proc/PID/stat field 19."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


@pytest.mark.parametrize(("args", "expected"), [((), 10), (("--nice", "3"), 3)])
def test_the_tool_yields_the_cpu_to_traced_programs(
    ecapture: Ecapture, tmp_path: Path, args: tuple[str, ...], expected: int
) -> None:
    with capture(ecapture, tmp_path, *args) as running:
        assert niceness(running.pid) == expected
    assert running.finished().exit_code == 0


def expect_start_error(
    ecapture: Ecapture, *args: str, prefix: tuple[str, ...] = ()
) -> str:
    """Run a start that must fail; check no program of ours outlives it."""
    names = our_program_names()
    before = loaded_programs_named(names)
    line = run_tool(ecapture, "tls", *args, prefix=prefix).error_line()
    assert loaded_programs_named(names) - before == set()
    return line


def test_not_root_is_one_error_line(ecapture: Ecapture) -> None:
    require_programs("setpriv")
    line = expect_start_error(ecapture, prefix=AS_NOBODY)
    assert "root" in line.lower() or "permission" in line.lower(), line


def test_missing_libssl_is_one_error_line(ecapture: Ecapture) -> None:
    line = expect_start_error(ecapture, "--libssl", "/nonexistent/libssl.so.3")
    assert "/nonexistent/libssl.so.3" in line


def test_libssl_without_ssl_symbols_is_one_error_line(ecapture: Ecapture) -> None:
    line = expect_start_error(ecapture, "--libssl", "/bin/true")
    assert "--libssl /bin/true: not an OpenSSL/BoringSSL library or program" in line
    assert "SSL_" in line  # and what it lacks


def test_no_kernel_btf_is_one_error_line(ecapture: Ecapture) -> None:
    """BTF hidden by a tmpfs in a private mount namespace (never on the host's /sys)."""
    require_programs("unshare", "mount")
    hide_btf = (
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f'mount -t tmpfs ecapture-no-btf {BTF_PATH.parent} && exec "$@"', "sh",
    )
    line = expect_start_error(ecapture, prefix=hide_btf)
    assert "btf" in line.lower(), line
    assert BTF_PATH.exists()  # the host's BTF is untouched


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-p", "abc"), "ecapture: error: argument -p/--pid: invalid int value: 'abc'"),
        (("-p", "-5"), "ecapture: error: -p/--pid must be >= 0, got -5"),
        (("--bogus",), "ecapture: error: unrecognized arguments: --bogus"),
        (("--format",), "ecapture: error: argument --format: expected one argument"),
        (("--mapsize", "3000"), "ecapture: error: --mapsize must be a power of two"),
        (("--drain-timeout", "-1"), "ecapture: error: --drain-timeout must be in"),
    ],
)
def test_a_bad_flag_is_one_error_line_and_exit_2(
    ecapture: Ecapture, args: tuple[str, ...], expected: str
) -> None:
    run = run_tool(ecapture, "tls", *args)
    assert run.exit_code == 2, run.stderr
    assert run.error_line().startswith(expected)
    assert run.stdout == ""


def test_help_still_works(ecapture: Ecapture) -> None:
    run = run_tool(ecapture, "tls", "--help")
    assert run.exit_code == 0, run.stderr
    assert "--drain-timeout" in run.stdout and "--eventaddr" in run.stdout
