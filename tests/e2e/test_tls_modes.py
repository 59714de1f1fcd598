"""`ecapture tls -m keylog` and `ecapture tls -m pcap`, the real command against real programs.

Independent verifiers: each client's own key log (SSLKEYLOGFILE,
SSLContext.keylog_filename) must be wholly in ours; tshark decrypts a dumpcap
capture with our key log, and our pcapng with nothing but the file; capinfos
counts its secrets blocks; `tc filter show` says what a killed run left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import targets
from .capture import Ecapture, RunningCapture, capture, run_tool
from .conftest import require_programs
from .targets import BORINGSSL_LIBSSL, HOST, Server, curl_argv, run_client
from .test_keylog_hook import (
    PYTHON_CLIENT,
    TLS13_LABELS,
    client_lines,
    dumpcap,
    labels,
    nginx_tls12,
)

pytestmark = pytest.mark.e2e
__all__ = ["nginx_tls12"]  # a fixture, used by name

WAIT_S = 10.0
INTERFACE = "lo"
TC_NAMES = ("ecap_tc_ingress", "ecap_tc_egress")


def wait_for_lines(path: Path, wanted: set[str]) -> set[str]:
    """Until every wanted line is in our key log (or time is up): the missing."""
    deadline = time.monotonic() + WAIT_S
    while True:
        have = set(path.read_text().splitlines()) if path.exists() else set()
        missing = wanted - have
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.05)


def check_secret_events(running: RunningCapture, wanted: set[str], *comms: str) -> None:
    """Each new secret is one `secret` event naming the process that derived it first (the
    client or, in this capture too, the server); never the secret itself."""
    events = running.finished().events
    secrets = [event for event in events if event["type"] == "secret"]
    randoms = {line.split()[1] for line in wanted}
    mine = [event for event in secrets if event["client_random"] in randoms]
    assert len(mine) == len(wanted), secrets
    assert {event["comm"] for event in mine} <= set(comms), mine
    values = {line.split()[2] for line in wanted}
    assert not any(value in str(event) for event in events for value in values)
    assert running.finished().exit_code == 0, running.finished().stderr
    assert not [event for event in events if event["type"] == "lost"], events


def run_keylog(
    ecapture: Ecapture, tmp_path: Path, argv: list[str], theirs: Path, *extra: str,
    stdin: bytes = b"", env_keylog: bool = True,
) -> tuple[RunningCapture, set[str], bytes]:
    ours = tmp_path / "ours.keylog"
    prefix = ("env", f"SSLKEYLOGFILE={theirs}") if env_keylog else ()
    with capture(ecapture, tmp_path / "capture", "-m", "keylog", "-k", str(ours),
                 *extra) as running:
        result = run_client(argv, stdin=stdin, prefix=prefix)
        wanted = client_lines(theirs)
        assert wait_for_lines(ours, wanted) == set(), running.stderr_text()
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600
    written = ours.read_text().splitlines()
    assert all(written.count(line) == 1 for line in wanted)  # client and server: once
    return running, wanted, result.stdout


def test_keylog_curl_tls12_nginx(ecapture: Ecapture, nginx_tls12: Server, tmp_path: Path) -> None:
    require_programs("curl")
    running, wanted, body = run_keylog(ecapture, tmp_path, curl_argv(nginx_tls12.url(
        "/index.html")), tmp_path / "curl.keylog")
    assert body == targets.KNOWN_BODY
    assert labels(wanted) == {"CLIENT_RANDOM"}
    check_secret_events(running, wanted, "curl", "nginx")
    assert "secrets (" in running.finished().stderr


def test_keylog_curl_tls13_nghttpd(ecapture: Ecapture, nghttpd: Server, tmp_path: Path) -> None:
    require_programs("curl")
    running, wanted, body = run_keylog(
        ecapture, tmp_path, curl_argv(nghttpd.url("/index.html"), http2=True),
        tmp_path / "curl.keylog", "-m", "key")  # eCapture's alias, given last: it wins
    assert body == targets.KNOWN_BODY
    assert labels(wanted) >= TLS13_LABELS
    check_secret_events(running, wanted, "curl", "nghttpd")


def test_keylog_python_ssl(ecapture: Ecapture, nginx: Server, tmp_path: Path) -> None:
    theirs = tmp_path / "python.keylog"
    running, wanted, body = run_keylog(
        ecapture, tmp_path, [sys.executable, "-c", PYTHON_CLIENT, HOST, str(nginx.port),
                             str(theirs)], theirs, env_keylog=False)
    assert body.endswith(targets.KNOWN_BODY)
    assert labels(wanted) >= TLS13_LABELS
    check_secret_events(running, wanted, Path(sys.executable).name[:15], "nginx")


@pytest.mark.parametrize("version", ["tls1.2", "tls1.3"])
def test_keylog_boringssl_client(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, version: str,
) -> None:
    require_programs("bssl-tool")
    if not BORINGSSL_LIBSSL.is_file():
        pytest.skip(f"{BORINGSSL_LIBSSL} is absent (Debian package android-libboringssl)")
    request = b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    running, wanted, body = run_keylog(
        ecapture, tmp_path, ["bssl-tool", "client", "-connect", nginx.address,
                             "-max-version", version, "-min-version", version],
        tmp_path / "bssl.keylog", "--libssl", str(BORINGSSL_LIBSSL), stdin=request)
    assert targets.KNOWN_BODY in body
    assert ({"CLIENT_RANDOM"} if version == "tls1.2" else TLS13_LABELS) <= labels(wanted)
    check_secret_events(running, wanted, "bssl-tool")  # nginx's OpenSSL is not hooked


@pytest.mark.parametrize("tls_max", ["1.2", "1.3"])
def test_our_key_log_decrypts_a_dumpcap_capture(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, tls_max: str,
) -> None:
    require_programs("curl", "tshark")
    marker = f"keylog-mode-marker-{tls_max}"
    ours, theirs, recorded = tmp_path / "ours.keylog", tmp_path / "curl.keylog", \
        tmp_path / "dumpcap.pcapng"
    with capture(ecapture, tmp_path / "capture", "-m", "keylog", "-k", str(ours)) as running, \
            dumpcap(nginx.port, recorded):
        run_client([*curl_argv(nginx.url("/index.html"), headers=[f"X-Marker: {marker}"]),
                    "--tls-max", tls_max], prefix=("env", f"SSLKEYLOGFILE={theirs}")).check()
        assert wait_for_lines(ours, client_lines(theirs)) == set(), running.stderr_text()
    shown = tshark("-r", recorded, "-o", f"tls.keylog_file:{ours}", "-Y", "http.request",
                   "-T", "fields", "-e", "http.request.line")
    assert f"X-Marker: {marker}\\r\\n" in shown, shown
    assert marker not in tshark("-r", recorded, "-Y", "http.request", "-T", "fields",
                                "-e", "http.request.line")


LOOK_ALIKE = r"""
#include <stddef.h>
__attribute__((used)) static const char version[] = "OpenSSL 3.0.98 1 Jan 2026";
int SSL_write(void *s, const void *b, int n) { (void)s; (void)b; return n; }
int SSL_read(void *s, void *b, int n) { (void)s; (void)b; return n; }
"""


def test_a_library_without_a_found_hook_is_one_error_line(
    ecapture: Ecapture, tmp_path: Path,
) -> None:
    """SSL_read and SSL_write, but no key-log labels: refused, naming library and version."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("needs a C compiler (gcc)")
    source, library = tmp_path / "lookalike.c", tmp_path / "libssl_lookalike.so"
    source.write_text(LOOK_ALIKE)
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", str(source), "-o", str(library)],
                   check=True, timeout=60)
    for mode in (("-m", "keylog", "-k", str(tmp_path / "k.log")),
                 ("-m", "pcap", "-w", str(tmp_path / "p.pcapng"), "-i", INTERFACE)):
        # the logs to a file: stderr then holds the error line alone
        line = run_tool(ecapture, "tls", *mode, "--libssl", str(library),
                        "--logaddr", str(tmp_path / "log")).error_line()
        assert str(library) in line and "openssl 3.0.98" in line, line


