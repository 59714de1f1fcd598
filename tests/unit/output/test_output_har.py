from __future__ import annotations

import base64
import copy
import gzip
import json
import stat
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ecapture.errors import ConfigError
from ecapture.output.har import HarWriter

from . import factories

SCHEMA_PATH = Path(__file__).parents[2] / "data" / "har" / "har-1.2.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def exchanges() -> list[Any]:
    text = b'{"message": "hello"}' * 20
    return [
        factories.exchange(),
        factories.exchange(
            request=factories.request(method="POST", target="/api",
                                      headers=((b"Content-Type", b"application/json"),),
                                      body=b'{"a": 1}'),
            response=factories.response(
                body=gzip.compress(text),
                headers=((b"Content-Encoding", b"gzip"),
                         (b"Content-Type", b"application/json"),
                         (b"Set-Cookie", b"id=42; Path=/; Domain=example.test; "
                                         b"Expires=Wed, 21 Oct 2037 07:28:00 GMT; "
                                         b"HttpOnly; Secure"),
                         (b"Location", b"/next"))),
        ),
        factories.exchange(
            request=factories.request(method="PUT", body=b"\x00\xffbinary"),
            response=factories.response(body=bytes(range(256)), body_truncated=True),
        ),
        factories.grpc_exchange(),
        factories.exchange(request=None, complete=False),
        factories.exchange(response=None, complete=False),
    ]


def write_har(path: Path, items: list[Any]) -> dict[str, Any]:
    writer = HarWriter(str(path), "tls")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # created at once, private
    for item in items:
        writer.write(item)
    writer.write(factories.tls_data())  # not part of a HAR
    writer.write(factories.lost())
    writer.flush()
    writer.close()
    writer.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def test_har_validates_and_loads_back(
    tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    items = exchanges()
    document = write_har(tmp_path / "out.har", items)
    validator.validate(document)
    entries = document["log"]["entries"]
    assert len(entries) == len(items)
    assert document["log"]["version"] == "1.2"
    assert document["log"]["creator"]["name"] == "ecapture"


def test_har_entry_fields(tmp_path: Path) -> None:
    plain, post, binary, grpc, no_request, no_response = write_har(
        tmp_path / "out.har", exchanges())["log"]["entries"]

    assert plain["startedDateTime"] == "2023-11-14T22:13:20.123Z"
    assert plain["time"] == 2.5
    assert plain["timings"]["send"] + plain["timings"]["wait"] + plain["timings"][
        "receive"] == plain["time"]
    assert (plain["_pid"], plain["_comm"], plain["_conn_id"], plain["_stream_id"]) == (
        4242, "curl", factories.CONN_ID, None)
    assert plain["serverIPAddress"] == "127.0.0.1"
    request = plain["request"]
    assert request["url"] == "https://example.test/index.html?q=1&lang=en"
    assert request["queryString"] == [{"name": "q", "value": "1"},
                                      {"name": "lang", "value": "en"}]
    assert request["cookies"] == [{"name": "session", "value": "abc"},
                                  {"name": "theme", "value": "dark"}]
    assert "postData" not in request
    assert plain["response"]["content"] == {"size": 5, "mimeType": "text/plain",
                                            "text": "hello"}

    assert post["request"]["postData"] == {"mimeType": "application/json",
                                           "text": '{"a": 1}'}
    content = post["response"]["content"]
    decoded_len = len(b'{"message": "hello"}' * 20)
    assert content["text"] == '{"message": "hello"}' * 20 and "encoding" not in content
    assert content["size"] == decoded_len
    assert content["compression"] == decoded_len - post["response"]["bodySize"]
    assert post["response"]["redirectURL"] == "/next"
    [cookie] = post["response"]["cookies"]
    assert cookie == {"name": "id", "value": "42", "path": "/", "domain": "example.test",
                      "expires": "2037-10-21T07:28:00+00:00", "httpOnly": True,
                      "secure": True}

    assert binary["request"]["postData"]["_encoding"] == "base64"
    assert base64.b64decode(binary["request"]["postData"]["text"]) == b"\x00\xffbinary"
    content = binary["response"]["content"]
    assert content["encoding"] == "base64"
    assert base64.b64decode(content["text"]) == bytes(range(256))
    assert binary["response"]["bodySize"] == -1
    assert binary["response"]["_body_truncated"] is True

    assert grpc["_stream_id"] == 1 and grpc["request"]["httpVersion"] == "HTTP/2"
    assert no_request["request"]["_seen"] is False and no_request["_complete"] is False
    assert no_response["response"]["status"] == 0


def test_schema_rejects_a_broken_entry(
    tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    document = write_har(tmp_path / "out.har", [factories.exchange()])
    for breakage in ("no timings", "unknown key", "bad size"):
        broken = copy.deepcopy(document)
        entry = broken["log"]["entries"][0]
        if breakage == "no timings":
            del entry["timings"]
        elif breakage == "unknown key":
            entry["pid"] = 1  # custom fields must start with "_"
        else:
            entry["response"]["bodySize"] = -2
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)


def test_har_path_error_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--har"):
        HarWriter(str(tmp_path / "no-such-dir" / "x.har"), "tls")


def test_empty_capture_is_a_valid_har(
    tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    document = write_har(tmp_path / "empty.har", [])
    validator.validate(document)
    assert document["log"]["entries"] == []
