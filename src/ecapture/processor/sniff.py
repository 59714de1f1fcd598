"""Recognise where HTTP messages start, from content alone.

We observe from outside and may see either end of a connection, so the
client→server direction is the one whose bytes open with a request line
(RFC 9112 §3) or the HTTP/2 connection preface (RFC 9113 §3.4); a status
line (RFC 9112 §4) marks server→client.
"""

from __future__ import annotations

import enum
import re

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Method tokens are uppercase in practice (RFC 9110 §9.1 registers only
# uppercase ones); being strict here keeps body bytes from passing as a start
# when resynchronising. Any token may open a line; the common methods also
# match right after other bytes, because after a gap the next message often
# follows the unseen tail of a body on the same "line".
# A line may end in a bare LF (RFC 9112 §2.2: a recipient MAY accept one).
_TARGET_AND_VERSION = rb" [^\x00-\x20\x7f]{1,65536} HTTP/1\.[01]\r?\n"
_REQUEST_LINE = (
    rb"(?:^[A-Z][A-Z0-9_-]{0,31}|(?<![A-Z])(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT))"
    + _TARGET_AND_VERSION
)
_STATUS_LINE = rb"HTTP/1\.[01] [0-9]{3}(?: [^\r\n]{0,1024})?\r?\n"

REQUEST_START = re.compile(rb"(?m)" + _REQUEST_LINE)
RESPONSE_START = re.compile(_STATUS_LINE)
ANY_START = re.compile(rb"(?m)(?P<request>" + _REQUEST_LINE + rb")|" + _STATUS_LINE)

# Every HTTP/1 start line contains this; a plain `in` test is far cheaper
# than the regex and lets most body bytes pass without one.
START_MARKER = b"HTTP/1."

MAX_START_LINE = 8192  # a longer partial line is not waited for
START_TAIL = 2048  # bytes kept from a long line while scanning: a status line fits


class Start(enum.Enum):
    REQUEST = "request"
    RESPONSE = "response"
    HTTP2 = "http2"


class Sniff(enum.Enum):
    NEED_MORE = "need-more"  # could still become a message start
    NO = "no"  # these bytes do not open a message


def _is_settings_frame_start(data: bytes | bytearray) -> bool:
    """An HTTP/2 server may send SETTINGS (RFC 9113 §3.4) before the client's
    preface is captured: a frame header of type 4 on stream 0."""
    return (
        len(data) >= 9 and data[3] == 0x4 and data[5:9] == b"\0\0\0\0"
        and int.from_bytes(data[0:3], "big") % 6 == 0
    )


def sniff_start(data: bytes | bytearray) -> Start | Sniff:
    """What the first bytes of one direction of a connection are."""
    if data[:24] == HTTP2_PREFACE[: len(data)]:
        return Start.HTTP2 if len(data) >= len(HTTP2_PREFACE) else Sniff.NEED_MORE
    if _is_settings_frame_start(data):
        return Sniff.NEED_MORE  # wait for the other direction's preface
    end = data.find(b"\n")
    if end < 0:
        head = data[:64]
        if (
            len(data) < MAX_START_LINE and head[:1].isupper()
            and head.isascii() and not any(byte < 0x20 and byte != 0x0D for byte in head)
        ):
            return Sniff.NEED_MORE
        return Sniff.NO
    match = ANY_START.match(data, 0, end + 1)
    if match is None:
        return Sniff.NO
    return Start.REQUEST if match.group("request") is not None else Start.RESPONSE
