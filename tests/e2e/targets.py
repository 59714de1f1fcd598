"""Real TLS servers and clients on 127.0.0.1, started for one test and always reaped.

Every server is a context manager yielding a `Server` whose `pid` is the process
that does the TLS calls (for nginx: its one worker, not the master). Nothing
here knows about ecapture: these helpers are tested on their own in
test_targets.py. Every wait has a timeout; a helper that cannot start its
program raises `TargetError` with the program's stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
CLIENT_TIMEOUT_S = 20.0
PROGRAMS = Path(__file__).parent / "programs"
NOBODY_UID = 65534
NOBODY_GID = 65534
# util-linux setpriv: switch to nobody with no supplementary groups; it execs,
# so the pid of the Popen object stays the pid of the program.
AS_NOBODY = (
    "setpriv",
    f"--reuid={NOBODY_UID}",
    f"--regid={NOBODY_GID}",
    "--clear-groups",
)
BORINGSSL_LIBSSL = Path("/usr/lib/x86_64-linux-gnu/android/libssl.so.0")
KNOWN_BODY = b"ecapture e2e known body: the quick brown fox jumps over the lazy dog\n"
BIG_BODY_SIZE = 1 << 20


class TargetError(RuntimeError):
    """A real program could not be started or did not finish in time."""


def missing_programs(*names: str) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def comm_of(executable: str) -> str:
    """The kernel's comm for a process that exec'd `executable`.

    The kernel names the task after the basename of the path given to execve
    (fs/exec.c: __set_task_comm(..., kbasename(bprm->filename))), cut to
    TASK_COMM_LEN - 1 = 15 bytes.
    """
    return os.path.basename(executable)[:15]


@dataclass(frozen=True, slots=True)
class Certificate:
    directory: Path
    cert: Path
    key: Path


def make_certificate(directory: Path) -> Certificate:
    """A self-signed certificate for CN=localhost, SAN IP:127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return Certificate(directory, cert, key)


def write_site(root: Path) -> dict[str, bytes]:
    """The files every server serves: path -> exact bytes."""
    root.mkdir(parents=True, exist_ok=True)
    # Deterministic but not compressible or periodic in any short way, so a
    # chunk out of place cannot match the file by accident.
    big = bytearray()
    counter = 0
    while len(big) < BIG_BODY_SIZE:
        big += counter.to_bytes(4, "big") * 3 + b"%08x\n" % (counter * 2654435761 % (1 << 32))
        counter += 1
    files = {
        "/index.html": KNOWN_BODY,
        "/big.bin": bytes(big[:BIG_BODY_SIZE]),
        "/text.txt": b"compressible line of text for gzip\n" * 200,
    }
    for name, content in files.items():
        (root / name.lstrip("/")).write_bytes(content)
    return files


