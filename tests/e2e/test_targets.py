"""The real programs the e2e tests drive, checked on their own (no ecapture).

If one of these fails, the capture tests that use the same target cannot be
trusted either way.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import require_programs
from .targets import (
    BIG_BODY_SIZE,
    KNOWN_BODY,
    Certificate,
    GatedClient,
    Server,
    boringssl_server,
    comm_of_pid,
    curl_argv,
    in_namespace_of,
    nonblocking_client_argv,
    openssl_s_server,
    python_https_server,
    run_client,
    stdio_conversation,
    urllib_argv,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_nginx_serves_files_and_echo(nginx: Server, http2: bool) -> None:
    require_programs("curl")
    assert comm_of_pid(nginx.pid) == "nginx"
    assert nginx.pid != nginx.process.pid
    assert run_client(curl_argv(nginx.url("/index.html"), http2=http2)).check().stdout == KNOWN_BODY
    big = run_client(curl_argv(nginx.url("/big.bin"), http2=http2)).check().stdout
    assert len(big) == BIG_BODY_SIZE
    assert big == nginx.files["/big.bin"]
    echo = run_client(curl_argv(nginx.url("/echo/abc?x=1"), http2=http2)).check()
    assert echo.stdout == b"echo:/echo/abc?x=1\n"


def test_big_body_has_no_short_period(nginx: Server) -> None:
    big = nginx.files["/big.bin"]
    # A misplaced 16 KiB chunk must not compare equal by accident.
    assert big[:16384] != big[16384:32768]
    assert len(set(big[i : i + 64] for i in range(0, BIG_BODY_SIZE, 4096))) == BIG_BODY_SIZE // 4096


def test_nghttpd_speaks_http2_only(nghttpd: Server) -> None:
    require_programs("curl")
    argv = [*curl_argv(nghttpd.url("/index.html"), http2=True), "-w", "%{http_version}"]
    result = run_client(argv)
    assert result.check().stdout == KNOWN_BODY + b"2"


def test_python_server_and_urllib_client(tmp_path: Path, certificate: Certificate) -> None:
    with python_https_server(tmp_path, certificate) as server:
        result = run_client(
            urllib_argv(server.url("/index.html"), server.url("/echo/m1"), headers=["X-Marker: m"])
        ).check()
    assert result.stdout == KNOWN_BODY + b"echo:/echo/m1\n"
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2
    assert all(re.fullmatch(r"status=200 fd=\d+ len=\d+ url=\S+", line) for line in lines)


def test_nonblocking_client_retries_before_the_handshake_ends(nginx: Server) -> None:
    request = b"GET /echo/nonblocking HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    result = run_client(nonblocking_client_argv(nginx.port, request)).check()
    report = dict(item.split("=") for item in result.stderr.decode().split())
    assert int(report["retries"]) > 0
    assert int(report["sent"]) == len(request)
    assert result.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert result.stdout.endswith(b"echo:/echo/nonblocking\n")


@pytest.mark.parametrize(
    "client",
    [["openssl", "s_client", "-quiet"], ["bssl-tool", "client"]],
    ids=["s_client", "bssl-tool"],
)
def test_s_server_conversation(tmp_path: Path, certificate: Certificate, client: list[str]) -> None:
    require_programs(client[0])
    with openssl_s_server(tmp_path, certificate) as server:
        argv = [*client[:2], "-connect", server.address, *client[2:]]
        talk = stdio_conversation(server, argv, b"request-from-client\n", b"answer-from-server\n")
    assert b"request-from-client\n" in talk.server_received
    assert talk.client.check().stdout == b"answer-from-server\n"


def test_boringssl_server_in_its_own_network_namespace(
    tmp_path: Path, certificate: Certificate
) -> None:
    require_programs("bssl-tool", "unshare", "nsenter", "ip", "curl")
    with boringssl_server(tmp_path, certificate) as server:
        assert comm_of_pid(server.pid) == "bssl-tool"
        result = run_client(
            curl_argv(f"https://127.0.0.1:{server.port}/"), prefix=in_namespace_of(server.pid)
        ).check()
    # bssl-tool -www answers with a report of the connection it served.
    assert b"Version: TLSv1.3" in result.stdout


def test_gated_client_keeps_its_pid_across_exec(nginx: Server) -> None:
    require_programs("curl")
    with GatedClient(curl_argv(nginx.url("/index.html"))) as client:
        pid = client.pid
        assert comm_of_pid(pid) == "sh"
        client.release()
        result = client.wait().check()
    assert result.pid == pid
    assert result.stdout == KNOWN_BODY
