"""`--har FILE`: every HTTP exchange as one HAR 1.2 document.

Spec: "HTTP Archive (HAR) format", version 1.2 (Jan Odvarko,
http://www.softwareishard.com/blog/har-12-spec/; W3C Web Performance
draft). Entries are built as exchanges arrive and the document is written
once at close(); the file is created (0600) at construction so that a bad
path fails at start, not after an hour of capture. Custom fields start
with "_", as the spec requires.
"""

from __future__ import annotations

import base64
import contextlib
import os
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from ecapture import __version__
from ecapture.errors import EcaptureError
from ecapture.files import open_private_file
from ecapture.output.base import CutCount
from ecapture.output.content import exchange_url, header_value, header_values, view_body
from ecapture.output.sinks import write_all
from ecapture.processor.model import Headers, HttpExchange, HttpRequest, HttpResponse

HAR_VERSION = "1.2"
NOT_AVAILABLE = -1  # the spec's value for a size or time that is not known

Json = dict[str, Any]


def iso_time(timestamp_ns: int) -> str:
    seconds, nanoseconds = divmod(timestamp_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanoseconds // 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(headers: Headers) -> list[Json]:
    return [
        {"name": name.decode("latin-1"), "value": value.decode("latin-1")}
        for name, value in headers
    ]


def _request_cookies(headers: Headers) -> list[Json]:
    cookies = []
    for value in header_values(headers, b"cookie"):
        for pair in value.decode("latin-1").split(";"):
            name, _, cookie_value = pair.strip().partition("=")
            if name:
                cookies.append({"name": name, "value": cookie_value})
    return cookies


def _response_cookies(headers: Headers) -> list[Json]:
    """Set-Cookie (RFC 6265 §4.1): name=value, then attributes."""
    cookies = []
    for raw in header_values(headers, b"set-cookie"):
        first, *attributes = raw.decode("latin-1").split(";")
        name, _, value = first.strip().partition("=")
        if not name:
            continue
        cookie: Json = {"name": name, "value": value}
        for attribute in attributes:
            key, _, attribute_value = attribute.strip().partition("=")
            key = key.lower()
            if key in ("path", "domain"):
                cookie[key] = attribute_value
            elif key == "expires":
                # An unparsable date is left out rather than guessed.
                with contextlib.suppress(TypeError, ValueError):
                    cookie["expires"] = parsedate_to_datetime(attribute_value).isoformat()
            elif key == "httponly":
                cookie["httpOnly"] = True
            elif key == "secure":
                cookie["secure"] = True
        cookies.append(cookie)
    return cookies


def _text_field(data: bytes) -> tuple[str, str | None]:
    """(text, encoding): UTF-8 as is, anything else base64 (spec: content.encoding)."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _body_size(message: HttpRequest | HttpResponse) -> int:
    # Bytes on the wire after de-chunking; unknown when the parser cut it.
    return NOT_AVAILABLE if message.body_truncated else len(message.body)


def _request(request: HttpRequest | None, fallback_version: str) -> Json:
    if request is None:  # joined mid-stream: the spec has no "unknown request"
        return {
            "method": "", "url": "", "httpVersion": fallback_version, "cookies": [],
            "headers": [], "queryString": [], "headersSize": NOT_AVAILABLE,
            "bodySize": NOT_AVAILABLE, "_seen": False,
        }
    url = exchange_url(request)
    query = urlsplit(request.target).query
    har: Json = {
        "method": request.method,
        "url": url,
        "httpVersion": request.version,
        "cookies": _request_cookies(request.headers),
        "headers": _headers(request.headers),
        "queryString": [
            {"name": name, "value": value}
            for name, value in parse_qsl(query, keep_blank_values=True, errors="replace")
        ],
        # The exact head bytes are not kept (HTTP/2 heads are hpack-coded).
        "headersSize": NOT_AVAILABLE,
        "bodySize": _body_size(request),
    }
    if request.body:
        view = view_body(request)
        text, encoding = _text_field(view.shown)
        post: Json = {
            "mimeType": header_value(request.headers, b"content-type") or "",
            "text": text,
        }
        if encoding is not None:
            post["_encoding"] = encoding  # postData has no encoding field in HAR 1.2
        har["postData"] = post
    if request.body_truncated:
        har["_body_truncated"] = True
    return har


def _response(response: HttpResponse | None, fallback_version: str) -> Json:
    if response is None:  # closed before the answer; browsers write status 0 too
        return {
            "status": 0, "statusText": "", "httpVersion": fallback_version, "cookies": [],
            "headers": [], "content": {"size": 0, "mimeType": ""}, "redirectURL": "",
            "headersSize": NOT_AVAILABLE, "bodySize": NOT_AVAILABLE, "_seen": False,
        }
    content: Json = {
        "size": len(response.body),
        "mimeType": header_value(response.headers, b"content-type") or "",
    }
    if response.body:
        view = view_body(response)
        content["size"] = view.full_len
        if view.decoded:
            # "Number of bytes saved" by the content coding (spec: content.compression).
            content["compression"] = view.full_len - len(response.body)
        text, encoding = _text_field(view.shown)
        content["text"] = text
        if encoding is not None:
            content["encoding"] = encoding
    har: Json = {
        "status": response.status,
        "statusText": response.reason,
        "httpVersion": response.version,
        "cookies": _response_cookies(response.headers),
        "headers": _headers(response.headers),
        "content": content,
        "redirectURL": header_value(response.headers, b"location") or "",
        "headersSize": NOT_AVAILABLE,
        "bodySize": _body_size(response),
    }
    if response.body_truncated:
        har["_body_truncated"] = True
    return har


def har_entry(exchange: HttpExchange) -> Json:
    request = exchange.request
    response = exchange.response
    version = request.version if request is not None else (
        response.version if response is not None else ""
    )
    total_ms = max(exchange.finished_ns - exchange.started_ns, 0) / 1e6
    connection = exchange.connection
    entry: Json = {
        "startedDateTime": iso_time(exchange.started_ns),
        "time": total_ms,
        "request": _request(request, version),
        "response": _response(response, version),
        "cache": {},
        "timings": {
            # Only the span from the exchange's start to its end is known.
            "send": 0, "wait": total_ms, "receive": 0,
            "comment": "ecapture measures only the total; it is reported as wait",
        },
        "connection": str(connection.conn_id),
        "_pid": connection.pid,
        "_comm": connection.comm,
        "_conn_id": connection.conn_id,
        "_stream_id": exchange.stream_id,
        "_complete": exchange.complete,
    }
    if connection.server is not None:
        entry["serverIPAddress"] = connection.server.ip
    return entry


class HarWriter:
    """Collects HTTP exchanges; other items are not part of a HAR."""

    def __init__(self, path: str, module: str) -> None:
        self.path = path
        self.module = module
        self.cut = CutCount()  # HAR keeps whole bodies: -t does not apply
        self._entries: list[Json] = []
        self._fd: int | None = open_private_file(path, "--har")

    def write(self, item: object) -> None:  # HTTP exchanges only
        if isinstance(item, HttpExchange):
            self._entries.append(har_entry(item))

    def flush(self) -> None:
        """Nothing to do per batch: the document is written at close()."""

    def document(self) -> Json:
        return {
            "log": {
                "version": HAR_VERSION,
                "creator": {"name": "ecapture", "version": __version__},
                "entries": self._entries,
                "comment": f"captured by ecapture {self.module}",
            }
        }

    def close(self) -> None:
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            write_all(fd, msgspec.json.format(msgspec.json.encode(self.document()), indent=1))
        except OSError as error:
            raise EcaptureError(
                f"--har {self.path}: writing the HAR file failed: {error.strerror or error}"
            ) from error
        finally:
            os.close(fd)
