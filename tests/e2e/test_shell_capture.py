"""`ecapture bash`, `ecapture zsh` and readline programs on real shells in a pty.

Each test starts the capture, then the program in a pseudo-terminal
(tests/e2e/shells.py), types lines one prompt at a time, stops the capture
and checks the `command` events of that program's pid: each command once,
in order, with its exit status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .capture import (
    COMMON_KEYS,
    Ecapture,
    Event,
    assert_clean_stop,
    capture,
    links_of_programs,
    programs_held_by,
    wait_until_gone,
)
from .conftest import require_programs
from .shells import PS1, PS2, PtyProgram, shell_env

SHELLS = {
    "bash": ["bash", "--norc", "--noprofile", "-i"],
    "zsh": ["zsh", "-f", "-i"],
}
# (line, the prompt that follows it)
SESSION = [
    ("echo M1", PS1),
    ("false && echo M2", PS1),
    ("for i in 1 2; do", PS2),
    ("echo L$i; done", PS1),
    ("(exit 3); echo M3", PS1),
]
EXPECTED = [
    ("echo M1", 0),
    ("false && echo M2", 1),
    ("for i in 1 2; do\necho L$i; done", 0),  # the loop's status: its last echo's
    ("(exit 3); echo M3", 0),
]
COMMAND_KEYS = COMMON_KEYS | {"tty", "shell", "line", "retval"}


def commands_of(events: Sequence[Event], pid: int) -> list[Event]:
    return [event for event in events if event["type"] == "command" and event["pid"] == pid]


def type_session(argv: Sequence[str]) -> int:
    """Run SESSION in a fresh shell through a pty; its pid."""
    with PtyProgram.start(argv, env=shell_env()) as shell:
        pid = shell.program_pid
        outputs = [shell.send(line, prompt) for line, prompt in SESSION]
        # The shell really ran them: the loop printed L1 L2, M2 never showed.
        assert "L1" in outputs[3] and "L2" in outputs[3], outputs
        printed = [[row.strip() for row in out.splitlines()[1:]] for out in outputs]
        assert "M3" in printed[4] and all("M2" not in rows for rows in printed), outputs
        shell.send("true")
        shell.send("exit", prompt="")
    return pid


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_every_command_once_in_order_with_its_status(
    ecapture: Ecapture, tmp_path: Path, shell: str
) -> None:
    require_programs(shell)
    with capture(ecapture, tmp_path, module=shell) as running:
        held = programs_held_by(running.pid)
        links = links_of_programs(held)
        pid = type_session(SHELLS[shell])
    result = running.finished()
    assert_clean_stop(result, {pid})
    # its probes were attached, and are all gone after the stop
    assert held and len(links) >= 2, (held, links)
    assert wait_until_gone(held) == (set(), set())
    commands = commands_of(result.events, pid)
    for event in commands:
        assert event.keys() >= COMMAND_KEYS, event
        assert (event["module"], event["shell"], event["comm"]) == (shell, shell, shell)
        assert event["uid"] == os.getuid() and event["tid"] == pid
        assert event["tty"] is not None and event["tty"].startswith("pts/"), event
    got = [(event["line"], event["retval"]) for event in commands]
    # `true` was typed after the session; `exit` never returns: no status.
    assert got == [*EXPECTED, ("true", 0), ("exit", None)], got


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_errnumber_keeps_only_commands_that_returned_it(
    ecapture: Ecapture, tmp_path: Path, shell: str
) -> None:
    require_programs(shell)
    with capture(ecapture, tmp_path, "-e", "1", module=shell) as running:
        pid = type_session(SHELLS[shell])
    result = running.finished()
    assert_clean_stop(result, {pid})
    assert [(event["line"], event["retval"]) for event in commands_of(result.events, pid)] == [
        ("false && echo M2", 1)]


def test_text_output_one_line_per_command(ecapture: Ecapture, tmp_path: Path) -> None:
    require_programs("bash")
    events = tmp_path / "commands.txt"
    process = subprocess.Popen(
        ecapture.command("bash", "--eventaddr", str(events), "--color", "never"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(process)
        pid = type_session(SHELLS["bash"])
    finally:
        process.send_signal(2)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    lines = [line for line in events.read_text().splitlines() if f" pid {pid} " in line]
    user = _user()
    shown = [line.split(" ", 1)[1] for line in lines]  # without the time
    tty = shown[0].split()[3]
    assert tty.startswith("pts/")
    assert shown == [
        f"{user} pid {pid} {tty} bash status 0: echo M1",
        f"{user} pid {pid} {tty} bash status 1: false && echo M2",
        f"{user} pid {pid} {tty} bash status 0: for i in 1 2; do\\necho L$i; done",
        f"{user} pid {pid} {tty} bash status 0: (exit 3); echo M3",
        f"{user} pid {pid} {tty} bash status 0: true",
        f"{user} pid {pid} {tty} bash status ?: exit",
    ]


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _wait_ready(process: subprocess.Popen[bytes]) -> None:
    assert process.stderr is not None
    for raw in iter(process.stderr.readline, b""):
        if b"ready" in raw:
            return
    raise AssertionError(f"ecapture exited {process.wait()} before it was ready")


# -- readline programs --------------------------------------------------------------

READLINE = Path("/usr/lib/x86_64-linux-gnu/libreadline.so.8")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def postgres() -> Iterator[Path]:
    """A throwaway PostgreSQL on a unix socket in a fresh directory, run as user
    postgres (outside pytest's tmp_path, which only root may enter)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server in {PG_BIN} (Debian package postgresql-15)")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (Debian package postgresql-common creates it)")
    base = Path(tempfile.mkdtemp(prefix="ecapture-pg-"))
    shutil.chown(base, "postgres")
    base.chmod(0o700)
    data, socket_dir = base / "data", base
    pg = f"runuser -u postgres -- {PG_BIN}"
    # initdb and the server write to /dev/null as user postgres; where it is
    # root's alone (0600, as on some CI machines) a private mount namespace
    # binds a 0666 node over it for them only (the server stays in it).
    script = (
        f"if ! runuser -u postgres -- test -w /dev/null; then "
        f"mknod -m 666 {base}/null c 1 3 && mount --bind {base}/null /dev/null; fi && "
        f"{pg}/initdb -D {data} -A trust -U postgres >{base}/initdb.log 2>&1 && "
        f"{pg}/pg_ctl -D {data} -w -t 30 -l {base}/log "
        f"-o \"-k {socket_dir} -c listen_addresses='' -p 5439\" start >>{base}/initdb.log 2>&1"
    )
    started = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              script], capture_output=True, timeout=120, check=False)
    if started.returncode != 0:
        log = (base / "initdb.log").read_text(errors="replace") if (
            base / "initdb.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {started.stderr!r}\n{log}")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    try:
        yield socket_dir
    finally:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_psql_input_through_readlineso(
    ecapture: Ecapture, tmp_path: Path, postgres: Path
) -> None:
    if not READLINE.exists():
        pytest.skip(f"{READLINE} is missing (Debian package libreadline8)")
    psql = PG_BIN / "psql"
    argv = [str(psql), "-X", "-P", "pager=off", "-h", str(postgres), "-p", "5439",
            "-U", "postgres", "-v", f"PROMPT1={PS1}", "-v", f"PROMPT2={PS2}", "postgres"]
    with (
        capture(ecapture, tmp_path / "capture", "--readlineso", str(READLINE),
                module="bash") as running,
        PtyProgram.start(argv, env=shell_env(), cwd=postgres, user="postgres",
                         typescript=postgres / "typescript") as client,
    ):
        pid = client.program_pid
        assert "4243" in client.send("SELECT 4242 + 1 AS e2e_marker;")
        client.send("SELECT 'two',", PS2)
        client.send("'lines';")
        client.send("\\q", prompt="")
    result = running.finished()
    assert_clean_stop(result, {pid})
    commands = commands_of(result.events, pid)
    assert [(event["line"], event["retval"], event["shell"], event["comm"])
            for event in commands] == [
        ("SELECT 4242 + 1 AS e2e_marker;", None, "psql", "psql"),
        ("SELECT 'two',", None, "psql", "psql"),
        ("'lines';", None, "psql", "psql"),
        ("\\q", None, "psql", "psql"),
    ]


