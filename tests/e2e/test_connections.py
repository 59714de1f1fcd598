"""Issue 15: every connection has its own id, ends exactly once, and keeps its
parser state however long it is idle.

Real programs on 127.0.0.1: Python's http.server behind urllib (it frees an
SSL and allocates the next connection's at the same address), a C client
that reuses ONE SSL* with SSL_clear, and an HTTP/2 client (the h2 library)
that leaves its connection to nghttpd idle between two requests.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .capture import (
    STOP_TIMEOUT_S,
    CaptureError,
    Ecapture,
    Event,
    assert_clean_stop,
    capture,
    data_events,
    streams,
)
from .conftest import require_programs
from .targets import (
    PROGRAMS,
    Certificate,
    Server,
    python_https_server,
    run_client,
    urllib_argv,
)

pytestmark = pytest.mark.e2e

ROUNDS = range(3)  # the merge this guards against was intermittent: run each case repeatedly
CONNECTIONS = 8
# One text block per exchange starts: "HH:MM:SS.ffffff COMM pid P fd F conn C ..."
TEXT_EXCHANGE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{6} .+? pid (\d+) fd (-?\d+) conn (\d+) .*\n> GET (\S+) ",
    re.MULTILINE,
)


def hex_marker() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def text_capture(tool: Ecapture, directory: Path) -> Iterator[Path]:
    """`ecapture tls` in its default text format beside the JSON capture; yields
    the file the text goes to, complete once the block ended."""
    directory.mkdir(parents=True, exist_ok=True)
    output, stderr_path = directory / "capture.txt", directory / "ecapture.stderr"
    with stderr_path.open("wb") as stderr_file:
        process = subprocess.Popen(
            tool.command("tls", "--eventaddr", str(output)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr_file,
        )
    try:
        deadline = 20.0
        waited = 0.0
        while b"ready" not in stderr_path.read_bytes():
            if process.poll() is not None or waited > deadline:
                raise CaptureError(f"text capture not ready:\n{stderr_path.read_text()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
            waited += 0.05
        yield output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 0, stderr_path.read_text()


def of_pid(events: list[Event], kind: str, pid: int) -> list[Event]:
    return [event for event in events if event["type"] == kind and event["pid"] == pid]


def request_conn_ids(events: list[Event], pid: int, direction: str,
                     paths: list[str]) -> dict[str, int]:
    """path -> conn_id of the one stream of `pid` that carries its request line;
    each such stream carries exactly one request."""
    found: dict[str, int] = {}
    for path in paths:
        line = f"GET {path} HTTP/1.1\r\n".encode()
        holders = [stream for key, stream in streams(events).items()
                   if key.pid == pid and key.direction == direction and line in stream.data]
        assert len(holders) == 1, f"{path}: {len(holders)} streams of pid {pid}"
        assert bytes(holders[0].data).count(b"GET ") == 1, holders[0].data[:300]
        found[path] = holders[0].key.conn_id
    return found


def assert_connections_distinct(events: list[Event], pid: int, direction: str,
                                paths: list[str], response: dict[str, bytes]) -> dict[str, int]:
    """Data, http and close events of `pid`: one connection per path, each with
    its own conn_id, its request and response, one close after its last data."""
    ids = request_conn_ids(events, pid, direction, paths)
    assert len(set(ids.values())) == len(paths), ids
    other = "send" if direction == "recv" else "recv"
    all_streams = streams(events)
    for path, conn_id in ids.items():
        answer = [stream for key, stream in all_streams.items()
                  if key.pid == pid and key.conn_id == conn_id and key.direction == other]
        assert len(answer) == 1 and bytes(answer[0].data).endswith(response[path]), path
        chunks = [event for event in data_events(events)
                  if event["pid"] == pid and event["conn_id"] == conn_id]
        assert len({event["fd"] for event in chunks}) == 1, chunks
        assert len({(event["src"], event["dst"]) for event in chunks
                     if event["direction"] == "send"}) == 1
        cookies = {event["socket_cookie"] for event in chunks}
        assert len(cookies) == 1 and None not in cookies, cookies
    # every http event of these paths: once, on the connection its bytes came on
    http = {event["path"]: event for event in of_pid(events, "http", pid)
            if event["path"] in ids}
    assert Counter(event["path"] for event in of_pid(events, "http", pid)
                   if event["path"] in ids) == Counter(paths)
    for path, event in http.items():
        assert (event["conn_id"], event["status"], event["complete"]) == (ids[path], 200, True)
    # one close per connection, after its last data
    closes = Counter(event["conn_id"] for event in of_pid(events, "close", pid))
    for conn_id in ids.values():
        assert closes[conn_id] == 1, (conn_id, closes)
        positions = [index for index, event in enumerate(events)
                     if event["pid"] == pid and event.get("conn_id") == conn_id]
        assert events[positions[-1]]["type"] == "close", events[positions[-1]]
    cookies = [next(e["socket_cookie"] for e in data_events(events)
                    if e["pid"] == pid and e["conn_id"] == conn_id) for conn_id in ids.values()]
    assert len(set(cookies)) == len(paths)  # a socket cookie is never reused
    return ids


@pytest.mark.parametrize("round_", ROUNDS)
def test_sequential_connections_to_python_server_are_distinct(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path, round_: int
) -> None:
    """The server frees each connection's SSL and usually gets the same address
    for the next: every connection must still be its own in JSON, text and HAR."""
    paths = [f"/echo/{hex_marker()}" for _ in range(CONNECTIONS)]
    har = tmp_path / "capture.har"
    with (
        python_https_server(tmp_path / "server", certificate) as server,
        capture(ecapture, tmp_path / "capture", "--har", str(har)) as running,
        text_capture(ecapture, tmp_path / "text") as text_path,
    ):
        client = run_client(urllib_argv(*[server.url(path) for path in paths])).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, server.pid})
    responses = {path: f"echo:{path}\n".encode() for path in paths}
    assert client.stdout == b"".join(responses.values())

    events = result.events
    server_ids = assert_connections_distinct(events, server.pid, "recv", paths, responses)
    client_ids = assert_connections_distinct(events, client.pid, "send", paths, responses)
    client_fds = [int(fd) for fd in re.findall(rb"fd=(\d+)", client.stderr)]
    for path, fd in zip(paths, client_fds, strict=True):
        assert {e["fd"] for e in data_events(events)
                if e["conn_id"] == client_ids[path]} == {fd}
    reused = len({e["ssl"] for e in data_events(events) if e["pid"] == server.pid})
    print(f"server: {CONNECTIONS} connections on {reused} distinct SSL* addresses")

    entries = json.loads(har.read_bytes())["log"]["entries"]
    for pid, ids in ((server.pid, server_ids), (client.pid, client_ids)):
        named = {}
        for path, conn_id in ids.items():
            [entry] = [entry for entry in entries
                       if entry["_pid"] == pid and entry["request"]["url"].endswith(path)]
            assert entry["connection"] == str(conn_id)
            assert entry["response"]["content"]["text"] == responses[path].decode()
            named[path] = entry["connection"]
        assert len(set(named.values())) == CONNECTIONS

    # text: one block per exchange and side, each connection with its own id
    blocks = TEXT_EXCHANGE.findall(text_path.read_text())
    for pid in (server.pid, client.pid):
        seen = [(urlsplit(url).path, conn) for block_pid, _, conn, url in blocks
                if int(block_pid) == pid]
        assert sorted(path for path, _ in seen) == sorted(paths), blocks
        assert len({conn for _, conn in seen}) == CONNECTIONS


@pytest.fixture(scope="session")
def ssl_reuse_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/e2e/programs/ssl_reuse_client.c, built against the system libssl."""
    require_programs("gcc")
    if not Path("/usr/include/openssl/ssl.h").exists():
        pytest.skip("needs OpenSSL's headers (Debian package libssl-dev)")
    binary = tmp_path_factory.mktemp("ssl-reuse") / "ssl_reuse_client"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary),
         str(PROGRAMS / "ssl_reuse_client.c"), "-lssl", "-lcrypto"],
        check=True, capture_output=True, timeout=60,
    )
    return binary


