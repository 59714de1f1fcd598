"""Issue 20: `ecapture gnutls` and `ecapture nss` give the exact plaintext of real programs.

GnuTLS clients (gnutls-cli, wget) against gnutls-serv and nginx, NSS's
tstclnt against selfserv: each request and response once, byte-exact, from
the right process, with its fd and addresses. tstclnt also reads its request
from a file and writes the answer to stdout through the same PR_Read/PR_Write
that carry TLS: neither may show up (the SSL-layer filter of tls.bpf.c).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .capture import (
    Ecapture,
    assert_clean_stop,
    assert_stream_identity,
    capture,
    data_events,
    marker_holders,
    only_stream,
    payload,
    run_tool,
)
from .conftest import require_programs
from .targets import Certificate, Server, _program_server, run_client

pytestmark = pytest.mark.e2e


def marker() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def gnutls_serv(directory: Path, certificate: Certificate) -> Iterator[Server]:
    """gnutls-serv --http: answers each request with an HTML page that echoes its header."""
    require_programs("gnutls-serv")
    with _program_server(
        directory, "gnutls-serv",
        lambda port: ["gnutls-serv", "--http", "--port", str(port), "--x509certfile",
                      str(certificate.cert), "--x509keyfile", str(certificate.key)],
        "gnutls-serv", {},
    ) as server:
        yield server


def nss_database(directory: Path) -> Path:
    """An NSS certificate database with a self-signed 'server' for 127.0.0.1."""
    database = directory / "nssdb"
    database.mkdir(parents=True)
    noise = directory / "noise"
    noise.write_bytes(os.urandom(64))
    subprocess.run(["certutil", "-N", "-d", f"sql:{database}", "--empty-password"],
                   check=True, capture_output=True, timeout=30)
    subprocess.run(["certutil", "-S", "-d", f"sql:{database}", "-n", "server", "-s",
                    "CN=localhost", "-x", "-t", "CT,C,C", "-k", "rsa", "-g", "2048", "-z",
                    str(noise), "-8", "localhost,127.0.0.1", "-m", "1", "-v", "12"],
                   check=True, capture_output=True, timeout=30)
    return database


@contextlib.contextmanager
def selfserv(directory: Path, database: Path) -> Iterator[Server]:
    """NSS's selfserv -H 1: an HTTP/1.0 answer that echoes the request."""
    with _program_server(
        directory, "selfserv",
        lambda port: ["selfserv", "-d", f"sql:{database}", "-n", "server", "-p", str(port),
                      "-H", "1"],
        "selfserv", {},
    ) as server:
        yield server


def http_request(path: str, tag: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Marker: {tag}\r\n"
            "Connection: close\r\n\r\n").encode()


def gnutls_cli(server: Server) -> list[str]:
    """The request goes on its stdin."""
    return ["gnutls-cli", "--insecure", "-p", str(server.port), "127.0.0.1"]


def wget(server: Server, path: str, tag: str) -> list[str]:
    return ["wget", "-q", "--no-check-certificate", "--tries=1", "--timeout=15",
            f"--header=X-Marker: {tag}", "-O", "-", server.url(path)]


def assert_exchange(events: list[dict[str, object]], *, client_pid: int, client_comm: str,
                    server: Server, request_marker: bytes, response_marker: bytes) -> None:
    """The request holding `request_marker` sent once by the client and received once by
    the server with the same bytes, and the response holding `response_marker` likewise."""
    request = only_stream(events, request_marker, client_pid, "send")
    served = only_stream(events, request_marker, server.pid, "recv")
    response = only_stream(events, response_marker, client_pid, "recv")
    answered = only_stream(events, response_marker, server.pid, "send")
    assert request.count(request_marker) == 1
    assert served.count(request_marker) == 1
    assert request.data == served.data
    assert response.data == answered.data
    assert response.data.startswith(b"HTTP/1.")
    for stream in (request, response):
        assert_stream_identity(stream, comm=client_comm, server_port=server.port,
                               client_side=True)
    for stream in (served, answered):
        assert_stream_identity(stream, comm=server.comm, server_port=server.port,
                               client_side=False)


