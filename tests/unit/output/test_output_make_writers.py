from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from ecapture.config import GlobalConfig, OutputFormat
from ecapture.output import HarWriter, JsonLinesWriter, TextWriter, make_writers, use_color

from . import factories
from .conftest import MemorySink


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_writer_with_tsize(sink: MemorySink) -> None:
    [writer] = make_writers(GlobalConfig(output_format=OutputFormat.JSON, tsize=4), "tls", sink)
    assert isinstance(writer, JsonLinesWriter)
    writer.write(factories.tls_data(data=b"123456"))
    writer.flush()
    assert b'"truncated":true' in sink.data and writer.cut.bytes == 2


def test_text_writer_with_hex_and_har(tmp_path: Path, sink: MemorySink) -> None:
    har = tmp_path / "x.har"
    text, har_writer = make_writers(
        GlobalConfig(hex=True, har_file=str(har), color=False), "tls", sink)
    assert isinstance(text, TextWriter) and isinstance(har_writer, HarWriter)
    text.write(factories.unparsed(data=b"AB"))
    text.flush()
    assert b"00000000  41 42" in sink.data
    har_writer.close()
    assert har.exists()


def test_color_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    assert use_color(GlobalConfig()) is True
    assert use_color(GlobalConfig(eventaddr="/tmp/events.log")) is False
    assert use_color(GlobalConfig(color=False)) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(GlobalConfig()) is False
    assert use_color(GlobalConfig(color=True)) is True
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: empty means unset
    assert use_color(GlobalConfig()) is True
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert use_color(GlobalConfig()) is False