def is_listening(port: int, pid: int | str = "self") -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of `pid`.

    Reads /proc/PID/net/tcp{,6} (proc(5): local_address "IP:PORT" in hex, st
    0A = LISTEN) instead of connecting: a probe connection would use up
    `s_server -naccept 1` and show up in the capture.
    """
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path | None, namespace_pid: int | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TargetError(f"{process.args!r} exited with {process.returncode}: {_tail(log)}")
        if is_listening(port, namespace_pid or "self"):
            return
        time.sleep(0.05)
    raise TargetError(f"{process.args!r} did not listen on {HOST}:{port}: {_tail(log)}")


def _tail(log: Path | None, size: int = 2000) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return log.read_bytes()[-size:].decode(errors="replace")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal, wait, then SIGKILL: never leaves a child running or a zombie."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def children_of(pid: int) -> list[int]:
    # /proc/PID/task/TID/children (Linux >= 3.5, CONFIG_PROC_CHILDREN).
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


@dataclass(slots=True)
class Server:
    """A running server: `pid` does the TLS calls; `process` is what we started."""

    port: int
    pid: int
    process: subprocess.Popen[bytes]
    comm: str
    directory: Path
    files: dict[str, bytes] = field(default_factory=dict)
    log: Path | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"


# nginx 1.22: one worker, foreground master, every path private to `prefix`.
NGINX_CONF = """\
daemon off;
master_process on;
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    types {{ text/html html; text/plain txt; }}
    sendfile off;
    keepalive_timeout 5;
    server {{
        listen {host}:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {root};
        location /echo/ {{ return 200 "echo:$request_uri\\n"; }}
        location = /text.txt {{
            gzip on;
            gzip_types text/plain;
            gzip_min_length 1;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(directory: Path, certificate: Certificate) -> Iterator[Server]:
    """nginx on 127.0.0.1:free port; `pid` is its single worker."""
    directory.mkdir(parents=True, exist_ok=True)
    files = write_site(directory / "html")
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            prefix=directory, host=HOST, port=port, cert=certificate.cert,
            key=certificate.key, root=directory / "html",
        )
    )
    log = directory / "error.log"
    process = subprocess.Popen(
        ["nginx", "-p", str(directory), "-c", str(conf), "-e", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, log)
        worker = _wait_for_child(process, log)
        yield Server(port, worker, process, "nginx", directory, files, log)
    finally:
        # SIGQUIT would wait for connections; SIGTERM is nginx's fast shutdown.
        stop_process(process, signal.SIGTERM)


def _wait_for_child(process: subprocess.Popen[bytes], log: Path | None) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        children = children_of(process.pid)
        if children:
            return children[0]
        time.sleep(0.05)
    raise TargetError(f"nginx started no worker: {_tail(log)}")


@contextlib.contextmanager
def nghttpd_server(directory: Path, certificate: Certificate) -> Iterator[Server]:
    """nghttp2's nghttpd: HTTP/2 only, serves the site files."""
    files = write_site(directory / "html")
    port = free_port()
    log = directory / "nghttpd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                "nghttpd", "-d", str(directory / "html"), f"--address={HOST}", str(port),
                str(certificate.key), str(certificate.cert),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process, log)
        yield Server(port, process.pid, process, "nghttpd", directory, files, log)
    finally:
        stop_process(process)


@contextlib.contextmanager
def _program_server(
    directory: Path, name: str, argv: Callable[[int], list[str]], comm: str,
    files: dict[str, bytes],
) -> Iterator[Server]:
    """Start `argv(port)` (output to NAME.log), wait until it listens, stop it after."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / f"{name}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            argv(port), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process, log)
        yield Server(port, process.pid, process, comm, directory, files, log)
    finally:
        stop_process(process)


@contextlib.contextmanager
def python_https_server(directory: Path, certificate: Certificate) -> Iterator[Server]:
    """http.server + ssl in a child interpreter (it calls SSL_read_ex/SSL_write_ex)."""
    files = write_site(directory / "html")
    with _program_server(
        directory, "python-https",
        lambda port: [sys.executable, str(PROGRAMS / "https_server.py"), str(port),
                      str(certificate.cert), str(certificate.key), str(directory / "html")],
        comm_of(sys.executable), files,
    ) as server:
        yield server


@contextlib.contextmanager
def node_https_server(directory: Path, certificate: Certificate, body: bytes) -> Iterator[Server]:
    """Node's https module; started before the capture, so that ecapture has to
    find the node binary (which may embed OpenSSL) among the mapped files."""
    with _program_server(
        directory, "node-https",
        lambda port: ["node", str(PROGRAMS / "https_server.js"), str(port),
                      str(certificate.cert), str(certificate.key), body.decode()],
        comm_of("node"), {"/": body},
    ) as server:
        yield server


@dataclass(slots=True)
class StdioServer:
    """A server that relays stdin to its peer and prints the peer's bytes on stdout."""

    port: int
    pid: int
    process: subprocess.Popen[bytes]
    comm: str
    directory: Path
    log: Path | None = None
    _received: bytearray = field(default_factory=bytearray)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def close_input(self) -> None:
        """EOF on stdin: `openssl s_server -quiet` then closes the connection."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait_received(self, marker: bytes, timeout: float = CLIENT_TIMEOUT_S) -> bytes:
        """Everything the server printed, once it holds `marker`."""
        assert self.process.stdout is not None
        stream = self.process.stdout
        os.set_blocking(stream.fileno(), False)
        deadline = time.monotonic() + timeout
        while marker not in self._received:
            if time.monotonic() > deadline:
                raise TargetError(f"server never received {marker!r}: {bytes(self._received)!r}")
            chunk = stream.read()
            if chunk:
                self._received += chunk
            elif self.process.poll() is not None:
                raise TargetError(f"server exited before receiving {marker!r}")
            else:
                time.sleep(0.02)
        return bytes(self._received)


@contextlib.contextmanager
def openssl_s_server(directory: Path, certificate: Certificate) -> Iterator[StdioServer]:
    """`openssl s_server -quiet`: SSL_read/SSL_write on stdin/stdout (not -www: BIO_f_ssl)."""
    port = free_port()
    log = directory / "s_server.log"
    directory.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                "openssl", "s_server", "-accept", f"{HOST}:{port}",
                "-cert", str(certificate.cert), "-key", str(certificate.key),
                "-quiet", "-naccept", "1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    try:
        wait_for_port(port, process, log)
        server = StdioServer(
            port=port, pid=process.pid, process=process, comm="openssl",
            directory=directory, log=log,
        )
        yield server
    finally:
        stop_process(process)


def in_namespace_of(pid: int) -> tuple[str, ...]:
    """Prefix that runs a command in the network namespace of `pid` (nsenter execs)."""
    return ("nsenter", f"--net=/proc/{pid}/ns/net")


@contextlib.contextmanager
def boringssl_server(directory: Path, certificate: Certificate) -> Iterator[Server]:
    """`bssl-tool server -www -loop` in a private network namespace.

    bssl-tool binds its port on every address (`*:PORT`), so it only ever runs
    inside a network namespace of its own with just loopback up; clients reach
    it through `in_namespace_of(server.pid)`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "bssl-server.log"
    script = 'ip link set lo up && exec "$@"'
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                "unshare", "--net", "sh", "-c", script, "sh",
                "bssl-tool", "server", "-accept", str(port), "-key", str(certificate.key),
                "-cert", str(certificate.cert), "-www", "-loop",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process, log, namespace_pid=process.pid)
        if comm_of_pid(process.pid) != "bssl-tool":
            raise TargetError(f"pid {process.pid} is not bssl-tool: {_tail(log)}")
        yield Server(port, process.pid, process, "bssl-tool", directory, {}, log)
    finally:
        stop_process(process)


def comm_of_pid(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


@dataclass(frozen=True, slots=True)
class ClientResult:
    pid: int
    returncode: int
    stdout: bytes
    stderr: bytes

    def check(self) -> ClientResult:
        if self.returncode != 0:
            raise TargetError(
                f"client {self.pid} exited {self.returncode}: {self.stderr[-2000:]!r}"
            )
        return self


class GatedClient:
    """A client started now but held before exec until `release()`.

    `sh -c 'read; exec ...'` keeps the pid across the exec, so a test can
    hand the pid to `ecapture -p` before the client does any TLS.
    """

    def __init__(self, argv: Sequence[str], prefix: Sequence[str] = ()) -> None:
        self.argv = tuple(argv)
        self.process = subprocess.Popen(
            [*prefix, "sh", "-c", 'read -r _ && exec "$@"', "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # Popen returns after fork, maybe before the exec: wait until the shell
        # holds the gate, so the pid names the client from now on.
        deadline = time.monotonic() + START_TIMEOUT_S
        while comm_of_pid(self.process.pid) != "sh":
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise TargetError(f"{self.argv!r} did not reach its gate")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()
        self.process.stdin = None  # so communicate() does not flush a closed pipe

    def wait(self, timeout: float = CLIENT_TIMEOUT_S) -> ClientResult:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            self.kill()
            raise TargetError(f"{self.argv!r} did not finish in {timeout} s") from expired
        return ClientResult(self.process.pid, self.process.returncode, stdout, stderr)

    def kill(self) -> None:
        stop_process(self.process, signal.SIGKILL)

    def __enter__(self) -> GatedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def run_client(
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    prefix: Sequence[str] = (),
    timeout: float = CLIENT_TIMEOUT_S,
) -> ClientResult:
    """Run a client to the end (killed after `timeout`) and return its output."""
    process = subprocess.Popen(
        [*prefix, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        stop_process(process, signal.SIGKILL)
        raise TargetError(f"{argv!r} did not finish in {timeout} s") from expired
    return ClientResult(process.pid, process.returncode, stdout, stderr)


def curl_argv(url: str, *, http2: bool = False, headers: Sequence[str] = ()) -> list[str]:
    argv = ["curl", "-sS", "-k", "--max-time", "15", "--http2" if http2 else "--http1.1"]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url]


def urllib_argv(*urls: str, headers: Sequence[str] = ()) -> list[str]:
    """Python urllib (unverified context) fetching each URL on its own connection."""
    argv = [sys.executable, str(PROGRAMS / "urllib_client.py")]
    for header in headers:
        argv += ["--header", header]
    return [*argv, *urls]


def nonblocking_client_argv(port: int, request: bytes) -> list[str]:
    return [sys.executable, str(PROGRAMS / "nonblocking_client.py"), str(port), request.hex()]


@dataclass(frozen=True, slots=True)
class Conversation:
    client: ClientResult
    server_received: bytes


def stdio_conversation(
    server: StdioServer,
    client_argv: Sequence[str],
    request: bytes,
    response: bytes,
    *,
    prefix: Sequence[str] = (),
    timeout: float = CLIENT_TIMEOUT_S,
) -> Conversation:
    """A client that relays stdin (s_client -quiet, bssl-tool client) talks to `server`.

    The client sends `request`; once the server printed it, the server sends
    `response` and closes its input, which ends the connection and the client.
    The client's stdin stays open until then: both clients stop early on EOF.
    """
    process = subprocess.Popen(
        [*prefix, *client_argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(request)
        process.stdin.flush()
        received = server.wait_received(request.strip(), timeout)
        server.send(response)
        server.close_input()
        stdout, stderr = _read_until_exit(process, server, timeout)
    finally:
        stop_process(process, signal.SIGKILL)
    return Conversation(ClientResult(process.pid, process.returncode, stdout, stderr), received)


def _read_until_exit(
    process: subprocess.Popen[bytes], server: StdioServer, timeout: float
) -> tuple[bytes, bytes]:
    # The client's stdin stays open until it exits by itself: bssl-tool client
    # shuts the connection down on stdin EOF, maybe before it read the answer.
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            stop_process(process, signal.SIGKILL)
            stop_process(server.process, signal.SIGKILL)
            raise TargetError(f"{process.args!r} did not finish in {timeout} s")
        time.sleep(0.02)
    return process.communicate(timeout=timeout)