@pytest.mark.parametrize("client", ["gnutls-cli", "wget"])
def test_gnutls_clients_against_gnutls_serv(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path, client: str
) -> None:
    require_programs("gnutls-cli", "wget")
    tag = marker()
    with gnutls_serv(tmp_path / "server", certificate) as server, \
            capture(ecapture, tmp_path / "capture", module="gnutls") as running:
        if client == "gnutls-cli":
            done = run_client(gnutls_cli(server), stdin=http_request(f"/{tag}", tag)).check()
        else:
            done = run_client(wget(server, f"/{tag}", tag)).check()
    result = running.finished()
    assert_clean_stop(result, {done.pid, server.pid})
    assert tag.encode() in done.stdout
    events = result.events
    # gnutls-serv echoes the request's header in its page: the response holds the tag too.
    header = f"X-Marker: {tag}\r\n".encode()
    assert marker_holders(events, header) == {
        (done.pid, "send"), (server.pid, "recv"), (done.pid, "recv"), (server.pid, "send")}
    request_line = f"GET /{tag} HTTP/1.1\r\n".encode()
    assert marker_holders(events, request_line) == {(done.pid, "send"), (server.pid, "recv")}
    assert_exchange(events, client_pid=done.pid, client_comm=client, server=server,
                    request_marker=request_line, response_marker=header)
    closes = [event for event in events if event["type"] == "close" and
              event["pid"] in (done.pid, server.pid)]
    assert closes and all(event["fd"] > 0 for event in closes)


@pytest.mark.parametrize("client", ["gnutls-cli", "wget"])
def test_gnutls_clients_against_nginx(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, client: str
) -> None:
    require_programs("gnutls-cli", "wget")
    tag = marker()
    path = f"/echo/{tag}"
    with capture(ecapture, tmp_path, module="gnutls") as running:
        if client == "gnutls-cli":
            done = run_client(gnutls_cli(nginx), stdin=http_request(path, tag)).check()
        else:
            done = run_client(wget(nginx, path, tag)).check()
    result = running.finished()
    assert_clean_stop(result, {done.pid})
    body = f"echo:{path}\n".encode()
    assert body in done.stdout
    events = result.events
    request_line = f"GET {path} HTTP/1.1\r\n".encode()
    # nginx is OpenSSL's: only the GnuTLS client is seen by `ecapture gnutls`.
    assert marker_holders(events, request_line) == {(done.pid, "send")}
    assert marker_holders(events, body) == {(done.pid, "recv")}
    request = only_stream(events, request_line, done.pid, "send")
    response = only_stream(events, body, done.pid, "recv")
    assert request.count(request_line) == 1 and response.count(body) == 1
    assert bytes(request.data).startswith(request_line)
    assert response.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert bytes(response.data).endswith(body)
    for stream in (request, response):
        assert_stream_identity(stream, comm=client, server_port=nginx.port, client_side=True)
    assert request.key.conn_id == response.key.conn_id


@pytest.mark.parametrize("server_first", [True, False],
                         ids=["server-before-capture", "server-after-capture"])
