"""Real database servers for the e2e tests: MariaDB and PostgreSQL on 127.0.0.1,
each in a throwaway data directory, stopped (and waited for) at the end.

    with mariadb_server(tmp_path / "mariadb") as server:
        run_mariadb(server, "select 1")

PostgreSQL refuses to run as root: initdb and pg_ctl run as user postgres
(runuser) in a directory it owns. Where /dev/null is not writable by that user
(some containers create it 0600), they run in a private mount namespace with
a /dev/null of their own (a 0666 node bound over it), which the machine's
other processes never see.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .targets import HOST, TargetError, free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DbServer:
    port: int
    pid: int  # the server process (mariadbd, the postmaster)
    binary: Path
    directory: Path


def _run(argv: Sequence[str], timeout: float = START_TIMEOUT_S,
         input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True,
                              timeout=timeout, input=input_text,
                              stdin=None if input_text else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise TargetError(f"{argv[0]} did not finish within {timeout} s") from error
    return done


def mariadbd_binary() -> Path | None:
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin")
        if found:
            return Path(found).resolve()
    return None


@contextlib.contextmanager
def mariadb_server(directory: Path) -> Iterator[DbServer]:
    binary = mariadbd_binary()
    if binary is None:
        raise TargetError("mariadbd is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    done = _run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db"], timeout=120)
    if done.returncode != 0:
        raise TargetError(f"mariadb-install-db failed:\n{done.stdout}\n{done.stderr}")
    port = free_port()
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(
        [str(binary), "--no-defaults", f"--datadir={data}", "--user=root",
         f"--bind-address={HOST}", f"--port={port}", f"--socket={directory}/mysqld.sock",
         f"--pid-file={directory}/mysqld.pid", "--skip-name-resolve"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    server = DbServer(port, process.pid, binary, directory)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise TargetError(f"mariadbd exited {process.returncode}:\n"
                                  f"{(directory / 'server.log').read_text(errors='replace')}")
            if run_mariadb(server, "select 1", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TargetError(f"mariadbd did not accept connections in {START_TIMEOUT_S} s")
            time.sleep(0.2)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
        log.close()


def run_mariadb(server: DbServer, sql: str, *, check: bool = True,
                timeout: float = CLIENT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """The `mariadb` client with `sql` on the command line (-e), over TCP."""
    done = _run(["mariadb", "--no-defaults", f"--host={HOST}", f"--port={server.port}",
                 "--user=root", "--batch", "-e", sql], timeout=timeout)
    if check and done.returncode != 0:
        raise TargetError(f"mariadb -e {sql!r} failed: {done.stderr}")
    return done


# -- PostgreSQL ---------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest installed major version's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda path: int(Path(path).parent.parent.name)
                   if Path(path).parent.parent.name.isdigit() else -1)
    return Path(found[-1]).parent if found else None


def _dev_null_usable_by(uid: int) -> bool:
    mode = os.stat("/dev/null").st_mode
    return bool(mode & stat.S_IWOTH) or os.stat("/dev/null").st_uid == uid


def _as_postgres(directory: Path, argv: Sequence[str]) -> list[str]:
    user = pwd.getpwnam("postgres")
    command = ["runuser", "-u", "postgres", "--", *argv]
    if _dev_null_usable_by(user.pw_uid):
        return command
    null = directory / "null"
    if not null.exists():
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(null, 0o666)
    script = f'mount --bind {null} /dev/null && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *command]


@contextlib.contextmanager
def postgres_server(directory: Path) -> Iterator[DbServer]:
    bindir = postgres_bin()
    if bindir is None:
        raise TargetError("postgres is not installed (Debian package postgresql)")
    user = pwd.getpwnam("postgres")
    directory.mkdir(parents=True, exist_ok=True)
    # The postgres user reaches its directory: every parent searchable.
    for parent in [directory, *directory.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)
    os.chown(directory, user.pw_uid, user.pw_gid)
    data = directory / "data"
    done = _run(_as_postgres(directory, [str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                         "-U", "postgres", "--no-sync"]), timeout=120)
    if done.returncode != 0:
        raise TargetError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
    port = free_port()
    options = f"-k {directory} -p {port} -c listen_addresses={HOST} -c fsync=off"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(directory / "server.log")]
    done = _run(_as_postgres(directory, [*pg_ctl, "-o", options, "-w", "-t", "30", "start"]),
                timeout=START_TIMEOUT_S + 10)
    if done.returncode != 0:
        log = directory / "server.log"
        raise TargetError(f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n"
                          f"{log.read_text(errors='replace') if log.exists() else ''}")
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield DbServer(port, pid, bindir / "postgres", directory)
    finally:
        _run(_as_postgres(directory, [*pg_ctl, "-m", "fast", "-w", "-t", "20", "stop"]),
             timeout=STOP_TIMEOUT_S + 10)


def run_psql(server: DbServer, *commands: str, check: bool = True,
             timeout: float = CLIENT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """psql (the simple protocol), each command given with -c, over TCP."""
    argv = ["psql", "-X", "-h", HOST, "-p", str(server.port), "-U", "postgres", "-d", "postgres"]
    for command in commands:
        argv += ["-c", command]
    done = _run(argv, timeout=timeout)
    if check and done.returncode != 0:
        raise TargetError(f"psql failed: {done.stderr}")
    return done
