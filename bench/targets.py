"""The real programs under load: nginx 1.22 (HTTP/1.1 over TLS) and nghttpd (HTTP/2), each in a
private prefix under a temporary directory, on 127.0.0.1 only, with a self-signed certificate."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import procs, system

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Server:
    """A listening TLS server: `pid` is the process that does the work (nginx's worker)."""

    port: int
    pid: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_certificate(directory: Path) -> Certificate:
    """A throwaway self-signed RSA certificate for 127.0.0.1 (`openssl req -x509`)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    procs.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        timeout=60,
    )
    if not cert.exists():
        raise procs.BenchError("openssl req made no certificate")
    return Certificate(cert, key)


def wait_listening(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise procs.BenchError(f"server exited: {procs.tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise procs.BenchError(
        f"nothing listens on 127.0.0.1:{port} after {timeout} s: {procs.tail(log)}")


@contextlib.contextmanager
def nginx(directory: Path, certificate: Certificate) -> Iterator[Server]:
    """nginx with one worker answering `return 200 "ok"` over TLS."""
    prefix = directory / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, cert=certificate.cert,
                                      key=certificate.key))
    log = prefix / "error.log"
    process = procs.spawn(["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(log)])
    with procs.running(process, first=15):
        wait_listening(port, process, log)
        workers: list[int] = []
        deadline = time.monotonic() + 5
        while not workers and time.monotonic() < deadline:
            workers = system.children(process.pid)
            time.sleep(0.02)
        if not workers:
            raise procs.BenchError("nginx started no worker")
        yield Server(port, workers[0])


@contextlib.contextmanager
def nghttpd(directory: Path, certificate: Certificate) -> Iterator[Server]:
    """nghttpd (nghttp2's server, HTTP/2 over TLS) serving a 2-byte file."""
    docroot = directory / "h2root"
    docroot.mkdir(exist_ok=True)
    (docroot / "index.html").write_text("ok")
    port = free_port()
    log = directory / "nghttpd.log"
    with log.open("wb") as sink:
        process = procs.spawn(
            ["nghttpd", "-d", str(docroot), "--address=127.0.0.1", str(port),
             str(certificate.key), str(certificate.cert)],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    with procs.running(process):
        wait_listening(port, process, log)
        yield Server(port, process.pid)
