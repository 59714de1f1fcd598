"""Issue 15 item 4: control bytes and ESC in HTTP/1 headers, captured at both ends.

curl and Python's http.client send control bytes in a request header as
given; Python's http.server answers with an ESC in a header value. llhttp
rejects both heads, and the parser used to lose sync: no `http` event, the
loss counted nowhere. Every exchange must now come out as an `http` event
at the client and at the server, with the header bytes exact, and nothing
lost.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .capture import Ecapture, Event, assert_clean_stop, capture
from .conftest import require_programs
from .targets import (
    PROGRAMS,
    Certificate,
    Server,
    _program_server,
    comm_of,
    curl_argv,
    run_client,
    urllib_argv,
)

pytestmark = pytest.mark.e2e

CURL_CTL = "a\x01b\x7f\x1b[0m"  # what curl -H $'X-Ctl: a\x01b\x7f\x1b[0m' sends
PYTHON_CTL = "p\x1b[1m\x02q\x7f"


@pytest.fixture
def hostile_server(tmp_path: Path, certificate: Certificate) -> Iterator[Server]:
    with _program_server(
        tmp_path / "server", "hostile-https",
        lambda port: [sys.executable, str(PROGRAMS / "hostile_https_server.py"), str(port),
                      str(certificate.cert), str(certificate.key)],
        comm_of(sys.executable), {},
    ) as server:
        yield server


def _exchanges(events: list[Event], pid: int, path: str) -> list[Event]:
    return [event for event in events
            if event["type"] == "http" and event["pid"] == pid and event["path"] == path]


def _header(part: dict[str, object], name: str) -> list[str]:
    headers = part["headers"]
    assert isinstance(headers, list)
    return [value for key, value in headers if key.lower() == name.lower()]


def _check_esc(exchange: Event, marker: str, ctl: str) -> None:
    assert exchange["complete"] is True, exchange
    assert exchange["method"] == "GET" and exchange["status"] == 200
    assert _header(exchange["request"], "x-ctl") == [ctl]
    response = exchange["response"]
    assert _header(response, "x-esc") == [f"\x1b[31m{marker}\x1b[0m"]
    assert _header(response, "x-echo-ctl") == [ctl]
    assert response["body"] == f"esc:{marker}\n"


def test_control_bytes_in_headers_at_both_ends(
    ecapture: Ecapture, hostile_server: Server, tmp_path: Path
) -> None:
    require_programs("curl")
    curl_marker, python_marker = uuid.uuid4().hex, uuid.uuid4().hex
    har_path = tmp_path / "capture.har"
    with capture(ecapture, tmp_path / "capture", "--har", str(har_path)) as running:
        # curl: the hostile exchange, then a plain one on the same connection
        argv = curl_argv(hostile_server.url(f"/esc/{curl_marker}"), headers=[f"X-Ctl: {CURL_CTL}"])
        argv += ["--next", "-sS", "-k", "--http1.1", hostile_server.url(f"/plain/{curl_marker}")]
        curl = run_client(argv).check()
        python = run_client(urllib_argv(
            hostile_server.url(f"/esc/{python_marker}"), headers=[f"X-Ctl: {PYTHON_CTL}"],
        )).check()
    result = running.finished()
    assert_clean_stop(result, {curl.pid, python.pid, hostile_server.pid})
    assert curl.stdout == f"esc:{curl_marker}\nplain:/plain/{curl_marker}\n".encode()
    assert python.stdout == f"esc:{python_marker}\n".encode()

    for pid in (curl.pid, hostile_server.pid):  # the client's view and the server's
        (escaped,) = _exchanges(result.events, pid, f"/esc/{curl_marker}")
        _check_esc(escaped, curl_marker, CURL_CTL)
        (plain,) = _exchanges(result.events, pid, f"/plain/{curl_marker}")
        assert plain["complete"] is True and plain["response"]["body"] == (
            f"plain:/plain/{curl_marker}\n")
        assert plain["conn_id"] == escaped["conn_id"]  # in sync on the kept-alive connection
    for pid in (python.pid, hostile_server.pid):
        (escaped,) = _exchanges(result.events, pid, f"/esc/{python_marker}")
        _check_esc(escaped, python_marker, PYTHON_CTL)

    ours = {curl.pid, python.pid, hostile_server.pid}
    http = [event for event in result.events if event["type"] == "http" and event["pid"] in ours]
    assert len(http) == 2 * 3  # three exchanges, each seen at both ends: nothing else
    lost = [event for event in result.events
            if event["type"] == "lost" and event.get("pid") in ours]
    assert lost == []

    entries = json.loads(har_path.read_bytes())["log"]["entries"]
    for path in (f"/esc/{curl_marker}", f"/plain/{curl_marker}", f"/esc/{python_marker}"):
        assert len([e for e in entries if e["request"]["url"].endswith(path)]) == 2, path