def test_sqlite3_input_from_the_system_readline(ecapture: Ecapture, tmp_path: Path) -> None:
    require_programs("sqlite3")
    argv = ["sqlite3", "-interactive", "-cmd", f".prompt '{PS1}' '{PS2}'", ":memory:"]
    with (
        capture(ecapture, tmp_path, module="bash") as running,
        PtyProgram.start(argv, env=shell_env()) as client,
    ):
        pid = client.program_pid
        assert "5" in client.send("SELECT 2 + 3;")
        client.send(".quit", prompt="")
    result = running.finished()
    assert_clean_stop(result, {pid})
    assert [(event["line"], event["shell"]) for event in commands_of(result.events, pid)] == [
        ("SELECT 2 + 3;", "sqlite3"), (".quit", "sqlite3")]


def test_a_line_longer_than_the_kernel_copies_is_cut_and_reported(
    ecapture: Ecapture, tmp_path: Path
) -> None:
    require_programs("bash")
    long_line = "echo " + "x" * 6000
    with (
        capture(ecapture, tmp_path, module="bash") as running,
        PtyProgram.start(SHELLS["bash"], env=shell_env()) as shell,
    ):
        pid = shell.program_pid
        shell.send(long_line)
        shell.send("exit", prompt="")
    result = running.finished()
    assert result.exit_code == 0, result.stderr
    first = commands_of(result.events, pid)[0]
    assert (first["line"], first["retval"], first["truncated"]) == (long_line[:4095], 0, True)
    lost = [event for event in result.events if event["type"] == "lost" and event["pid"] == pid]
    assert [(event["reason"], event["records"], event["bytes"]) for event in lost] == [
        ("kernel_limit", 0, len(long_line) - 4095)]
    assert "1 lines cut" in result.stderr, result.stderr


