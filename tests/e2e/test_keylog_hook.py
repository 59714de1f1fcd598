"""The key-log probe without a module: keylog.bpf.o at the hook keylog_hook.py finds.

Each client writes its own key log (SSLKEYLOGFILE, SSLContext.keylog_filename):
every line it writes must be among the lines our probe produced, for curl over
TLS 1.2 (nginx with `ssl_protocols TLSv1.2`) and TLS 1.3 (nghttpd), Python's
ssl, and BoringSSL's bssl-tool. Needs root, kernel BTF and the built objects.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from ecapture.elf.keylog_hook import Convention, find_keylog_hook

from . import targets
from .conftest import require_programs
from .keys import KeyProbe, key_probe
from .targets import (
    BORINGSSL_LIBSSL,
    HOST,
    Certificate,
    Server,
    curl_argv,
    nginx_server,
    run_client,
)

pytestmark = pytest.mark.e2e

WAIT_S = 10.0

TLS13_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET",
}

PYTHON_CLIENT = """
import socket, ssl, sys
host, port, keylog = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.keylog_filename = keylog
with socket.create_connection((host, port), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"GET /index.html HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        sys.stdout.buffer.write(data)
        print(tls.version(), file=sys.stderr)
"""


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[KeyProbe]:
    with key_probe(tmp_path / "ours.keylog") as running:
        yield running


@pytest.fixture(scope="module")
def nginx_tls12(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> Iterator[Server]:
    """nginx that speaks TLS 1.2 only (its shared configuration with one line changed)."""
    require_programs("nginx")
    conf = targets.NGINX_CONF.replace("ssl_protocols TLSv1.2 TLSv1.3;", "ssl_protocols TLSv1.2;")
    assert conf != targets.NGINX_CONF
    with contextlib.ExitStack() as stack:
        # patched only while nginx_server writes its configuration: the session's
        # other nginx must keep TLS 1.3
        with mock.patch.object(targets, "NGINX_CONF", conf):
            server = stack.enter_context(
                nginx_server(tmp_path_factory.mktemp("nginx-tls12"), certificate)
            )
        yield server


def client_lines(path: Path) -> set[str]:
    lines = {line for line in path.read_text().splitlines() if line and not line.startswith("#")}
    assert lines, f"the client wrote no key log to {path}"
    return lines


def labels(lines: set[str]) -> set[str]:
    return {line.split()[0] for line in lines}


def test_curl_tls12_against_nginx(probe: KeyProbe, nginx_tls12: Server, tmp_path: Path) -> None:
    require_programs("curl")
    theirs = tmp_path / "curl.keylog"
    result = run_client(
        curl_argv(nginx_tls12.url("/index.html")), prefix=("env", f"SSLKEYLOGFILE={theirs}")
    ).check()
    assert result.stdout == targets.KNOWN_BODY
    wanted = client_lines(theirs)
    assert labels(wanted) == {"CLIENT_RANDOM"}  # TLS 1.2: the master secret only
    assert probe.wait_for(wanted) == set()
    assert probe.failures == []
    # nginx derives the same secret on its side: seen twice, written once
    seen = [secret for secret in probe.secrets if secret.line() in wanted]
    assert {secret.comm for secret in seen} == {"curl", "nginx"}
    written = probe.path.read_text().splitlines()
    assert all(written.count(line) == 1 for line in wanted)


def test_curl_tls13_against_nghttpd(probe: KeyProbe, nghttpd: Server, tmp_path: Path) -> None:
    require_programs("curl")
    theirs = tmp_path / "curl.keylog"
    result = run_client(
        curl_argv(nghttpd.url("/index.html"), http2=True),
        prefix=("env", f"SSLKEYLOGFILE={theirs}"),
    ).check()
    assert result.stdout == targets.KNOWN_BODY
    wanted = client_lines(theirs)
    assert labels(wanted) >= TLS13_LABELS
    assert probe.wait_for(wanted) == set()
    assert probe.failures == []


def test_python_ssl_keylog_filename(probe: KeyProbe, nginx: Server, tmp_path: Path) -> None:
    theirs = tmp_path / "python.keylog"
    result = run_client(
        [sys.executable, "-c", PYTHON_CLIENT, HOST, str(nginx.port), str(theirs)]
    ).check()
    assert result.stdout.endswith(targets.KNOWN_BODY)
    assert result.stderr.strip() == b"TLSv1.3"
    wanted = client_lines(theirs)
    assert labels(wanted) >= TLS13_LABELS
    assert probe.wait_for(wanted) == set()
    assert probe.failures == []


@pytest.mark.parametrize("version", ["tls1.2", "tls1.3"])
def test_boringssl_client(probe: KeyProbe, nginx: Server, tmp_path: Path, version: str) -> None:
    require_programs("bssl-tool")
    if not BORINGSSL_LIBSSL.is_file():
        pytest.skip(f"{BORINGSSL_LIBSSL} is absent (Debian package android-libboringssl)")
    theirs = tmp_path / "bssl.keylog"
    request = b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = run_client(
        ["bssl-tool", "client", "-connect", nginx.address, "-max-version", version,
         "-min-version", version],
        stdin=request, prefix=("env", f"SSLKEYLOGFILE={theirs}"),
    )
    assert targets.KNOWN_BODY in result.stdout, result.stderr[-500:]
    wanted = client_lines(theirs)
    expected = {"CLIENT_RANDOM"} if version == "tls1.2" else TLS13_LABELS
    assert expected <= labels(wanted)
    assert probe.wait_for(wanted) == set()
    assert probe.failures == []
    assert "bssl-tool" in {secret.comm for secret in probe.secrets if secret.line() in wanted}


def knock_until_written(output: Path, port: int) -> None:
    """Connect to `port` until dumpcap's file grows: then every packet before is in it.

    dumpcap hands packets to the file in blocks (libpcap's TPACKET_V3 ring with a
    buffer timeout) and drops the unfinished block when stopped: a curl exchange
    just before SIGINT was missed whole, and "Capturing on" is printed before
    the first block is live.
    """
    deadline = time.monotonic() + WAIT_S
    while not output.exists() or output.stat().st_size == 0:
        assert time.monotonic() < deadline, "dumpcap wrote no file"
        time.sleep(0.05)
    size = output.stat().st_size
    while output.stat().st_size == size:
        assert time.monotonic() < deadline, "dumpcap wrote no packet"
        with contextlib.suppress(OSError):
            socket.create_connection((HOST, port), timeout=1).close()
        time.sleep(0.1)


@contextlib.contextmanager
def dumpcap(port: int, output: Path) -> Iterator[None]:
    """Wireshark's own capture tool on lo, `tcp port N`, capturing all of the block."""
    require_programs("dumpcap")
    process = subprocess.Popen(
        ["dumpcap", "-q", "-i", "lo", "-f", f"tcp port {port}", "-w", str(output)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "Capturing on 'Loopback: lo'"
        assert b"Capturing on" in line, line + process.stderr.read()
        knock_until_written(output, port)
        yield
        knock_until_written(output, port)
    finally:
        targets.stop_process(process, signal.SIGINT)


@pytest.mark.parametrize("tls_max", ["1.2", "1.3"])
def test_our_key_log_decrypts_an_independent_capture(
    probe: KeyProbe, nginx: Server, tmp_path: Path, tls_max: str
) -> None:
    require_programs("curl", "tshark")
    marker = f"keylog-marker-{tls_max}"
    capture = tmp_path / "dumpcap.pcapng"
    theirs = tmp_path / "curl.keylog"
    with dumpcap(nginx.port, capture):
        run_client(
            [*curl_argv(nginx.url("/index.html"), headers=[f"X-Marker: {marker}"]),
             "--tls-max", tls_max],
            prefix=("env", f"SSLKEYLOGFILE={theirs}"),
        ).check()
        assert probe.wait_for(client_lines(theirs)) == set()
    probe.writer.close()
    ours = tmp_path / "only-ours.keylog"  # our lines and nothing else
    ours.write_text(probe.path.read_text())
    result = subprocess.run(
        ["tshark", "-r", str(capture), "-o", f"tls.keylog_file:{ours}", "-Y", "http.request",
         "-T", "fields", "-e", "http.request.line"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert f"X-Marker: {marker}\\r\\n" in result.stdout, result.stdout
    without = subprocess.run(
        ["tshark", "-r", str(capture), "-Y", "http.request", "-T", "fields",
         "-e", "http.request.line"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert marker not in without.stdout  # the capture alone does not decrypt


NODE_CLIENT = r"""
const tls = require("tls"), fs = require("fs");
const [host, port, keylog] = process.argv.slice(1);
const socket = tls.connect({host, port: Number(port), rejectUnauthorized: false}, () => {
    socket.write("GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
});
socket.on("keylog", (line) => fs.appendFileSync(keylog, line));
socket.on("data", (data) => process.stdout.write(data));
socket.on("error", (error) => { console.error(error); process.exit(1); });
"""


def test_node_client_with_openssl_built_in(probe: KeyProbe, nginx: Server, tmp_path: Path) -> None:
    """node links OpenSSL statically (non-PIE, nss_keylog_int inlined into ssl_log_secret):
    its own hook, found the same way; its 'keylog' events are the lines to match."""
    require_programs("node")
    node = Path(shutil.which("node") or "node").resolve()
    hook = find_keylog_hook(node)
    assert hook.convention is Convention.LOG_SECRET
    probe.loaded.attach_uprobe("on_ssl_log_secret", node, offset=hook.file_offset,
                               cookie=hook.cookie)
    theirs = tmp_path / "node.keylog"
    result = run_client(["node", "-e", NODE_CLIENT, HOST, str(nginx.port), str(theirs)]).check()
    assert result.stdout.endswith(targets.KNOWN_BODY)
    wanted = client_lines(theirs)
    assert labels(wanted) >= TLS13_LABELS
    assert probe.wait_for(wanted) == set()
    assert probe.failures == []
    assert "node" in {secret.comm for secret in probe.secrets if secret.line() in wanted}
