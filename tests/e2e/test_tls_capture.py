"""Issue 2: `ecapture tls` gives the exact plaintext of real TLS programs.

Each test drives real clients and servers on 127.0.0.1 while the tool runs,
then finds unique markers in the reassembled streams of the JSON events and
checks who sent them (pid, comm, direction, fd, addresses).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from ecapture.elf.symbols import Executable

from .capture import (
    Ecapture,
    assert_clean_stop,
    assert_stream_identity,
    capture,
    data_events,
    marker_holders,
    only_stream,
    streams_of,
)
from .conftest import require_programs
from .targets import (
    AS_NOBODY,
    BORINGSSL_LIBSSL,
    KNOWN_BODY,
    NOBODY_UID,
    Certificate,
    GatedClient,
    Server,
    comm_of,
    curl_argv,
    node_https_server,
    nonblocking_client_argv,
    openssl_s_server,
    python_https_server,
    run_client,
    stdio_conversation,
    urllib_argv,
)

pytestmark = pytest.mark.e2e

PLACEMENTS = ["auto", "exported"]
# HPACK (RFC 7541 appendix B) codes each of these in 10..15 bits, so an
# encoder that picks the shorter form sends the value as a raw literal and it
# stays findable in the HTTP/2 plaintext (a hex marker would be Huffman-coded).
LONG_HUFFMAN = "!#$()+<>?@[]^{|}"


def hex_marker() -> str:
    return uuid.uuid4().hex


def header_marker() -> str:
    """A unique header value that no HPACK encoder compresses."""
    return "".join(LONG_HUFFMAN[int(digit, 16)] for digit in uuid.uuid4().hex)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_curl_against_nginx(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, placement: str, http2: bool
) -> None:
    require_programs("curl")
    path_marker, value = hex_marker(), header_marker()
    echo_url, index_url = nginx.url(f"/echo/{path_marker}"), nginx.url("/index.html")
    with capture(ecapture, tmp_path, "--probe-placement", placement) as running:
        argv = curl_argv(echo_url, http2=http2, headers=[f"X-Marker: {value}"])
        client = run_client([*argv, index_url]).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, nginx.pid})
    assert os.stat(result.events_path).st_mode & 0o777 == 0o600
    echo_body = f"echo:/echo/{path_marker}\n".encode()
    assert client.stdout == echo_body + KNOWN_BODY

    events = result.events
    header = value.encode()
    assert marker_holders(events, header) == {(client.pid, "send"), (nginx.pid, "recv")}
    request = only_stream(events, header, client.pid, "send")
    served = only_stream(events, header, nginx.pid, "recv")
    response = only_stream(events, echo_body, client.pid, "recv")
    answered = only_stream(events, echo_body, nginx.pid, "send")
    assert KNOWN_BODY in response.data
    assert KNOWN_BODY in answered.data
    if not http2:
        request_line = f"GET /echo/{path_marker} HTTP/1.1\r\n".encode()
        assert bytes(request.data).startswith(request_line)
        assert bytes(served.data).startswith(request_line)
        assert request.data == served.data  # both ends saw the same request bytes
        assert response.data == answered.data
    client_end = {
        assert_stream_identity(request, comm="curl", server_port=nginx.port, client_side=True),
        assert_stream_identity(response, comm="curl", server_port=nginx.port, client_side=True),
        assert_stream_identity(served, comm="nginx", server_port=nginx.port, client_side=False),
        assert_stream_identity(answered, comm="nginx", server_port=nginx.port, client_side=False),
    }
    assert len(client_end) == 1  # the client's port is the same seen from either end
    assert request.key.conn_id == response.key.conn_id
    assert all(event["uid"] == 0 for event in request.events + served.events)


def client_fds(stderr: bytes) -> list[int]:
    return [int(fd) for fd in re.findall(rb"fd=(\d+)", stderr)]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_python_urllib_against_python_server(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path, placement: str
) -> None:
    """Both ends call only SSL_read_ex/SSL_write_ex."""
    path_marker, value = hex_marker(), hex_marker()
    with (
        python_https_server(tmp_path / "server", certificate) as server,
        capture(ecapture, tmp_path / "capture", "--probe-placement", placement) as running,
    ):
        argv = urllib_argv(
            server.url(f"/echo/{path_marker}"),
            server.url("/index.html"),
            headers=[f"X-Marker: {value}"],
        )
        client = run_client(argv).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, server.pid})
    echo_body = f"echo:/echo/{path_marker}\n".encode()
    assert client.stdout == echo_body + KNOWN_BODY
    first_fd = client_fds(client.stderr)[0]

    events = result.events
    # urllib sends the header on both connections; the path names the first.
    request_line = f"GET /echo/{path_marker} HTTP/1.1\r\n".encode()
    assert marker_holders(events, request_line) == {(client.pid, "send"), (server.pid, "recv")}
    request = only_stream(events, request_line, client.pid, "send")
    assert bytes(request.data).startswith(request_line)
    assert f"\r\nX-Marker: {value}\r\n".encode() in request.data
    served = only_stream(events, request_line, server.pid, "recv")
    assert served.data == request.data
    response = only_stream(events, echo_body, client.pid, "recv")
    assert response.data.endswith(b"\r\n\r\n" + echo_body)
    answered = only_stream(events, echo_body, server.pid, "send")
    assert answered.data == response.data
    # urllib opens one connection per URL: the body comes on a second one.
    index = only_stream(events, KNOWN_BODY, client.pid, "recv")
    assert index.key.conn_id != response.key.conn_id
    comm = comm_of(sys.executable)
    for stream in (request, response):
        assert_stream_identity(
            stream, comm=comm, server_port=server.port, client_side=True, fd=first_fd
        )
    for stream in (served, answered):
        assert_stream_identity(stream, comm=comm, server_port=server.port, client_side=False)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_openssl_s_client_against_s_server(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path, placement: str
) -> None:
    """SSL_read/SSL_write (not _ex) on both ends, marker both ways."""
    require_programs("openssl")
    asked = f"client-{hex_marker()}\n".encode()
    answer = f"server-{hex_marker()}\n".encode()
    with (
        openssl_s_server(tmp_path / "server", certificate) as server,
        capture(ecapture, tmp_path / "capture", "--probe-placement", placement) as running,
    ):
        argv = ["openssl", "s_client", "-connect", server.address, "-quiet"]
        talk = stdio_conversation(server, argv, asked, answer)
    result = running.finished()
    assert_clean_stop(result, {talk.client.pid, server.pid})
    assert talk.client.check().stdout == answer

    events = result.events
    client_pid = talk.client.pid
    assert marker_holders(events, asked) == {(client_pid, "send"), (server.pid, "recv")}
    assert marker_holders(events, answer) == {(server.pid, "send"), (client_pid, "recv")}
    assert only_stream(events, asked, client_pid, "send").data == asked
    assert only_stream(events, asked, server.pid, "recv").data == asked
    assert only_stream(events, answer, client_pid, "recv").data == answer
    assert only_stream(events, answer, server.pid, "send").data == answer
    for pid, client_side in ((client_pid, True), (server.pid, False)):
        for stream in streams_of(events, pid, "send") + streams_of(events, pid, "recv"):
            assert_stream_identity(
                stream, comm="openssl", server_port=server.port, client_side=client_side
            )


def test_boringssl_client_with_libssl_flag(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path
) -> None:
    """bssl-tool links Android's BoringSSL libssl.so.0 (SSL_write/SSL_read, no _ex)."""
    require_programs("bssl-tool", "openssl")
    if not BORINGSSL_LIBSSL.exists():
        pytest.skip(f"{BORINGSSL_LIBSSL} is absent (Debian package android-libboringssl)")
    asked = f"bssl-{hex_marker()}\n".encode()
    answer = f"reply-{hex_marker()}\n".encode()
    with (
        openssl_s_server(tmp_path / "server", certificate) as server,
        capture(ecapture, tmp_path / "capture", "--libssl", str(BORINGSSL_LIBSSL)) as running,
    ):
        argv = ["bssl-tool", "client", "-connect", server.address]
        talk = stdio_conversation(server, argv, asked, answer)
    result = running.finished()
    assert_clean_stop(result, {talk.client.pid, server.pid})
    assert talk.client.check().stdout == answer

    events = result.events
    pid = talk.client.pid
    # Only the BoringSSL library is hooked: s_server's libssl.so.3 is not.
    assert marker_holders(events, asked) == {(pid, "send")}
    assert marker_holders(events, answer) == {(pid, "recv")}
    assert {event["pid"] for event in data_events(events)} == {pid}
    sent = only_stream(events, asked, pid, "send")
    received = only_stream(events, answer, pid, "recv")
    assert sent.data == asked
    assert received.data == answer
    for stream in (sent, received):
        assert_stream_identity(stream, comm="bssl-tool", server_port=server.port, client_side=True)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_one_mebibyte_response_whole_and_in_order(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, placement: str
) -> None:
    require_programs("curl")
    body = nginx.files["/big.bin"]
    with capture(ecapture, tmp_path, "--probe-placement", placement) as running:
        client = run_client(curl_argv(nginx.url("/big.bin"))).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, nginx.pid})
    assert client.stdout == body

    received = [s for s in streams_of(result.events, client.pid, "recv") if body[:4096] in s.data]
    assert len(received) == 1
    head, separator, captured_body = bytes(received[0].data).partition(b"\r\n\r\n")
    assert separator and head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(captured_body) == len(body)
    assert captured_body == body
    served = [s for s in streams_of(result.events, nginx.pid, "send") if body[:4096] in s.data]
    assert len(served) == 1
    assert served[0].data == received[0].data


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_one_mebibyte_write_arrives_in_chunks(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path, placement: str
) -> None:
    """Python's server writes the whole body with one SSL_write_ex: a 1 MiB call
    comes as 16 KiB chunks of one conn_id with increasing offsets."""
    with (
        python_https_server(tmp_path / "server", certificate) as server,
        capture(ecapture, tmp_path / "capture", "--probe-placement", placement) as running,
    ):
        client = run_client(urllib_argv(server.url("/big.bin"))).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, server.pid})
    body = server.files["/big.bin"]
    assert client.stdout == body

    sent = [s for s in streams_of(result.events, server.pid, "send") if body[:4096] in s.data]
    assert len(sent) == 1
    assert bytes(sent[0].data).endswith(b"\r\n\r\n" + body)
    whole_call = [event for event in sent[0].events if event["len"] == len(body)]
    assert [event["offset"] for event in whole_call] == list(range(0, len(body), 16384))
    assert not any(event["truncated"] for event in whole_call)
    received = [s for s in streams_of(result.events, client.pid, "recv") if body[:4096] in s.data]
    assert len(received) == 1
    assert received[0].data == sent[0].data