def test_a_bash_already_at_its_prompt_is_captured_from_its_next_line(
    ecapture: Ecapture, tmp_path: Path
) -> None:
    # readline was entered before the probes existed: the entry probe on
    # readline_internal_teardown still sees the line it returns (-p: this shell only).
    require_programs("bash")
    with PtyProgram.start(SHELLS["bash"], env=shell_env()) as shell:
        pid = shell.program_pid
        with capture(ecapture, tmp_path, "-p", str(pid), module="bash") as running:
            shell.send("echo first")
            shell.send("false")
            shell.send("exit", prompt="")
    result = running.finished()
    assert_clean_stop(result, {pid})
    assert [(event["line"], event["retval"]) for event in commands_of(result.events, pid)] == [
        ("echo first", 0), ("false", 1), ("exit", None)]


def test_bash_statuses_survive_prompt_command_functions_and_eval(
    ecapture: Ecapture, tmp_path: Path
) -> None:
    # PROMPT_COMMAND runs before every prompt and fails; eval nests
    # execute_command; a comment runs nothing and must not take a later status.
    require_programs("bash")
    env = shell_env(PROMPT_COMMAND="(exit 7)")
    lines = ["# a comment", "f() { return 4; }", "f", "eval 'false; true'", "true"]
    with (
        capture(ecapture, tmp_path, module="bash") as running,
        PtyProgram.start(SHELLS["bash"], env=env) as shell,
    ):
        pid = shell.program_pid
        for line in lines:
            shell.send(line)
        shell.send("exit", prompt="")
    result = running.finished()
    assert_clean_stop(result, {pid})
    assert [(event["line"], event["retval"]) for event in commands_of(result.events, pid)] == [
        ("# a comment", None), ("f() { return 4; }", 0), ("f", 4), ("eval 'false; true'", 0),
        ("true", 0), ("exit", None)]


def test_zsh_statuses_survive_a_failing_precmd_hook(ecapture: Ecapture, tmp_path: Path) -> None:
    # precmd runs before every prompt, where the status is read; zsh restores
    # lastval after hooks, so each command keeps its own status.
    require_programs("zsh")
    lines = ["precmd() { return 9 }", "true", "false", "f() { return 4 }", "f"]
    with (
        capture(ecapture, tmp_path, module="zsh") as running,
        PtyProgram.start(SHELLS["zsh"], env=shell_env()) as shell,
    ):
        pid = shell.program_pid
        for line in lines:
            shell.send(line)
        shell.send("exit", prompt="")
    result = running.finished()
    assert_clean_stop(result, {pid})
    assert [(event["line"], event["retval"]) for event in commands_of(result.events, pid)] == [
        ("precmd() { return 9 }", 0), ("true", 0), ("false", 1), ("f() { return 4 }", 0),
        ("f", 4), ("exit", None)]