# (how the client readies its SSL* for the next connection, the close cause expected), round
REUSE_CASES = [(mode, cause, round_) for mode, cause in (("clear-then-close", "ssl_clear"),
                                                         ("close-then-clear", "tcp"))
               for round_ in range(2)]


@pytest.mark.parametrize("case", REUSE_CASES, ids=[f"{m}-{r}" for m, _, r in REUSE_CASES])
def test_one_ssl_reused_with_ssl_clear_gives_one_id_per_connection(
    ecapture: Ecapture, certificate: Certificate, ssl_reuse_client: Path, tmp_path: Path,
    case: tuple[str, str, int],
) -> None:
    mode, cause, _ = case
    count = 6
    prefix = f"/echo/{hex_marker()}"
    paths = [f"{prefix}-{index}" for index in range(count)]
    with (
        python_https_server(tmp_path / "server", certificate) as server,
        capture(ecapture, tmp_path / "capture") as running,
    ):
        argv = [str(ssl_reuse_client), str(server.port), str(count), mode, prefix]
        client = run_client(argv).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, server.pid})
    pointers = set(re.findall(rb"ssl=(0x[0-9a-f]+)", client.stderr))
    assert len(pointers) == 1, client.stderr  # one SSL* for every connection
    ssl = int(pointers.pop(), 16)
    responses = {path: f"echo:{path}\n".encode() for path in paths}
    for path in paths:
        assert responses[path] in client.stdout

    events = result.events
    ids = assert_connections_distinct(events, client.pid, "send", paths, responses)
    assert_connections_distinct(events, server.pid, "recv", paths, responses)
    assert {e["ssl"] for e in data_events(events) if e["pid"] == client.pid} == {ssl}
    closes = [event for event in of_pid(events, "close", client.pid)
              if event["conn_id"] in ids.values()]
    assert [(event["ssl"], event["cause"]) for event in closes] == [(ssl, cause)] * count
    if cause == "ssl_clear":  # seen in the process, on the thread that called SSL_clear
        assert {event["tid"] for event in closes} == {client.pid}


