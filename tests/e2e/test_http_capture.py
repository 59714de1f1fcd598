"""Issue 3: HTTP/1.1 and HTTP/2 exchanges parsed from the captured plaintext,
as JSON "http" events and as a HAR 1.2 file."""

from __future__ import annotations

import base64
import gzip
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from .capture import Ecapture, Event, assert_clean_stop, capture
from .conftest import require_programs
from .targets import KNOWN_BODY, Server, curl_argv, run_client, urllib_argv

pytestmark = pytest.mark.e2e

HAR_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "har" / "har-1.2.schema.json"


def http_events(events: list[Event], pid: int) -> list[Event]:
    return [event for event in events if event["type"] == "http" and event["pid"] == pid]


def body_of(part: dict[str, Any]) -> bytes:
    """The decoded body of a request or response: text, or base64 when binary."""
    if part.get("body_b64") is not None:
        return base64.b64decode(part["body_b64"])
    return str(part.get("body") or "").encode()


def header(part: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in part["headers"] if key.lower() == name.lower()]


def the_exchange(events: list[Event], pid: int, path: str) -> Event:
    found = [event for event in http_events(events, pid) if event["path"] == path]
    paths = [event["path"] for event in http_events(events, pid)]
    assert len(found) == 1, f"{len(found)} http events of {pid} for {path}; seen {paths}"
    return found[0]


def test_curl_http2_against_nghttpd(ecapture: Ecapture, nghttpd: Server, tmp_path: Path) -> None:
    require_programs("curl")
    marker = uuid.uuid4().hex
    with capture(ecapture, tmp_path) as running:
        argv = curl_argv(nghttpd.url("/index.html"), http2=True, headers=[f"X-Marker: {marker}"])
        client = run_client(argv).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, nghttpd.pid})
    assert client.stdout == KNOWN_BODY

    for pid in (client.pid, nghttpd.pid):
        exchange = the_exchange(result.events, pid, "/index.html")
        assert exchange["method"] == "GET"
        assert exchange["status"] == 200
        assert "2" in str(exchange["version"]), exchange["version"]
        assert exchange["stream_id"] is not None and exchange["stream_id"] % 2 == 1
        assert exchange["authority"] == f"127.0.0.1:{nghttpd.port}"
        assert exchange["complete"] is True
        assert exchange["dst"] == f"127.0.0.1:{nghttpd.port}"  # dst is the server
        assert exchange["fd"] > 0
        assert header(exchange["request"], "x-marker") == [marker]
        assert header(exchange["request"], "user-agent")[0].startswith("curl/")
        assert exchange["response"]["status"] == 200
        assert body_of(exchange["response"]) == KNOWN_BODY
        assert exchange["response"]["body_len"] == len(KNOWN_BODY)
        assert header(exchange["response"], "content-length") == [str(len(KNOWN_BODY))]
    assert the_exchange(result.events, client.pid, "/index.html")["comm"] == "curl"


def test_urllib_against_nginx_with_gzip(ecapture: Ecapture, nginx: Server, tmp_path: Path) -> None:
    """HTTP/1.1 from Python's SSL_*_ex calls; a gzip response body comes out decoded."""
    marker = uuid.uuid4().hex
    with capture(ecapture, tmp_path) as running:
        argv = urllib_argv(
            nginx.url(f"/echo/{marker}"),
            nginx.url("/text.txt"),
            headers=[f"X-Marker: {marker}", "Accept-Encoding: gzip"],
        )
        client = run_client(argv).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, nginx.pid})
    text = nginx.files["/text.txt"]
    echo_body = f"echo:/echo/{marker}\n".encode()
    assert client.stdout.startswith(echo_body)
    compressed = client.stdout[len(echo_body) :]
    assert compressed != text and gzip.decompress(compressed) == text  # nginx did compress

    echo = the_exchange(result.events, client.pid, f"/echo/{marker}")
    assert echo["method"] == "GET"
    assert echo["status"] == 200
    assert echo["version"] in ("1.1", "HTTP/1.1")
    assert echo["complete"] is True
    assert header(echo["request"], "x-marker") == [marker]
    assert body_of(echo["response"]) == echo_body
    gzipped = the_exchange(result.events, client.pid, "/text.txt")
    assert header(gzipped["response"], "content-encoding") == ["gzip"]
    assert body_of(gzipped["response"]) == text
    assert gzipped["conn_id"] != echo["conn_id"]  # urllib: one connection per request
    served = the_exchange(result.events, nginx.pid, f"/echo/{marker}")
    assert served["status"] == 200
    assert body_of(served["response"]) == echo_body


def test_har_file_holds_every_exchange(ecapture: Ecapture, nginx: Server, tmp_path: Path) -> None:
    markers = [uuid.uuid4().hex for _ in range(3)]
    har_path = tmp_path / "capture.har"
    with capture(ecapture, tmp_path, "--har", str(har_path)) as running:
        urls = [nginx.url(f"/echo/{marker}") for marker in markers] + [nginx.url("/index.html")]
        client = run_client(urllib_argv(*urls)).check()
    result = running.finished()
    assert_clean_stop(result, {client.pid, nginx.pid})
    assert client.stdout.endswith(KNOWN_BODY)
    assert os.stat(har_path).st_mode & 0o777 == 0o600
    document = json.loads(har_path.read_bytes())

    entries = document["log"]["entries"]
    for marker in markers:
        matching = [entry for entry in entries if entry["request"]["url"].endswith(f"/{marker}")]
        # one entry from urllib's side, one from nginx's: both were captured
        assert len(matching) == 2, [entry["request"]["url"] for entry in entries]
        for entry in matching:
            assert entry["request"]["method"] == "GET"
            assert entry["response"]["status"] == 200
            assert entry["response"]["content"]["text"] == f"echo:/echo/{marker}\n"
    index = [entry for entry in entries if entry["request"]["url"].endswith("/index.html")]
    assert len(index) == 2
    assert all(entry["response"]["content"]["text"] == KNOWN_BODY.decode() for entry in index)

    if not HAR_SCHEMA.exists():
        pytest.skip(f"{HAR_SCHEMA} is absent: the HAR was checked, not validated")
    import jsonschema

    jsonschema.Draft202012Validator(json.loads(HAR_SCHEMA.read_text())).validate(document)