# -- pcap mode -----------------------------------------------------------------------------


def tshark(*argv: str | Path) -> str:
    require_programs("tshark")
    result = subprocess.run(["tshark", *map(str, argv)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def side_traffic() -> int:
    """A plain TCP exchange on another port of lo: what `tcp port N` must leave out."""
    with socket.create_server((HOST, 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection((HOST, port), timeout=5) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"not ours")
                accepted.recv(64)
    return int(port)


def run_pcap(ecapture: Ecapture, tmp_path: Path, server: Server,
             argv: list[str]) -> tuple[Path, bytes, str]:
    output = tmp_path / "ours.pcapng"
    with capture(ecapture, tmp_path / "capture", "-m", "pcap", "-w", str(output),
                 "-i", INTERFACE, "tcp", "port", str(server.port)) as running:
        result = run_client(argv).check()
        side_traffic()
        time.sleep(0.5)  # the hold window, then a poll: nothing needs it, the stop drains
    finished = running.finished()
    assert finished.exit_code == 0, finished.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    found = re.search(r"(\d+) packets to .* (\d+) secrets blocks", finished.stderr)
    assert found, finished.stderr
    packets, blocks = int(found[1]), int(found[2])
    assert packets >= 10 and blocks >= 4, finished.stderr
    left_out = re.search(r"\((\d+) left out by the filter", finished.stderr)
    assert left_out and int(left_out[1]) >= 3, finished.stderr  # the side exchange
    assert not [event for event in finished.events if event["type"] == "lost"]
    info = subprocess.run(["capinfos", str(output)], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert f"Number of decryption secrets in file: {blocks}" in info, info
    assert f"Number of packets:   {packets}" in info or re.search(
        rf"Number of packets:\s+{packets}\b", info), info
    ports = tshark("-r", output, "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport")
    assert all(str(server.port) in row.split("\t") for row in ports.splitlines()), ports
    return output, result.stdout, tshark("-r", output)


def check_comments(output: Path, server: Server) -> None:
    """Every packet curl sent names curl."""
    rows = [row.split("\t") for row in tshark(
        "-r", output, "-T", "fields", "-e", "tcp.srcport", "-e", "frame.comment").splitlines()]
    from_curl = [row for row in rows if row[0] != str(server.port)]
    assert from_curl and all("comm curl" in row[1] for row in from_curl), from_curl


def test_pcap_http1_decrypts_with_the_file_alone(
    ecapture: Ecapture, nginx: Server, tmp_path: Path,
) -> None:
    require_programs("curl", "capinfos")
    output, body, summary = run_pcap(ecapture, tmp_path, nginx, curl_argv(
        nginx.url("/index.html"), headers=["X-Marker: pcap-4711"]))
    assert body == targets.KNOWN_BODY
    assert "GET /index.html HTTP/1.1" in summary and "HTTP/1.1 200 OK" in summary, summary
    exported = tmp_path / "objects"
    tshark("-r", output, "--export-objects", f"http,{exported}")
    assert (exported / "index.html").read_bytes() == targets.KNOWN_BODY
    assert "X-Marker: pcap-4711\\r\\n" in tshark("-r", output, "-Y", "http.request", "-T",
                                                 "fields", "-e", "http.request.line")
    check_comments(output, nginx)


def test_pcap_http2_decrypts_with_the_file_alone(
    ecapture: Ecapture, nghttpd: Server, tmp_path: Path,
) -> None:
    require_programs("curl", "capinfos")
    output, body, summary = run_pcap(ecapture, tmp_path, nghttpd, curl_argv(
        nghttpd.url("/index.html"), http2=True))
    assert body == targets.KNOWN_BODY
    assert "HEADERS[1]: GET /index.html" in summary, summary
    assert "HEADERS[1]: 200 OK" in summary, summary
    data = tshark("-r", output, "-Y", "http2.type == 0", "-T", "fields", "-e", "http2.data.data")
    assert targets.KNOWN_BODY.hex() in data.replace(":", "").replace("\n", "")
    check_comments(output, nghttpd)


def tc_filters(direction: str) -> str:
    return subprocess.run(["tc", "filter", "show", "dev", INTERFACE, direction],
                          capture_output=True, text=True, timeout=10, check=True).stdout


def test_pcap_after_kill_9_the_next_run_leaves_no_filter(
    ecapture: Ecapture, tmp_path: Path,
) -> None:
    require_programs("tc")
    clsact_before = "qdisc clsact" in tc_qdiscs()
    first = subprocess.Popen(
        ecapture.command("tls", "-m", "pcap", "-w", str(tmp_path / "first.pcapng"),
                         "-i", INTERFACE),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert first.stderr is not None
        deadline = time.monotonic() + 20
        while b"ready" not in (line := first.stderr.readline()):
            assert line and time.monotonic() < deadline, "the first run did not start"
        assert all(name in tc_filters(d) for name, d in zip(TC_NAMES, ("ingress", "egress"),
                                                               strict=True))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert "ecap_tc_ingress" in tc_filters("ingress")  # the kernel kept them
    finally:
        targets.stop_process(first, signal.SIGKILL)
    with capture(ecapture, tmp_path / "second", "-m", "pcap", "-w",
                 str(tmp_path / "second.pcapng"), "-i", INTERFACE) as running:
        assert "removed a filter a killed earlier run left behind" in running.stderr_text()
    assert running.finished().exit_code == 0, running.finished().stderr
    shown = {direction: tc_filters(direction) for direction in ("ingress", "egress")}
    assert not any("ecap_tc" in text for text in shown.values()), shown
    # The killed run made the clsact qdisc; no later run can know that, so it stays (a
    # qdisc we did not create is never destroyed). The test knows: it removes an empty one.
    if not clsact_before and "qdisc clsact" in tc_qdiscs() and not any(shown.values()):
        subprocess.run(["tc", "qdisc", "del", "dev", INTERFACE, "clsact"], timeout=10,
                       check=True)


def tc_qdiscs() -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", INTERFACE], capture_output=True,
                          text=True, timeout=10, check=True).stdout


def test_pcap_a_connection_open_before_the_start_is_written_with_its_process(
    ecapture: Ecapture, tmp_path: Path,
) -> None:
    """Packets need no handshake seen: a TCP connection made before ecapture started has
    its later packets written, named after the process that sends them."""
    output = tmp_path / "early.pcapng"
    marker = b"sent-after-the-start-4242"
    with socket.create_server((HOST, 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection((HOST, port), timeout=5)
        accepted, _ = server.accept()
        with client, accepted, capture(ecapture, tmp_path / "capture", "-m", "pcap", "-w",
                                       str(output), "-i", INTERFACE, "tcp", "port", str(port)):
            client.sendall(marker)
            assert accepted.recv(64) == marker
            time.sleep(0.3)
    rows = tshark("-r", output, "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.payload",
                  "-e", "frame.comment").splitlines()
    assert [row.split("\t")[0].replace(":", "") for row in rows] == [marker.hex()], rows
    comm = Path("/proc/self/comm").read_text().strip()
    assert f"pid {os.getpid()} " in rows[0] and f"comm {comm}" in rows[0], rows


def test_pcap_a_full_packets_ring_is_lost_events_and_the_summary(
    ecapture: Ecapture, nginx: Server, tmp_path: Path,
) -> None:
    """A 4 KiB packets ring cannot hold loopback's 64 KiB segments of a 1 MiB download: the
    kernel counts them, and each count becomes `lost` events (ring_full) and the summary."""
    require_programs("curl")
    output = tmp_path / "small.pcapng"
    with capture(ecapture, tmp_path / "capture", "-m", "pcap", "-w", str(output), "-i",
                 INTERFACE, "--mapsize", "4", "tcp", "port", str(nginx.port)) as running:
        result = run_client(curl_argv(nginx.url("/big.bin"))).check()
        assert len(result.stdout) == targets.BIG_BODY_SIZE
        time.sleep(1.5)  # one counter check a second: some are reported while running
    finished = running.finished()
    assert finished.exit_code == 0, finished.stderr
    lost = [event for event in finished.events
            if event["type"] == "lost" and event["reason"] == "ring_full"]
    records = sum(event["records"] for event in lost)
    assert records > 0 and sum(event["bytes"] for event in lost) > 0, finished.events[-5:]
    found = re.search(r"summary: .* (\d+) packets lost,", finished.stderr)
    assert found and int(found[1]) == records, finished.stderr  # the kernel's own count
    summary = re.search(r"lost or cut: .*ring_full (\d+) records", finished.stderr)
    assert summary and int(summary[1]) == records, finished.stderr