def test_pid_filter_captures_only_that_process(
    ecapture: Ecapture, nginx: Server, tmp_path: Path
) -> None:
    require_programs("curl")
    wanted, other = hex_marker(), hex_marker()
    with (
        GatedClient(curl_argv(nginx.url(f"/echo/{wanted}"))) as target,
        GatedClient(curl_argv(nginx.url(f"/echo/{other}"))) as bystander,
        capture(ecapture, tmp_path, "-p", str(target.pid)) as running,
    ):
        target.release()
        bystander.release()
        target.wait().check()
        bystander.wait().check()
    result = running.finished()
    assert_clean_stop(result)
    events = result.events
    assert marker_holders(events, wanted.encode()) == {(target.pid, "send"), (target.pid, "recv")}
    assert marker_holders(events, other.encode()) == set()
    assert {event["pid"] for event in events if "pid" in event} == {target.pid}


def test_uid_filter_captures_only_that_user(
    ecapture: Ecapture, nginx: Server, tmp_path: Path
) -> None:
    require_programs("curl", "setpriv")
    wanted, other = hex_marker(), hex_marker()
    with capture(ecapture, tmp_path, "-u", str(NOBODY_UID)) as running:
        as_nobody = run_client(curl_argv(nginx.url(f"/echo/{wanted}")), prefix=AS_NOBODY).check()
        as_root = run_client(curl_argv(nginx.url(f"/echo/{other}"))).check()
    result = running.finished()
    assert_clean_stop(result)
    assert as_nobody.stdout == f"echo:/echo/{wanted}\n".encode()
    assert as_root.stdout == f"echo:/echo/{other}\n".encode()
    events = result.events
    holders = {(as_nobody.pid, "send"), (as_nobody.pid, "recv")}
    assert marker_holders(events, wanted.encode()) == holders
    assert marker_holders(events, other.encode()) == set()  # nor nginx's worker (root)
    assert {event["uid"] for event in events if "uid" in event} == {NOBODY_UID}
    stream = only_stream(events, wanted.encode(), as_nobody.pid, "send")
    assert_stream_identity(stream, comm="curl", server_port=nginx.port, client_side=True)


