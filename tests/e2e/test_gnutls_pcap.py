"""`ecapture gnutls -m pcap`: the packets and the GnuTLS secrets in one pcapng, decrypted by
plain `tshark -r FILE` (no key file: the Decryption Secrets Blocks must suffice).

Real programs in a network namespace of the test's own (its loopback only: no other
capture on the machine's `lo` can hold the TC hook or add packets): gnutls-cli against
gnutls-serv (both ends GnuTLS: every secret derived twice, written once) and wget against
nginx (OpenSSL's: the client's secrets only), each over TLS 1.2 and TLS 1.3. The client's
own SSLKEYLOGFILE (GnuTLS honours it) is the truth the DSB lines must equal; tshark shows
the request and the response markers, each once, byte for byte; the file is 0600, written
while the capture runs, and never through a symlink.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import targets
from .capture import Ecapture, RunningCapture, assert_clean_stop, capture, run_tool
from .conftest import require_programs
from .targets import Certificate, Server, run_client

pytestmark = pytest.mark.e2e

INTERFACE = "lo"
WAIT_S = 10.0
# The servers listen in a namespace of their own, on the HTTPS port: plain tshark picks a
# dissector by port, and a random one may be registered to another protocol (a CI run drew
# one that tshark read as CBSP, and so never tried TLS on it).
HTTPS_PORT = 443
TLS13_LABELS = {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"}
LABELS = {"1.2": {"CLIENT_RANDOM"}, "1.3": TLS13_LABELS}
# GnuTLS priority strings: gnutls-cli --priority, wget --ciphers (wget's
# --secure-protocol=TLSv1_2 is a minimum: it still gets TLS 1.3).
PRIORITY = {"1.2": "NORMAL:-VERS-ALL:+VERS-TLS1.2", "1.3": "NORMAL:-VERS-ALL:+VERS-TLS1.3"}
# pcapng (draft-ietf-opsawg-pcapng): block type and total length, then the body; a
# Decryption Secrets Block's body starts with its secrets type and length.
DSB_TYPE = 0x0000000A
EPB_TYPE = 0x00000006
TLS_KEY_LOG = 0x544C534B  # "TLSK"


def marker() -> str:
    return uuid.uuid4().hex


# -- a network namespace of our own, and the servers in it -------------------------------


@contextlib.contextmanager
def network_namespace() -> Iterator[tuple[str, ...]]:
    """A new network namespace with loopback up; yields the prefix that runs a command
    in it (`ip netns exec` also mounts its /sys, where ecapture reads the link type)."""
    require_programs("ip")
    name = f"ecap-gnutls-pcap-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", INTERFACE, "up"], check=True,
                       capture_output=True, timeout=10)
        yield ("ip", "netns", "exec", name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True,
                       timeout=10)


@contextlib.contextmanager
def started(argv: Sequence[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` until the block ends, once it listens on `port` in its namespace."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        targets.wait_for_port(port, process, log, namespace_pid=process.pid)
        yield process
    finally:
        targets.stop_process(process)


@contextlib.contextmanager
def gnutls_serv(directory: Path, certificate: Certificate, netns: tuple[str, ...],
                answer: bytes) -> Iterator[Server]:
    """gnutls-serv --http answering every request with `answer` (--httpdata: with a
    Content-Length, so tshark's HTTP dissector sees where the response ends)."""
    require_programs("gnutls-serv")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "answer.txt"
    data.write_bytes(answer)
    port = HTTPS_PORT
    argv = [*netns, "gnutls-serv", "--http", f"--httpdata={data}", "--port", str(port),
            "--x509certfile", str(certificate.cert), "--x509keyfile", str(certificate.key)]
    log = directory / "gnutls-serv.log"
    with started(argv, port, log) as process:
        yield Server(port, process.pid, process, "gnutls-serv", directory, {}, log)


@contextlib.contextmanager
def nginx(directory: Path, certificate: Certificate, netns: tuple[str, ...]) -> Iterator[Server]:
    """The tests' nginx (targets.NGINX_CONF: TLS 1.2 and 1.3, /echo/), in the namespace."""
    require_programs("nginx")
    directory.mkdir(parents=True, exist_ok=True)
    files = targets.write_site(directory / "html")
    port = HTTPS_PORT
    conf = directory / "nginx.conf"
    conf.write_text(targets.NGINX_CONF.format(
        prefix=directory, host=targets.HOST, port=port, cert=certificate.cert,
        key=certificate.key, root=directory / "html"))
    log = directory / "error.log"
    with started([*netns, "nginx", "-p", str(directory), "-c", str(conf), "-e", str(log)],
                 port, directory / "nginx.out") as process:
        worker = targets._wait_for_child(process, log)
        yield Server(port, worker, process, "nginx", directory, files, log)


# -- what the pcapng holds, read without ecapture's code ---------------------------------


def pcapng_blocks(path: Path) -> list[tuple[int, bytes]]:
    """(type, body) of every whole block (a block still being written is left out)."""
    data = path.read_bytes() if path.exists() else b""
    blocks: list[tuple[int, bytes]] = []
    at = 0
    while at + 12 <= len(data):
        kind, total = struct.unpack_from("<II", data, at)
        if total < 12 or total % 4 or at + total > len(data):
            break
        blocks.append((kind, data[at + 8:at + total - 4]))
        at += total
    return blocks


def dsb_lines(path: Path) -> list[str]:
    """The key log lines of every Decryption Secrets Block, in file order."""
    lines: list[str] = []
    for kind, body in pcapng_blocks(path):
        if kind == DSB_TYPE:
            secrets_type, length = struct.unpack_from("<II", body)
            assert secrets_type == TLS_KEY_LOG, hex(secrets_type)
            lines += body[8:8 + length].decode().splitlines()
    return lines


def keylog_lines(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


def tshark(*argv: str | Path) -> str:
    """Plain tshark: no key file, no preference."""
    require_programs("tshark")
    result = subprocess.run(["tshark", *map(str, argv)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def shown(data: bytes) -> str:
    """`data` as tshark -T fields prints a string field (CR, LF, tab and backslash
    escaped); only for the printable ASCII our markers are made of."""
    assert all(32 <= byte < 127 or byte in b"\r\n" for byte in data), data
    return (data.decode().replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
            .replace("\t", "\\t"))


HTTP_FIELDS = ("http.request.method", "http.request.uri", "http.request.version",
               "http.request.line", "http.response.code", "http.file_data")


@dataclass(frozen=True, slots=True)
class HttpRow:
    method: str
    uri: str
    version: str
    lines: str  # the header lines, each as tshark shows it, joined by ","
    code: str
    body: str


def http_rows(path: Path) -> list[HttpRow]:
    fields = [argument for name in HTTP_FIELDS for argument in ("-e", name)]
    out = tshark("-r", path, "-Y", "http", "-T", "fields", *fields)
    return [HttpRow(*row.split("\t")) for row in out.splitlines()]


def wait_for(what: str, done: Callable[[], bool], running: RunningCapture) -> None:
    """Poll `done()` while the capture runs; fail saying `what` after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"{what}, not after {WAIT_S} s:\n" \
            f"{running.stderr_text()}"
        time.sleep(0.2)


# -- one run, and its checks --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    server: Server
    client_comm: str
    argv: list[str]
    stdin: bytes
    path: str  # the request's URI
    header: bytes  # the marker header line the request carries
    body: bytes  # the response body


def run_and_check(ecapture: Ecapture, netns: tuple[str, ...], directory: Path, version: str,
                  exchange: Exchange) -> tuple[list[HttpRow], Path]:
    require_programs("tshark", "capinfos")
    theirs, output = directory / "client.keylog", directory / "ours.pcapng"
    server = exchange.server
    tool = Ecapture((*netns, *ecapture.argv))
    with capture(tool, directory / "capture", "-m", "pcap", "-w", str(output), "-i",
                 INTERFACE, "tcp", "port", str(server.port), module="gnutls") as running:
        done = run_client(exchange.argv, stdin=exchange.stdin,
                          prefix=(*netns, "env", f"SSLKEYLOGFILE={theirs}")).check()
        wanted = keylog_lines(theirs)
        # Written as they arrive: the secrets, then the decrypted exchange, before any stop.
        wait_for("the client's secrets are not in the pcapng",
                 lambda: wanted <= set(dsb_lines(output)), running)
        wait_for("tshark decrypts no response from the pcapng yet",
                 lambda: any(row.code for row in http_rows(output)), running)
    result = running.finished()
    assert_clean_stop(result, {done.pid, server.pid})
    assert exchange.body in done.stdout
    info = output.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600

    # The DSB lines are the client's own key log: all of it, and nothing else for its
    # handshake (the server derives the same secrets: written once).
    assert {line.split()[0] for line in wanted} == LABELS[version]
    written = dsb_lines(output)
    randoms = {line.split()[1] for line in wanted}
    mine = [line for line in written if line.split()[1] in randoms]
    assert sorted(mine) == sorted(wanted), (mine, wanted)
    blocks = sum(1 for kind, _ in pcapng_blocks(output) if kind == DSB_TYPE)
    found = re.search(r"(\d+) packets to .* (\d+) secrets blocks", result.stderr)
    assert found and int(found[2]) == blocks, result.stderr
    packets = sum(1 for kind, _ in pcapng_blocks(output) if kind == EPB_TYPE)
    assert int(found[1]) == packets >= 10, result.stderr
    capinfos = subprocess.run(["capinfos", str(output)], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    assert re.search(rf"Number of decryption secrets in file: {blocks}\b", capinfos), capinfos

    # Each new secret is one `secret` event of the client or the server, never its value.
    events = [event for event in result.events if event["type"] == "secret"
              and event["client_random"] in randoms]
    assert len(events) == len(wanted), events
    assert {event["comm"] for event in events} <= {exchange.client_comm, server.comm}
    values = {line.split()[2] for line in wanted}
    assert not any(value in str(event) for event in result.events for value in values)

    # Plain tshark decrypts: the request once with its marker, the response once with its.
    rows = http_rows(output)
    requests = [row for row in rows if row.method]
    responses = [row for row in rows if row.code]
    assert [row.uri for row in requests] == [exchange.path], rows
    assert requests[0].lines.split(",").count(shown(exchange.header)) == 1, requests
    assert [(row.code, row.body) for row in responses] == [("200", shown(exchange.body))], rows
    exported = directory / "objects"
    tshark("-r", output, "--export-objects", f"http,{exported}")
    assert [file.read_bytes() for file in exported.iterdir()] == [exchange.body]
    check_comments(output, server, done.pid, exchange.client_comm)
    return rows, output


def check_comments(output: Path, server: Server, client_pid: int, client_comm: str) -> None:
    """Each packet the client sent names the client; each the server sent data in
    names the server."""
    rows = [row.split("\t") for row in tshark(
        "-r", output, "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.len", "-e",
        "frame.comment").splitlines()]
    from_client = [row for row in rows if row[0] != str(server.port)]
    from_server = [row for row in rows if row[0] == str(server.port) and int(row[1]) > 0]
    assert from_client and all(f"pid {client_pid} " in row[2] and f"comm {client_comm}"
                               in row[2] for row in from_client), from_client
    assert from_server and all(f"comm {server.comm}" in row[2] for row in from_server), \
        from_server


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_gnutls_cli_against_gnutls_serv(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path, version: str
) -> None:
    require_programs("gnutls-cli")
    tag = marker()
    header = f"X-Marker: {tag}\r\n".encode()
    request = f"GET /{tag} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + header + \
        b"Connection: close\r\n\r\n"
    answer = f"gnutls-serv answer {tag}\n".encode()
    with network_namespace() as netns, \
            gnutls_serv(tmp_path / "server", certificate, netns, answer) as server:
        rows, _ = run_and_check(ecapture, netns, tmp_path, version, Exchange(
            server, "gnutls-cli",
            ["gnutls-cli", "--insecure", "--priority", PRIORITY[version], "-p",
             str(server.port), "127.0.0.1"],
            request, f"/{tag}", header, answer))
    # The whole request, byte for byte, as tshark shows it.
    (sent,) = [row for row in rows if row.method]
    head = f"{sent.method} {sent.uri} {sent.version}\r\n".encode()
    lines = sent.lines.split(",")
    assert [shown(line + b"\r\n") for line in request.split(b"\r\n")[1:-2]] == lines
    assert head == request.split(b"\r\n", 1)[0] + b"\r\n"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_wget_against_nginx(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path, version: str
) -> None:
    require_programs("wget")
    tag = marker()
    path = f"/echo/{tag}"
    with network_namespace() as netns, nginx(tmp_path / "nginx", certificate, netns) as server:
        run_and_check(ecapture, netns, tmp_path, version, Exchange(
            server, "wget",
            ["wget", "-q", "--no-check-certificate", "--tries=1", "--timeout=15",
             f"--ciphers={PRIORITY[version]}", f"--header=X-Marker: {tag}",
             "-O", "-", server.url(path)],
            b"", path, f"X-Marker: {tag}\r\n".encode(), f"echo:{path}\n".encode()))


def test_pcap_flags_are_checked_before_anything_runs(ecapture: Ecapture,
                                                     tmp_path: Path) -> None:
    """One error line each; -w through a symlink is refused and its target left as it was."""
    assert "-m pcap needs -w/--pcapfile" in run_tool(ecapture, "gnutls", "-m",
                                                     "pcap").error_line()
    assert "-m pcap needs -i/--ifname" in run_tool(
        ecapture, "gnutls", "-m", "pcap", "-w", str(tmp_path / "p.pcapng")).error_line()
    assert "-w/--pcapfile is for -m pcap" in run_tool(
        ecapture, "gnutls", "-w", str(tmp_path / "p.pcapng")).error_line()
    target = tmp_path / "target"
    target.write_bytes(b"not to be touched")
    os.chmod(target, 0o644)
    link = tmp_path / "link.pcapng"
    link.symlink_to(target)
    line = run_tool(ecapture, "gnutls", "-m", "pcap", "-w", str(link), "-i",
                    INTERFACE).error_line()
    assert "symbolic link" in line and str(link) in line, line
    assert target.read_bytes() == b"not to be touched"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not (tmp_path / "p.pcapng").exists()
