from __future__ import annotations

import gzip
from datetime import UTC
from typing import Any

from ecapture.events import Direction
from ecapture.output.text import TextWriter, escape_text, hex_dump

from . import factories
from .conftest import MemorySink


def render(*items: Any, **options: Any) -> tuple[str, TextWriter]:
    sink = MemorySink()
    writer = TextWriter("tls", sink, timezone=UTC, **options)
    for item in items:
        writer.write(item)
    writer.close()
    return sink.data.decode("utf-8"), writer


def test_hex_dump_layout_is_exact() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\x00\xff"
    assert hex_dump(data) == (
        "00000000  47 45 54 20 2f 20 48 54  54 50 2f 31 2e 31 0d 0a  |GET / HTTP/1.1..|\n"
        "00000010  48 6f 73 74 3a 20 61 00  ff                       |Host: a..|"
    )
    assert hex_dump(b"") == ""


def test_escape_text_neutralises_terminal_controls() -> None:
    assert escape_text(b"a\r\nb\tc\x1b[31mred\x00\xff\rx") == (
        "a\nb\tc\\x1b[31mred\\x00\\xff\\x0dx")
    assert escape_text("évil\u202etxt".encode()) == "évil\\u202etxt"


def test_unparsed_block_as_hex() -> None:
    text, _ = render(factories.unparsed(data=b"\x16\x03\x01hello", call_len=8),
                     hex_dump=True)
    assert text == (
        "22:13:20.123456 curl pid 4242 fd 5 conn 139641712656111 send 127.0.0.1:51234 → "
        "127.0.0.1:8443 "
        "8 bytes [not-http]\n"
        "00000000  16 03 01 68 65 6c 6c 6f                           |...hello|\n"
        "\n"
    )


def test_unparsed_block_as_text_with_chunk_offset() -> None:
    event = factories.unparsed(data=b"PING\r\n", call_len=20000, offset=16384,
                               direction=Direction.RECV)
    text, _ = render(event)
    assert text == (
        "22:13:20.123456 curl pid 4242 fd 5 conn 139641712656111 recv 127.0.0.1:8443 → "
        "127.0.0.1:51234 "
        "6 bytes (offset 16384 of a 20000-byte call) [not-http]\n"
        "PING\n"
        "\n"
    )


def test_tsize_cut_is_said_and_counted() -> None:
    text, writer = render(factories.unparsed(data=b"x" * 250), tsize=100)
    assert "x" * 100 + "\n... 150 more bytes not shown (-t 100)\n" in text
    assert "x" * 101 not in text
    assert (writer.cut.records, writer.cut.bytes) == (1, 150)


def test_exchange_block() -> None:
    text, _ = render(factories.exchange())
    assert text == (
        "22:13:20.123456 curl pid 4242 fd 5 conn 139641712656111 127.0.0.1:51234 → "
        "127.0.0.1:8443 HTTP/1.1 "
        "2.500 ms\n"
        "> GET https://example.test/index.html?q=1&lang=en HTTP/1.1\n"
        "> Host: example.test\n"
        "> User-Agent: curl/7.88.1\n"
        "> Cookie: session=abc; theme=dark\n"
        ">\n"
        "< HTTP/1.1 200 OK\n"
        "< Content-Type: text/plain\n"
        "< Content-Length: 5\n"
        "<\n"
        "hello\n"
        "\n"
    )


def test_exchange_decoded_binary_and_cut_bodies() -> None:
    compressed = gzip.compress(b"compressed text")
    text, writer = render(
        factories.exchange(response=factories.response(
            body=compressed, headers=((b"content-encoding", b"gzip"),))),
        factories.exchange(response=factories.response(body=b"\xff\xfe\x00\x01")),
        factories.exchange(response=factories.response(body=b"b" * 300)),
        tsize=200,
    )
    assert f"(decoded: 15 bytes from {len(compressed)} on the wire)\ncompressed text\n" in text
    assert "00000000  ff fe 00 01" in text  # binary bodies become a hex dump
    assert "... 100 more bytes not shown (-t 200)" in text
    assert (writer.cut.records, writer.cut.bytes) == (1, 100)


def test_exchange_grpc_and_missing_sides() -> None:
    text, _ = render(factories.grpc_exchange(),
                     factories.exchange(request=None, response=None, complete=False))
    assert "HTTP/2 stream 1" in text
    assert "  gRPC request message 1: 3 bytes (uncompressed)\n00000000  0a 01 78" in text
    assert "  gRPC response message 1: 2 bytes (decompressed from 5 bytes)\n" in text
    assert "< (trailer) grpc-status: 0\n" in text
    assert "> (request not seen)\n" in text and "< (no response)\n" in text
    assert "[incomplete]" in text


def test_header_values_are_escaped() -> None:
    text, _ = render(factories.exchange(request=factories.request(
        headers=((b"X-Evil", b"\x1b]0;title\x07"),))))
    assert "> X-Evil: \\x1b]0;title\\x07\n" in text
    assert "\x1b" not in text


def test_lost_close_and_raw_data() -> None:
    text, _ = render(
        factories.lost(),
        factories.lost(pid=7, comm="nginx", fd=3, conn_id=0x10),
        factories.conn_close(lost_records=2, lost_bytes=99),
        factories.tls_data(),  # raw data is shown through Unparsed only
    )
    assert text == (
        "!! 22:13:20.123456 LOST 3 records (12345 bytes), reason ring_full, "
        "all connections\n\n"
        "!! 22:13:20.123456 LOST 3 records (12345 bytes), reason ring_full, "
        "pid 7 nginx fd 3 conn 16\n\n"
        "22:13:20.123456 curl pid 4242 fd 5 conn 139641712656111 closed (tcp), "
        "2 records (99 bytes) lost before\n"
    )


def test_color_only_when_enabled() -> None:
    plain, _ = render(factories.exchange(), factories.lost())
    colored, _ = render(factories.exchange(), factories.lost(), color=True)
    assert "\x1b[" not in plain
    assert "\x1b[32m< HTTP/1.1 200 OK\x1b[0m" in colored
    assert "\x1b[33m!! " in colored


def test_escape_str_shortcut_agrees_with_the_full_translation() -> None:
    # escape_str returns text untouched when no character needs escaping:
    # every escaped character, alone and inside text, must still be caught.
    from ecapture.output.text import _ESCAPES, escape_str

    samples = ["", "plain ascii", "héllo wörld ü€", "tab\tand\nnewline", "a\r\nb", "\r"]
    samples += [f"x{chr(code)}y" for code in _ESCAPES]
    samples += [chr(code) for code in range(0x300)]
    for text in samples:
        assert escape_str(text) == text.replace("\r\n", "\n").translate(_ESCAPES), repr(text)


def test_clock_follows_each_item_across_seconds() -> None:
    text, _ = render(factories.lost(), factories.lost(timestamp_ns=factories.TS + 1_000_000_000),
                     factories.lost(timestamp_ns=factories.TS + 999_000), factories.lost(
                         timestamp_ns=factories.TS + 3_600_000_000_000))
    assert [line[3:18] for line in text.split("\n\n") if line] == [
        "22:13:20.123456", "22:13:21.123456", "22:13:20.124455", "23:13:20.123456"]