STATIC_TABLE_ENTRIES = 61  # RFC 7541 appendix A
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def header_blocks(stream: bytes) -> list[bytes]:
    """The header block of every HEADERS frame a client sent (RFC 9113 §4.1, §6.2;
    h2 sends neither padding nor priority nor CONTINUATION for these)."""
    assert stream.startswith(HTTP2_PREFACE)
    position, blocks = len(HTTP2_PREFACE), []
    while position + 9 <= len(stream):
        length = int.from_bytes(stream[position:position + 3], "big")
        kind, flags = stream[position + 3], stream[position + 4]
        if kind == 1:
            assert not flags & 0x28, "padded or prioritised HEADERS"  # PADDED, PRIORITY
            blocks.append(stream[position + 9:position + 9 + length])
        position += 9 + length
    return blocks


@pytest.mark.parametrize("round_", ROUNDS)
def test_http2_connection_idle_then_used_again(
    ecapture: Ecapture, nghttpd: Server, tmp_path: Path, round_: int
) -> None:
    """The tracker has no idle timer (tests/unit/processor/test_tracker.py): a
    gap of several stats ticks must not cost the connection its HPACK table."""
    marker = hex_marker()
    gap_s = 3.0  # three ticks of the capture's periodic work (STATS_INTERVAL_S)
    with capture(ecapture, tmp_path) as running:
        argv = [sys.executable, str(PROGRAMS / "h2_idle_client.py"), str(nghttpd.port),
                str(gap_s), "/index.html", marker]
        client = run_client(argv).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, nghttpd.pid})
    body = nghttpd.files["/index.html"]
    assert client.stdout == body * 2
    assert client.stderr.decode().split() == ["stream=1", "status=200", "stream=3",
                                              "status=200"]

    events = result.events
    sent = [stream for key, stream in streams(events).items()
            if key.pid == client.pid and key.direction == "send"]
    assert len(sent) == 1
    blocks = header_blocks(bytes(sent[0].data))
    assert len(blocks) == 2
    # The second request is all indexed fields (RFC 7541 §6.1: 1xxxxxxx), some
    # past the 61 static entries: only the connection's dynamic table has them.
    assert all(byte & 0x80 for byte in blocks[1]), blocks[1].hex()
    assert any(byte & 0x7F > STATIC_TABLE_ENTRIES for byte in blocks[1]), blocks[1].hex()
    for pid in (client.pid, nghttpd.pid):
        http = [event for event in of_pid(events, "http", pid)
                if event["path"] == "/index.html"]
        assert [event["stream_id"] for event in http] == [1, 3], http
        assert len({event["conn_id"] for event in http}) == 1
        for event in http:
            assert (event["status"], event["complete"]) == (200, True)
            assert ["x-marker", marker] in event["request"]["headers"]
        assert http[1]["ts"] - http[0]["ts"] >= gap_s * 1e9 * 0.9



# Payload bytes of a flood record: 8 (ring header) + 152 (tls_data_event up to
# data[]) + 3900, rounded to 8, is 4064 bytes, leaving 32 of a 4 KiB ring while
# it is pending: less than the 104 a close takes, more than nothing.
FLOOD_RECORD = 3900