def test_tstclnt_against_selfserv(
    ecapture: Ecapture, tmp_path: Path, server_first: bool
) -> None:
    """server-before-capture: selfserv imported its listening socket before we ran, so
    its SSL layer id is read from its memory; otherwise SSL_ImportFD tells it."""
    require_programs("selfserv", "tstclnt", "certutil")
    database = nss_database(tmp_path)
    tag = marker()
    request = f"GET /{tag} HTTP/1.0\r\n\r\n".encode()
    request_file = tmp_path / "request.txt"
    request_file.write_bytes(request)
    argv = ["tstclnt", "-h", "127.0.0.1", "-d", f"sql:{database}", "-o", "-A",
            str(request_file)]
    with contextlib.ExitStack() as stack:
        if server_first:
            server = stack.enter_context(selfserv(tmp_path / "server", database))
        running = stack.enter_context(capture(ecapture, tmp_path / "capture", module="nss"))
        if not server_first:
            server = stack.enter_context(selfserv(tmp_path / "server", database))
        done = run_client([*argv, "-p", str(server.port)]).check()
    result = running.finished()
    assert_clean_stop(result, {done.pid, server.pid})
    assert request in done.stdout  # selfserv -H 1 echoes the request
    events = result.events
    # Sent once, received once, echoed once each way: the request file tstclnt
    # PR_Reads and the stdout it PR_Writes the answer to are not TLS.
    assert marker_holders(events, request) == {
        (done.pid, "send"), (server.pid, "recv"), (done.pid, "recv"), (server.pid, "send")}
    ours = [event for event in data_events(events) if event["pid"] in (done.pid, server.pid)]
    assert sum(payload(event).count(request) for event in ours) == 4
    assert_exchange(events, client_pid=done.pid, client_comm="tstclnt", server=server,
                    request_marker=request, response_marker=b"HTTP/1.0 200 OK")
    response = only_stream(events, b"HTTP/1.0 200 OK", done.pid, "recv")
    assert only_stream(events, request, done.pid, "send").key.conn_id == response.key.conn_id
    # selfserv writes its answer with PR_Writev: several vectors, one call, in order.
    answered = only_stream(events, b"HTTP/1.0 200 OK", server.pid, "send")
    assert len({event["offset"] for event in answered.events}) == len(answered.events) > 1
    closes = [event for event in events if event["type"] == "close" and event["pid"] == done.pid]
    assert len(closes) == 1 and closes[0]["conn_id"] == response.key.conn_id


@pytest.mark.parametrize("model", ["keylog", "pcap"])
def test_nss_refuses_other_modes(ecapture: Ecapture, model: str) -> None:
    line = run_tool(ecapture, "nss", "-m", model).error_line()
    assert "PKCS#11" in line and "-m text" in line


def keylog_lines(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_gnutls_keys_equal_the_clients_own_and_decrypt_a_capture(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, version: str
) -> None:
    """gnutls-cli's own SSLKEYLOGFILE is the truth: every line of it is ours, we write
    nothing else for its sessions, and our file alone decrypts dumpcap's capture."""
    require_programs("gnutls-cli", "tshark")
    from .test_keylog_hook import dumpcap  # Wireshark's capture, complete at the end

    tag = marker()
    theirs, ours = tmp_path / "client.keylog", tmp_path / "ours.keylog"
    packets = tmp_path / "dumpcap.pcapng"
    priority = "NORMAL" if version == "1.3" else "NORMAL:-VERS-TLS1.3"
    with capture(ecapture, tmp_path / "capture", "-m", "keylog", "-k", str(ours),
                 module="gnutls") as running, dumpcap(nginx.port, packets):
        done = run_client(
            ["gnutls-cli", "--insecure", "--priority", priority, "-p", str(nginx.port),
             "127.0.0.1"],
            stdin=http_request(f"/echo/{tag}", tag), prefix=("env", f"SSLKEYLOGFILE={theirs}"),
        ).check()
    result = running.finished()
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"echo:/echo/{tag}".encode() in done.stdout
    assert os.stat(ours).st_mode & 0o777 == 0o600
    wanted, written = keylog_lines(theirs), keylog_lines(ours)
    labels = {line.split()[0] for line in wanted}
    assert labels == ({"CLIENT_RANDOM"} if version == "1.2" else {
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"})
    assert wanted <= written
    randoms = {line.split()[1] for line in wanted}
    assert {line for line in written if line.split()[1] in randoms} == wanted
    decrypted = subprocess.run(
        ["tshark", "-r", str(packets), "-o", f"tls.keylog_file:{ours}", "-Y", "http.request",
         "-T", "fields", "-e", "http.request.line"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert f"X-Marker: {tag}\\r\\n" in decrypted.stdout, decrypted.stdout
    plain = subprocess.run(
        ["tshark", "-r", str(packets), "-Y", "http.request", "-T", "fields",
         "-e", "http.request.line"], capture_output=True, text=True, timeout=60, check=True,
    )
    assert tag not in plain.stdout  # the capture alone does not decrypt


def test_gnutls_keylog_needs_a_file(ecapture: Ecapture) -> None:
    line = run_tool(ecapture, "gnutls", "-m", "keylog").error_line()
    assert "-k/--keylogfile" in line