def test_write_retried_before_handshake_is_captured_once(
    ecapture: Ecapture, nginx: Server, tmp_path: Path
) -> None:
    """A non-blocking client's SSL_write_ex fails (want read) until the handshake
    is done: only the call that succeeded carries plaintext."""
    marker = hex_marker().encode()
    request = b"GET /echo/" + marker + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with capture(ecapture, tmp_path) as running:
        client = run_client(nonblocking_client_argv(nginx.port, request)).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, nginx.pid})
    report = dict(item.split("=") for item in client.stderr.decode().split())
    assert int(report["retries"]) > 0, "the client never had to retry: the test proves nothing"

    events = result.events
    sent = streams_of(events, client.pid, "send")
    assert sum(stream.count(marker) for stream in sent) == 1
    assert only_stream(events, marker, client.pid, "send").data == request
    received = streams_of(events, nginx.pid, "recv")
    assert sum(stream.count(marker) for stream in received) == 1
    assert only_stream(events, marker, nginx.pid, "recv").data == request
    stream = only_stream(events, marker, client.pid, "send")
    assert all(event["fd"] == int(report["fd"]) for event in stream.events)
    assert client.stdout.endswith(b"echo:/echo/" + marker + b"\n")


def test_node_server_found_among_running_processes(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path
) -> None:
    """The machine's node may carry its own OpenSSL (non-PIE, SSL_* exported):
    without --libssl, discovery must find it through the running server."""
    require_programs("node", "curl")
    marker = hex_marker()
    body = f"node-body-{hex_marker()}".encode()
    with (
        node_https_server(tmp_path / "node", certificate, body) as server,
        capture(ecapture, tmp_path / "capture") as running,
    ):
        client = run_client(curl_argv(server.url(f"/{marker}"))).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, server.pid})
    assert client.stdout == body
    received = only_stream(result.events, f"GET /{marker} HTTP/1.1".encode(), server.pid, "recv")
    sent = only_stream(result.events, body, server.pid, "send")
    assert received.data.startswith(f"GET /{marker} HTTP/1.1\r\n".encode())
    # node answers chunked: one chunk with the body, then the last chunk
    assert sent.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sent.data.endswith(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert {event["comm"] for event in data_events(result.events)
            if event["pid"] == server.pid} == {server.comm}
    node = Path(shutil.which("node") or "node").resolve()
    if Executable(node).has("SSL_write"):  # OpenSSL built in: hooked through discovery
        assert f"{node}: openssl" in result.stderr, result.stderr