@pytest.fixture(scope="session")
def producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/producer.c: paced SSL_write/SSL_read pairs over a socketpair, to flood the ring."""
    require_programs("gcc")
    if not Path("/usr/include/openssl/ssl.h").exists():
        pytest.skip("needs OpenSSL's headers (Debian package libssl-dev)")
    binary = tmp_path_factory.mktemp("producer") / "producer"
    source = Path(__file__).resolve().parents[2] / "bench" / "producer.c"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source), "-lssl", "-lcrypto",
                    "-lpthread"], check=True, capture_output=True, timeout=60)
    return binary


def test_closes_survive_a_full_ring(
    ecapture: Ecapture, certificate: Certificate, producer: Path, tmp_path: Path
) -> None:
    """A 4 KiB ring kept full by a flood of records that each leave less room
    than a close needs: data is lost (and said), but no connection is left
    without its one close, and a close that found the ring full comes after
    the connection's data with a ring_full item naming it."""
    paths = [f"/echo/{hex_marker()}" for _ in range(CONNECTIONS)]
    with (
        python_https_server(tmp_path / "server", certificate) as server,
        capture(ecapture, tmp_path / "capture", "--mapsize", "4") as running,
    ):
        flood = subprocess.Popen(
            [str(producer), str(certificate.cert), str(certificate.key), str(FLOOD_RECORD),
             "20000", "6"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            client = run_client(urllib_argv(*[server.url(path) for path in paths])).check()
        finally:
            flood.wait(timeout=30)
    result = running.finished()
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    assert client.stdout == b"".join(f"echo:{path}\n".encode() for path in paths)

    events = result.events
    closes = Counter(event["conn_id"] for event in events if event["type"] == "close")
    assert [conn_id for conn_id, count in closes.items() if count > 1] == []
    seen = {event["conn_id"] for event in events if event.get("conn_id") is not None
            and event["pid"] in (client.pid, server.pid)}
    assert seen, "nothing of the test's connections got through"
    assert {conn_id for conn_id in seen if closes[conn_id] != 1} == set()
    # a late close: its ring_full item (one record, no bytes), then the close,
    # and no data of that connection after them
    late = [index for index, event in enumerate(events)
            if event["type"] == "lost" and event["reason"] == "ring_full"
            and (event["records"], event["bytes"]) == (1, 0) and event["conn_id"] is not None]
    for index in late:
        conn_id = events[index]["conn_id"]
        after = [event for event in events[index + 1:] if event.get("conn_id") == conn_id]
        assert [event["type"] for event in after if event["type"] != "http"][-1:] == ["close"]
        assert [event for event in after if event["type"] == "data"] == []
    match = re.search(r"(\d+) connection closes found the ring full: (\d+) delivered late",
                      result.stderr)
    assert match is not None, "the flood never filled the ring at a close: the test proves nothing"
    assert int(match.group(2)) >= 1
    print(f"{match.group(0)}; {len(late)} late closes in the stream")


def test_ssl_moved_to_another_socket_ends_its_connection(
    ecapture: Ecapture, certificate: Certificate, tmp_path: Path
) -> None:
    """The same SSL*, the same fd number, another socket (dup2): the first
    connection ends with cause ssl_moved and what follows gets a new id."""
    with capture(ecapture, tmp_path) as running:
        argv = [sys.executable, str(PROGRAMS / "ssl_moved_client.py"), str(certificate.cert),
                str(certificate.key)]
        client = run_client(argv).check()
    result = running.finished()
    report = dict(item.split("=") for item in client.stderr.decode().split())
    server, fd = int(report["server"]), int(report["fd"])
    assert_clean_stop(result, {client.pid, server})
    assert client.stdout.count(b"HTTP/1.1 200 OK") == 2

    events = result.events
    before, after = request_conn_ids(events, client.pid, "send",
                                     ["/before-the-move", "/after-the-move"]).values()
    assert before != after
    chunks = {conn_id: [e for e in data_events(events) if e["conn_id"] == conn_id]
              for conn_id in (before, after)}
    assert {e["fd"] for e in chunks[before] + chunks[after]} == {fd}
    assert len({e["ssl"] for e in chunks[before] + chunks[after]}) == 1  # one SSL*
    cookies = [{e["socket_cookie"] for e in chunks[conn_id]} for conn_id in (before, after)]
    assert len(cookies[0]) == len(cookies[1]) == 1 and cookies[0] != cookies[1]
    [moved] = [e for e in of_pid(events, "close", client.pid) if e["conn_id"] == before]
    assert (moved["cause"], moved["tid"], moved["socket_cookie"]) == (
        "ssl_moved", client.pid, *cookies[0])
    assert Counter(e["conn_id"] for e in of_pid(events, "close", client.pid))[after] <= 1
    # both exchanges parsed, each on its own connection; the server saw one
    http = {e["path"]: e["conn_id"] for e in of_pid(events, "http", client.pid)}
    assert http == {"/before-the-move": before, "/after-the-move": after}
    served = {e["path"]: e["conn_id"] for e in of_pid(events, "http", server)}
    assert set(served) == {"/before-the-move", "/after-the-move"}
    assert len(set(served.values())) == 1
